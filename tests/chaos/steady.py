"""The steady-state hypothesis, checked after every chaos experiment.

1. Energy is conserved: per device and minute, the energy the store gives to consumers
   (``energy_minute``, idle included) equals the energy the collector measured for that device
   and minute (the daemon's ``interval_log``), and, where the replayed trace's counter is
   usable, equals the counter's delta; every job's total equals its minute rows.
2. Nothing acknowledged is lost: every acknowledged call batch (with its call count), job, job
   end and deferred job is in the store; after a clean stop every stored call is settled once.
3. The daemon answers ``/healthz``.

``check`` asserts all of it and records what it found in the experiment's record."""

from __future__ import annotations

import bisect
import json
import math
import sqlite3
import threading
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from carbonwatch.collectors.trace import Trace


@dataclass
class Experiment:
    """One experiment's record (see conftest.py)."""

    family: str
    name: str
    nodeid: str
    hypothesis: str = ""
    observed: list[str] = field(default_factory=list)
    figures: dict[str, Any] = field(default_factory=dict)
    steady: dict[str, Any] | None = None
    skipped: str | None = None
    started: float = 0.0
    duration_s: float = 0.0
    item: Any = None

    def observe(self, text: str) -> None:
        self.observed.append(text)

    def figure(self, name: str, value: Any) -> None:
        self.figures[name] = value

    def as_dict(self) -> dict[str, Any]:
        return {
            "family": self.family, "name": self.name, "nodeid": self.nodeid,
            "hypothesis": self.hypothesis, "observed": self.observed, "figures": self.figures,
            "steady": self.steady, "skipped": self.skipped,
            "duration_s": round(self.duration_s, 2),
        }


@dataclass
class Acks:
    """What the daemon acknowledged during an experiment (thread-safe)."""

    batches: dict[int, int] = field(default_factory=dict)  # batch id -> calls accepted
    jobs: set[str] = field(default_factory=set)
    ended: dict[str, str] = field(default_factory=dict)  # job id -> status acknowledged
    deferred: set[str] = field(default_factory=set)
    refused: dict[int, int] = field(default_factory=dict)  # HTTP status -> count
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def batch(self, status: int, body: Any) -> bool:
        with self.lock:
            if status == 200:
                self.batches[body["batch_id"]] = body["accepted"]
                return True
            self.refused[status] = self.refused.get(status, 0) + 1
            return False

    @property
    def calls(self) -> int:
        with self.lock:
            return sum(self.batches.values())


def probe_health(daemon: Any) -> tuple[int, Any]:
    """(status, body) of GET /healthz; (0, error) when nothing answers."""
    try:
        return daemon.request("GET", "/healthz")
    except OSError as exc:
        return 0, repr(exc)


def counter_j(trace: Trace, t_s: float) -> float:
    """The trace's cumulative energy counter at time ``t_s`` (a step function), in joules."""
    i = bisect.bisect_right(trace.energy_t_s, t_s) - 1
    return trace.energy_mj[max(i, 0)] / 1000.0


def minute_fractions(start_s: float, end_s: float) -> list[tuple[int, float]]:
    """The minutes [start_s, end_s) touches and the share of the interval in each (time-linear,
    as the store's minute rows split an interval). Written here again, not imported, so that
    the check does not trust the code it checks."""
    first = int(start_s // 60) * 60
    if end_s <= start_s or end_s <= first + 60:
        return [(first, 1.0)]
    out, minute = [], first
    while minute < end_s:
        lo, hi = max(start_s, minute), min(end_s, minute + 60)
        if hi > lo:
            out.append((minute, (hi - lo) / (end_s - start_s)))
        minute += 60
    return out


def read_interval_log(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def measured_by_device_minute(intervals: Iterable[Mapping[str, Any]]
                              ) -> dict[tuple[str, int], float]:
    out: dict[tuple[str, int], float] = defaultdict(float)
    for iv in intervals:
        for minute, share in minute_fractions(iv["start_s"], iv["end_s"]):
            out[(iv["device"], minute)] += iv["energy_j"] * share
    return dict(out)


def stored_by_device_minute(conn: sqlite3.Connection) -> dict[tuple[str, int], float]:
    return {(d, int(m)): e for d, m, e in conn.execute(
        "SELECT device_id, minute_s, SUM(energy_j) FROM energy_minute GROUP BY 1, 2")}


def stored_by_device(conn: sqlite3.Connection) -> dict[str, float]:
    return dict(conn.execute("SELECT device_id, SUM(energy_j) FROM energy_minute GROUP BY 1"))


def replay_until_s(conn: sqlite3.Connection) -> float | None:
    row = conn.execute("SELECT value FROM meta WHERE key LIKE 'replay_until_s:%'").fetchone()
    return float(json.loads(row[0])) if row else None


def _close(a: float, b: float, rel: float = 1e-9) -> bool:
    return math.isclose(a, b, rel_tol=rel, abs_tol=1e-6)


def check(
    exp: Experiment,
    db: Path,
    acks: Acks,
    *,
    health: tuple[int, Any],
    interval_log: Path | None = None,
    trace: Trace | None = None,
    counter_devices: Iterable[str] = (),
    settled: bool = True,
    unreadable: Iterable[str] = (),
) -> None:
    """Assert the steady state on the store at ``db`` and record it in ``exp``.

    ``health``: /healthz as probed at the experiment's end (probe_health). ``interval_log``:
    the daemon's log of measured intervals; all of it must be in the store (a clean stop).
    ``counter_devices``: devices whose stored energy must equal ``trace``'s counter from the
    trace's start to where the store says the replay got to. ``settled``: the daemon stopped
    cleanly, so every stored call batch must be settled. ``unreadable``: tables the experiment
    itself destroyed (a corrupted page), left out of the check."""
    unreadable = set(unreadable)
    steady: dict[str, Any] = {}
    exp.steady = steady  # recorded even if an assertion below fails
    status, body = health
    steady["healthz"] = f"HTTP {status}" + (f", {body.get('status')}" if isinstance(body, dict)
                                            else "")
    assert status == 200 and isinstance(body, dict), f"/healthz did not answer 200: {health}"

    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        # -- nothing acknowledged is lost
        stored = dict(conn.execute("SELECT id, calls FROM call_batches"))
        lost_batches = {b: n for b, n in acks.batches.items() if stored.get(b) != n}
        jobs = {} if "jobs" in unreadable else dict(conn.execute("SELECT id, status FROM jobs"))
        lost_jobs = sorted(acks.jobs - jobs.keys())
        wrong_end = {j: (s, jobs.get(j)) for j, s in acks.ended.items() if jobs.get(j) != s}
        deferred = {r[0] for r in conn.execute("SELECT id FROM deferred_jobs")}
        lost_deferred = sorted(acks.deferred - deferred)
        steady["acknowledged"] = (
            f"{len(acks.batches)} batches ({acks.calls} calls), {len(acks.jobs)} jobs, "
            f"{len(acks.ended)} job ends, {len(acks.deferred)} deferred: "
            f"{len(acks.batches) - len(lost_batches)}/{len(acks.batches)} batches, "
            f"{len(acks.jobs) - len(lost_jobs)}/{len(acks.jobs)} jobs, "
            f"{len(acks.deferred) - len(lost_deferred)}/{len(acks.deferred)} deferred stored"
        )
        assert not lost_batches, f"acknowledged batches missing or changed: {lost_batches}"
        assert not lost_jobs, f"acknowledged jobs missing: {lost_jobs}"
        assert not wrong_end, f"acknowledged job ends not stored: {wrong_end}"
        assert not lost_deferred, f"acknowledged deferred jobs missing: {lost_deferred}"
        if settled:
            batched, pending = conn.execute(
                "SELECT COALESCE(SUM(calls), 0), COUNT(pending) FROM call_batches").fetchone()
            rolled = conn.execute("SELECT COALESCE(SUM(calls), 0) FROM call_minute").fetchone()[0]
            steady["calls"] = f"{rolled} calls settled of {batched} stored, {pending} pending"
            assert pending == 0 and rolled == batched, steady["calls"]

        # -- energy is conserved
        by_minute = stored_by_device_minute(conn)
        bad = [(k, e) for k, e in by_minute.items() if not (math.isfinite(e) and e >= 0)]
        assert not bad, f"negative or non-finite energy: {bad}"
        notes = []
        if interval_log is not None:
            measured = measured_by_device_minute(read_interval_log(interval_log))
            keys = measured.keys() | by_minute.keys()
            off = {k: (by_minute.get(k, 0.0), measured.get(k, 0.0)) for k in keys
                   if not _close(by_minute.get(k, 0.0), measured.get(k, 0.0))}
            worst = max((abs(s - m) / max(m, 1e-12) for s, m in
                         ((by_minute.get(k, 0.0), measured.get(k, 0.0)) for k in keys)),
                        default=0.0)
            notes.append(f"{len(keys)} device-minutes: stored = measured (worst rel. "
                         f"error {worst:.1e})")
            exp.figure("device-minutes checked", len(keys))
            assert not off, f"stored != measured energy for (device, minute): {off}"
        counter_devices = list(counter_devices)
        if counter_devices:
            assert trace is not None
            until_s = replay_until_s(conn)
            assert until_s is not None, "no replay progress recorded"
            expected = counter_j(trace, until_s) - trace.energy_mj[0] / 1000.0
            per_device = stored_by_device(conn)
            off = {d: (per_device.get(d, 0.0), expected) for d in counter_devices
                   if not _close(per_device.get(d, 0.0), expected)}
            notes.append(f"{len(counter_devices)} device(s) = trace counter "
                         f"({expected:.1f} J each to t+{until_s - trace.start_s:.1f} s)")
            assert not off, f"stored energy != counter delta: {off}"
        jobs_off = []
        for job_id, energy_j in ([] if "jobs" in unreadable else
                                 conn.execute("SELECT id, energy_j FROM jobs")):
            rows_j = conn.execute("SELECT COALESCE(SUM(energy_j), 0) FROM energy_minute"
                                  " WHERE consumer = ?", [f"job:{job_id}"]).fetchone()[0]
            if not _close(energy_j, rows_j):
                jobs_off.append((job_id, energy_j, rows_j))
        notes.append("jobs table unreadable (corrupted by the experiment): not checked"
                     if "jobs" in unreadable else f"{len(jobs)} job totals = their minute rows")
        steady["energy"] = "; ".join(notes)
        assert not jobs_off, f"job totals != their minute rows: {jobs_off}"
    steady["held"] = True
