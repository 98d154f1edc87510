"""The ranks of one job on one node, joined into one job without a daemon.

The first wrapper of an identity (``carbonwatch.identity``) inserts the job and *leads* it: it
measures the whole node and owns every rank's process tree. A later wrapper with the same identity
finds that running job (its leader still alive) in the store and joins it as a *member*: it records
its pid, runs its command, records its exit code, and leaves all measuring to the leader, so one
sampler reads each counter and conservation stays exact. The leader keeps measuring until its
members' commands have exited. The bookkeeping lives in the job's ``tags`` under ``JOIN_TAG``;
every change to it is one IMMEDIATE transaction (``Store.transaction``), so two ranks starting
together cannot both lead."""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from carbonwatch.proc import (
    ProcessTree,
    children_map,
    pid_alive,
    spawn,
    stamp,
    stamp_alive,
    wait_forwarding,
)
from carbonwatch.store import Store

JOIN_TAG = "join"  # jobs.tags key holding the leader's and the members' bookkeeping


def _tags(store: Store, job_id: str) -> dict[str, Any]:
    row = store.job(job_id)
    return dict(row.get("tags") or {}) if row else {}


@dataclass(frozen=True)
class Claim:
    """What :func:`claim_job` decided: lead a new job, or join ``job_id`` led by ``leader_pid``."""

    job_id: str
    leader: bool
    leader_pid: int


def claim_job(store: Store, identity: str, row: Mapping[str, Any]) -> Claim:
    """Join the running job with ``identity`` whose leading wrapper is alive, or insert ``row``
    (the jobs columns, JSON ones as Python values) as a new job led by this process. One
    IMMEDIATE transaction, so two ranks starting together cannot both lead."""
    me = stamp(os.getpid())
    with store.transaction():
        for (job_id,) in store.conn.execute(
            "SELECT id FROM jobs WHERE identity = ? AND status = 'running' AND source = 'run'"
            " ORDER BY started_s DESC",
            [identity],
        ).fetchall():
            tags = _tags(store, job_id)
            join = tags.get(JOIN_TAG) or {}
            if stamp_alive(join.get("leader")) and not join.get("closed"):
                join.setdefault("members", []).append(
                    {"wrapper": me, "pid": None, "exit_code": None}
                )
                store.update_job(job_id, tags={**tags, JOIN_TAG: join})
                return Claim(job_id, leader=False, leader_pid=int(join["leader"]["pid"]))
        job_id = store.insert_job(
            **{
                **row,
                "id": uuid.uuid4().hex[:12],
                "identity": identity,
                "tags": {**(row.get("tags") or {}), JOIN_TAG: {"leader": me, "members": []}},
            }
        )
    return Claim(job_id, leader=True, leader_pid=os.getpid())


class Members:
    """The leader's view of the ranks that joined its job: their process trees and whether any is
    still to come or still running. Re-reads the job's row at most every ``every_s``."""

    def __init__(self, store: Store, job_id: str, every_s: float = 0.5) -> None:
        self.store, self.job_id, self.every_s = store, job_id, every_s
        self.trees: dict[int, ProcessTree] = {}
        self.entries: list[dict[str, Any]] = []
        self._read_mono = -1e9

    def _refresh(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._read_mono < self.every_s:
            return
        self._read_mono = now
        self.entries = list((_tags(self.store, self.job_id).get(JOIN_TAG) or {}).get("members", []))
        for entry in self.entries:
            if entry.get("pid") and entry["pid"] not in self.trees:
                self.trees[entry["pid"]] = ProcessTree(entry["pid"])

    def pids(self) -> set[int]:
        """Every pid of the members' trees (exited ones stay members, as in ProcessTree)."""
        self._refresh()
        out: set[int] = set()
        if not self.trees:
            return out
        children = children_map()  # one pass over the process table for every rank's tree
        for tree in self.trees.values():
            out |= tree.refresh(children)
        return out

    def running(self) -> bool:
        """Whether a member's command runs, or a member that joined has yet to start it."""
        self._refresh(force=True)
        for entry in self.entries:
            if entry.get("exit_code") is not None:
                continue
            if entry.get("pid") is not None and pid_alive(entry["pid"]):
                return True
            if entry.get("pid") is None and stamp_alive(entry.get("wrapper")):
                return True
        return False

    def close(self) -> bool:
        """Stop taking members, unless one joined since :meth:`running` said none runs (then
        False: measure on). One transaction with :func:`claim_job`'s, so no rank joins a job whose
        record is being written."""
        with self.store.transaction():
            tags = _tags(self.store, self.job_id)
            join = tags.get(JOIN_TAG) or {}
            if len(join.get("members", [])) != len(self.entries):
                return False
            self.store.update_job(self.job_id, tags={**tags, JOIN_TAG: {**join, "closed": True}})
        return True

    def exit_codes(self, wait_s: float = 2.0) -> list[int]:
        """Members' exit codes, waiting briefly for live members that have not written theirs."""
        deadline = time.monotonic() + wait_s
        while True:
            self._refresh(force=True)
            missing = [
                e
                for e in self.entries
                if e.get("exit_code") is None and stamp_alive(e.get("wrapper"))
            ]
            if not missing or time.monotonic() > deadline:
                return [int(e["exit_code"]) for e in self.entries if e.get("exit_code") is not None]
            time.sleep(0.05)


def _update_member(store: Store, job_id: str, **changes: Any) -> None:
    me = os.getpid()
    with store.transaction():
        tags = _tags(store, job_id)
        for entry in (tags.get(JOIN_TAG) or {}).get("members", []):
            if (entry.get("wrapper") or {}).get("pid") == me:
                entry.update(changes)
        store.update_job(job_id, tags=tags)


def run_member(
    argv: Sequence[str], claim: Claim, store: Store, *, wait_leader_s: float = 30.0
) -> tuple[int, dict[str, Any]]:
    """Run ``argv`` as a member of ``claim``'s job; (exit code, the job's row once its leader has
    written it, or as it stands after ``wait_leader_s``). The leader measures, so this only runs
    the command (own process group, signals forwarded) and says when it ended."""
    try:
        child = spawn(argv)
    except FileNotFoundError:
        _update_member(store, claim.job_id, exit_code=127)
        raise
    _update_member(store, claim.job_id, pid=child.pid)
    exit_code = wait_forwarding(child)
    _update_member(store, claim.job_id, exit_code=exit_code)
    deadline = time.monotonic() + wait_leader_s
    while True:
        row = store.job(claim.job_id) or {}
        leader = ((row.get("tags") or {}).get(JOIN_TAG) or {}).get("leader")
        if row.get("status") != "running" or time.monotonic() > deadline:
            return exit_code, row
        if not stamp_alive(leader):  # killed before it wrote the record: say so rather than wait
            store.update_job(claim.job_id, status="lost", ended_s=time.time())
            return exit_code, store.job(claim.job_id) or row
        time.sleep(0.05)
