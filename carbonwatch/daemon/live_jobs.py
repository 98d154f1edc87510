"""The jobs and inference services the daemon knows, and which pids belong to which.

Consumers are keyed ``job:<id>``. A job owns its registered pids and, on a live node, every
descendant of them (``ProcessTree``, as the wrapper does), so ranks and workers a job forks are
charged to it. Replayed pids belong to the machine the trace was recorded on, so their trees are
never looked up here.

Not thread-safe on its own: :class:`~carbonwatch.daemon.state.DaemonState` guards it with its lock.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import psutil

from carbonwatch.model import IDLE, job_consumer, job_of_consumer
from carbonwatch.proc import ProcessTree


@dataclass
class LiveJob:
    id: str
    name: str
    kind: str
    model: str | None
    pids: set[int]
    started_s: float
    source: str
    identity: str | None = None
    serves_calls: bool = False  # its energy is split over call spans (CallLedger)
    auto: bool = False  # registered by its first call rather than by a client
    # Who ends it (the ``ended_by`` tag, e.g. the Slurm epilog): then it is left running when its
    # processes are gone, since its opener, not its processes, says when it is over.
    ended_by: str | None = None
    owner_uid: int | None = None  # the local user who registered it (None: another machine)
    trees: dict[int, ProcessTree] = field(default_factory=dict)

    @property
    def consumer(self) -> str:
        return job_consumer(self.id)

    def all_pids(self) -> set[int]:
        """Registered pids and their trees' members (sampling thread only: it refreshes trees)."""
        out = set(self.pids)
        for tree in self.trees.values():
            out |= tree.pids
        return out


def job_from_row(row: dict[str, Any]) -> LiveJob:
    """A running job reloaded from the store after a restart."""
    kind = row["kind"]
    return LiveJob(
        id=row["id"],
        name=row["name"],
        kind=kind,
        model=row.get("model"),
        pids=set(row.get("pids") or []),
        started_s=row["started_s"],
        source=row["source"],
        identity=row.get("identity"),
        serves_calls=kind == "inference" or (row.get("calls") or 0) > 0,
        auto=bool((row.get("tags") or {}).get("auto")),
        ended_by=ended_by_tag(row.get("tags")),
        owner_uid=row.get("owner_uid"),
    )


def ended_by_tag(tags: dict[str, Any] | None) -> str | None:
    value = (tags or {}).get("ended_by")
    return None if value in (None, "", False) else str(value)


class LiveJobs:
    def __init__(self, track_trees: bool) -> None:
        self.track_trees = track_trees
        self.running: dict[str, LiveJob] = {}
        self._by_pid: dict[int, str] = {}
        # Running jobs, and ended ones until the next flush: minute rows drained after a job
        # ended still need its phase, model and name.
        self._known: dict[str, LiveJob] = {}
        self._ended: list[LiveJob] = []
        self._gone_since: dict[str, float] = {}  # job id -> when its processes were first gone

    # --- changes ---------------------------------------------------------------------------

    def add(self, job: LiveJob) -> None:
        self.running[job.id] = job
        self._known[job.consumer] = job
        self.add_pids(job, job.pids)

    def add_pids(self, job: LiveJob, pids: set[int] | tuple[int, ...]) -> None:
        for pid in pids:
            job.pids.add(pid)
            self._by_pid[pid] = job.id
            if self.track_trees and pid not in job.trees:
                job.trees[pid] = ProcessTree(pid)

    def release_pid(self, job: LiveJob, pid: int) -> set[int]:
        """Take ``pid`` (and its tree) away from ``job``; the job's pids left."""
        job.pids.discard(pid)
        job.trees.pop(pid, None)
        if self._by_pid.get(pid) == job.id:
            del self._by_pid[pid]
        return set(job.pids)

    def remove(self, job_id: str) -> LiveJob | None:
        job = self.running.pop(job_id, None)
        self._gone_since.pop(job_id, None)
        if job is not None:
            self._ended.append(job)
            for pid in job.pids:
                if self._by_pid.get(pid) == job_id:
                    del self._by_pid[pid]
        return job

    def forget_ended(self) -> None:
        """After a flush has drained their last rows: ended jobs are no longer needed in memory."""
        for job in self._ended:
            if job.id not in self.running:
                self._known.pop(job.consumer, None)
        self._ended.clear()

    # --- look-ups --------------------------------------------------------------------------

    def owner_of_pid(self, pid: int) -> LiveJob | None:
        job_id = self._by_pid.get(pid)
        return self.running.get(job_id) if job_id is not None else None

    def by_identity(self, identity: str) -> LiveJob | None:
        return next((j for j in self.running.values() if j.identity == identity), None)

    def services_of_model(self, model: str) -> list[LiveJob]:
        return [j for j in self.running.values() if j.serves_calls and j.model == model]

    def job_for_consumer(self, consumer: str) -> LiveJob | None:
        return self._known.get(consumer)

    def owner_snapshot(self) -> list[tuple[str, set[int], list[ProcessTree]]]:
        """(consumer, registered pids, process trees) per running job: taken under the state lock,
        so the trees can then be refreshed (slow: a /proc scan) without holding it."""
        return [(j.consumer, set(j.pids), list(j.trees.values())) for j in self.running.values()]

    def phase_of(self, consumer: str) -> tuple[str, str]:
        """EnergyLedger's PhaseOf: (phase, model) of a consumer key."""
        if consumer == IDLE:
            return "idle", ""
        job = self._known.get(consumer)
        if job is None:
            return "other", ""
        return job.kind, job.model or ""

    def label_of(self, consumer: str) -> tuple[str, str]:
        """The ``job_id`` and ``job_name`` labels of a consumer in /metrics; '' for idle and
        other."""
        job = self._known.get(consumer)
        if job is not None:
            return job.id, job.name
        return job_of_consumer(consumer) or "", ""

    def vanished(self, now_s: float, grace_s: float) -> list[tuple[LiveJob, float]]:
        """Running jobs none of whose processes is alive any more (live nodes only), except those
        their opener ends (``ended_by``). A job a client registered is given ``grace_s`` from when
        its processes were first seen gone: its wrapper reaps the command and then reports the
        end, and the report (with the exit code) must win over a guess of "lost". A service
        registered by its first call has nobody to report its end: it goes at once. Each comes with
        how long ago its processes were first found gone (``now_s`` and ``grace_s`` are
        monotonic seconds)."""
        if not self.track_trees:
            return []
        gone = []
        for job in self.running.values():
            if job.ended_by is not None:
                continue
            pids = job.all_pids()
            if not pids or any(psutil.pid_exists(p) for p in pids):
                self._gone_since.pop(job.id, None)
                continue
            since_s = self._gone_since.setdefault(job.id, now_s)
            if job.auto or now_s - since_s >= grace_s:
                gone.append((job, now_s - since_s))
        return gone
