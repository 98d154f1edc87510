"""Which distributed job a process belongs to, from its environment and its cgroup.

The ranks of one job on one node must be one job, never counted twice. Each rank may be started
through its own ``carbonwatch run``, so the wrappers need a key they all compute alike:

- Slurm: ``slurm:<SLURM_JOB_ID>``. Every step and task of the job on this node shares it (the
  prolog/epilog scripts in ``deploy/slurm`` open and close the same key over the daemon's API);
  the step is kept as a detail.
- torchrun (and ``torch.distributed`` launchers): ``torchrun:<TORCHELASTIC_RUN_ID>``, or
  ``torchrun:<MASTER_ADDR>:<MASTER_PORT>`` when the run id is torchrun's default ``none``.
- Kubernetes: ``k8s-pod:<pod uid>``, read from ``/proc/<pid>/cgroup`` (cgroupfs and systemd
  drivers, cgroup v1 and v2). Inside a private cgroup namespace the path is just ``/``: then hand
  the pod UID in with the downward API as ``CARBONWATCH_POD_UID``.

``CARBONWATCH_IDENTITY`` overrides all of them (a launcher of your own), and ``none`` turns
identity off (every wrapper its own job). Otherwise the first match in the order above wins: a
torchrun job inside one Slurm job is the Slurm job, and the ranks of one torchrun job in several
pods on one node are one job.

Joining, without a daemon: the first wrapper of an identity inserts the job and *leads* it: it
measures the whole node and owns every rank's process tree. A later wrapper with the same identity
finds that running job (its leader still alive) in the store and joins it as a *member*: it records
its pid, runs its command, records its exit code, and leaves all measuring to the leader, so one
sampler reads each counter and conservation stays exact. The leader keeps measuring until its
members' commands have exited. With a daemon, the daemon measures and merges by identity
(``POST /v1/jobs`` answers 200 ``merged``); the last rank to exit ends the job.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import sqlite3
import subprocess
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psutil

from carbonwatch.daemon.attach import wait_forwarding

if TYPE_CHECKING:
    from carbonwatch.store import Store

SELF_CGROUP = "/proc/self/cgroup"
JOIN_TAG = "join"  # jobs.tags key holding the leader's and the members' bookkeeping

# A pod UID in a cgroup path: "pod<uid>" with dashes (cgroupfs driver) or underscores (systemd).
_POD_UID = re.compile(
    r"pod([0-9a-f]{8}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{12})"
)
# Slurm's cgroup plugins: /slurm/uid_1000/job_42/step_0 (v1), /.../slurmstepd.scope/job_42/... (v2)
_SLURM_JOB = re.compile(r"slurm[^/]*/(?:uid_\d+/)?job_(\d+)(?:/|$)")


@dataclass(frozen=True)
class Identity:
    """A job's identity on one node: ``key`` is what ``jobs.identity`` holds."""

    key: str
    source: str  # slurm | torchrun | kubernetes
    details: Mapping[str, str] = field(default_factory=dict)


def pod_uid_from_cgroup(text: str) -> str | None:
    """The Kubernetes pod UID in a ``/proc/<pid>/cgroup`` file's text, or None."""
    match = _POD_UID.search(text)
    return match.group(1).replace("_", "-") if match else None


def slurm_job_from_cgroup(text: str) -> str | None:
    """The Slurm job id in a ``/proc/<pid>/cgroup`` file's text, or None."""
    match = _SLURM_JOB.search(text)
    return match.group(1) if match else None


def _read(path: str | Path | None) -> str:
    if path is None:
        return ""
    try:
        return Path(path).read_text(errors="replace")
    except OSError:  # gone, unreadable (another user's process), or no /proc
        return ""


def identity_from_env(
    env: Mapping[str, str], cgroup_path: str | Path | None = SELF_CGROUP
) -> Identity | None:
    """The identity of a process with environment ``env`` and cgroup file ``cgroup_path``."""
    explicit = env.get("CARBONWATCH_IDENTITY", "").strip()
    if explicit:
        return None if explicit.lower() == "none" else Identity(explicit, "explicit")
    cgroup = _read(cgroup_path)
    slurm_job = env.get("SLURM_JOB_ID") or env.get("SLURM_JOBID") or slurm_job_from_cgroup(cgroup)
    if slurm_job:
        step = env.get("SLURM_STEP_ID") or env.get("SLURM_STEPID")
        details = {"job_id": slurm_job}
        if step:
            details["step_id"] = step
        return Identity(f"slurm:{slurm_job}", "slurm", details)

    ranks = {k.lower(): env[k] for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE") if env.get(k)}
    if ranks:
        run_id = env.get("TORCHELASTIC_RUN_ID", "")
        addr, port = env.get("MASTER_ADDR"), env.get("MASTER_PORT")
        if run_id and run_id != "none":  # torchrun's default --rdzv-id is "none": not unique
            return Identity(f"torchrun:{run_id}", "torchrun", ranks)
        if addr and port:
            return Identity(f"torchrun:{addr}:{port}", "torchrun", ranks)

    pod = env.get("CARBONWATCH_POD_UID") or pod_uid_from_cgroup(cgroup)
    if pod:
        return Identity(f"k8s-pod:{pod}", "kubernetes", {"pod_uid": pod})
    return None


def identity_of_pid(pid: int, proc_root: str | Path = "/proc") -> Identity | None:
    """The identity of a running process, as a node daemon sees it (host PID namespace; reading
    another user's environment needs root, else only its cgroup is used)."""
    base = Path(proc_root) / str(pid)
    raw = _read(base / "environ")
    env = dict(item.split("=", 1) for item in raw.split("\0") if "=" in item)
    return identity_from_env(env, base / "cgroup")


# --- joining a running job in the store (no daemon) ----------------------------------------------


def _stamp(pid: int) -> dict[str, float] | None:
    """pid and start time: a pid alone may be reused by an unrelated process later."""
    try:
        return {"pid": pid, "started": psutil.Process(pid).create_time()}
    except psutil.Error:
        return None


def _alive(stamp: Mapping[str, Any] | None) -> bool:
    if not stamp:
        return False
    try:
        proc = psutil.Process(int(stamp["pid"]))
        return (
            abs(proc.create_time() - float(stamp["started"])) < 0.01
            and proc.status() != psutil.STATUS_ZOMBIE
        )
    except (psutil.Error, KeyError, TypeError, ValueError):
        return False


def pid_alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie does not)."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


@contextlib.contextmanager
def _immediate(conn: sqlite3.Connection):  # type: ignore[no-untyped-def]
    """One write transaction, taken at once: a second wrapper waits instead of racing."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def _tags(conn: sqlite3.Connection, job_id: str) -> dict[str, Any]:
    row = conn.execute("SELECT tags FROM jobs WHERE id = ?", [job_id]).fetchone()
    return json.loads(row[0] or "{}") if row else {}


def _set_tags(conn: sqlite3.Connection, job_id: str, tags: dict[str, Any]) -> None:
    conn.execute("UPDATE jobs SET tags = ? WHERE id = ?", [json.dumps(tags), job_id])


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
    me = _stamp(os.getpid())
    conn = store.conn
    with _immediate(conn):
        for job_id, raw in conn.execute(
            "SELECT id, tags FROM jobs WHERE identity = ? AND status = 'running' AND source = 'run'"
            " ORDER BY started_s DESC",
            [identity],
        ).fetchall():
            tags = json.loads(raw or "{}")
            join = tags.get(JOIN_TAG) or {}
            if _alive(join.get("leader")) and not join.get("closed"):
                join.setdefault("members", []).append(
                    {"wrapper": me, "pid": None, "exit_code": None}
                )
                _set_tags(conn, job_id, {**tags, JOIN_TAG: join})
                return Claim(job_id, leader=False, leader_pid=int(join["leader"]["pid"]))
        job_id = uuid.uuid4().hex[:12]
        values = {
            **row,
            "id": job_id,
            "identity": identity,
            "tags": {**(row.get("tags") or {}), JOIN_TAG: {"leader": me, "members": []}},
        }
        values = {k: json.dumps(v) if isinstance(v, dict | list) else v for k, v in values.items()}
        cols = ", ".join(values)  # column names from the caller's code, never from data
        conn.execute(
            f"INSERT INTO jobs ({cols}) VALUES ({', '.join('?' * len(values))})",  # noqa: S608
            list(values.values()),
        )
    return Claim(job_id, leader=True, leader_pid=os.getpid())


class Members:
    """The leader's view of the ranks that joined its job: their process trees and whether any is
    still to come or still running. Re-reads the job's row at most every ``every_s``."""

    def __init__(self, store: Store, job_id: str, every_s: float = 0.5) -> None:
        from carbonwatch.runner import ProcessTree  # the runner imports this module's users

        self._tree = ProcessTree
        self.store, self.job_id, self.every_s = store, job_id, every_s
        self.trees: dict[int, Any] = {}
        self.entries: list[dict[str, Any]] = []
        self._read_mono = -1e9

    def _refresh(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._read_mono < self.every_s:
            return
        self._read_mono = now
        self.entries = list(
            (_tags(self.store.conn, self.job_id).get(JOIN_TAG) or {}).get("members", [])
        )
        for entry in self.entries:
            if entry.get("pid") and entry["pid"] not in self.trees:
                self.trees[entry["pid"]] = self._tree(entry["pid"])

    def pids(self) -> set[int]:
        """Every pid of the members' trees (exited ones stay members, as in ProcessTree)."""
        self._refresh()
        out: set[int] = set()
        if not self.trees:
            return out
        from carbonwatch.runner import children_map  # the runner imports this module's users

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
            if entry.get("pid") is None and _alive(entry.get("wrapper")):
                return True
        return False

    def close(self) -> bool:
        """Stop taking members, unless one joined since :meth:`running` said none runs (then
        False: measure on). One transaction with :func:`claim_job`'s, so no rank joins a job whose
        record is being written."""
        with _immediate(self.store.conn) as conn:
            tags = _tags(conn, self.job_id)
            join = tags.get(JOIN_TAG) or {}
            if len(join.get("members", [])) != len(self.entries):
                return False
            _set_tags(conn, self.job_id, {**tags, JOIN_TAG: {**join, "closed": True}})
        return True

    def exit_codes(self, wait_s: float = 2.0) -> list[int]:
        """Members' exit codes, waiting briefly for live members that have not written theirs."""
        deadline = time.monotonic() + wait_s
        while True:
            self._refresh(force=True)
            missing = [
                e for e in self.entries if e.get("exit_code") is None and _alive(e.get("wrapper"))
            ]
            if not missing or time.monotonic() > deadline:
                return [int(e["exit_code"]) for e in self.entries if e.get("exit_code") is not None]
            time.sleep(0.05)


def _update_member(store: Store, job_id: str, **changes: Any) -> None:
    me = os.getpid()
    with _immediate(store.conn) as conn:
        tags = _tags(conn, job_id)
        for entry in (tags.get(JOIN_TAG) or {}).get("members", []):
            if (entry.get("wrapper") or {}).get("pid") == me:
                entry.update(changes)
        _set_tags(conn, job_id, tags)


def run_member(
    argv: Sequence[str], claim: Claim, store: Store, *, wait_leader_s: float = 30.0
) -> tuple[int, dict[str, Any]]:
    """Run ``argv`` as a member of ``claim``'s job; (exit code, the job's row once its leader has
    written it, or as it stands after ``wait_leader_s``). The leader measures, so this only runs
    the command (own process group, signals forwarded) and says when it ended."""
    argv = list(argv)
    try:
        child = subprocess.Popen(argv, process_group=0)  # noqa: S603 - argv, never a shell
    except OSError as exc:
        _update_member(store, claim.job_id, exit_code=127)
        raise FileNotFoundError(f"cannot start {argv[0]!r}: {exc.strerror}") from exc
    _update_member(store, claim.job_id, pid=child.pid)
    exit_code = wait_forwarding(child)
    _update_member(store, claim.job_id, exit_code=exit_code)
    deadline = time.monotonic() + wait_leader_s
    while True:
        row = store.job(claim.job_id) or {}
        leader = ((row.get("tags") or {}).get(JOIN_TAG) or {}).get("leader")
        if row.get("status") != "running" or time.monotonic() > deadline:
            return exit_code, row
        if not _alive(leader):  # killed before it wrote the record: say so rather than wait
            store.update_job(claim.job_id, status="lost", ended_s=time.time())
            return exit_code, store.job(claim.job_id) or row
        time.sleep(0.05)
