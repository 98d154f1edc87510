"""The scheduler's restart and re-plan on a ManualClock: what tests/test_scheduler_daemon.py
did through a real daemon waiting on real 3 s forecast slots, now in clock time, so a loaded
machine cannot make a job miss its slot. The store is a real SQLite file, the forecast a real
CISO day (EIA-930) served by the csv provider, the jobs real processes (an injected launcher
runs the command itself in place of the wrapper); a restart is a second SchedulerService on
the same store, started while the clock moved on.

The untimed side of the Launcher seam (Slurm's) is exercised with a launcher that holds jobs in
memory: what the service asks of it and what it does with the answers; the real Slurm is
tests/test_scheduler_slurm.py."""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from forecast_csv import eia_values, shifted_csv
from test_scheduler_clock import _until

from carbonwatch.clock import ManualClock
from carbonwatch.config import Settings
from carbonwatch.scheduler.job import DeferredJob, Status, Submission
from carbonwatch.scheduler.launcher import LocalLauncher, Seen
from carbonwatch.scheduler.service import SchedulerService
from carbonwatch.scheduler.triggers import Triggers
from carbonwatch.store import Store, deferred

# Appends a line to the file given (one line per run).
MARKER = "import sys; open(sys.argv[1], 'a').write('ran\\n')"
URL = "http://127.0.0.1:9"


class Node:
    """A scheduler on a store, as the daemon wires it, with triggers fired by the test."""

    def __init__(self, store: Store, settings: Settings, clock: ManualClock) -> None:
        self.store, self.settings, self.clock = store, settings, clock

    async def read(self, fn: Callable[[Store], Any]) -> Any:
        return fn(self.store)

    async def write(self, fn: Callable[[Store], Any]) -> Any:
        with self.store.transaction():
            return fn(self.store)

    def service(self, **launchers: Any) -> SchedulerService:
        return SchedulerService(
            self.settings, read=self.read, write=self.write, clock=self.clock, poll_s=0.02,
            triggers=Triggers(self.clock, loop=False),
            launchers={"": LocalLauncher(argv=lambda _n, _k, command, cwd=None: [*command]),
                       **launchers},
        )

    def job(self, job_id: str) -> DeferredJob:
        row = deferred.get(self.store.conn, job_id)
        assert row is not None
        return DeferredJob.from_row(row)


def _settings(tmp_path: Path, csv: Path, **extra: Any) -> Settings:
    return Settings(db=str(tmp_path / "cw.db"), port=0, zone="CISO", provider="csv",
                    provider_url=str(csv), **extra).validate()


def test_a_restarted_scheduler_runs_queued_jobs_at_their_planned_times(tmp_path):
    # Hours 14..29: evening high, solar midday low at hour 19 (index 5), 3 s a slot.
    t0 = float(int(time.time()))
    csv = shifted_csv(tmp_path / "ciso.csv", eia_values(14, 16), t0, 3.0)
    marker, late_marker = tmp_path / "started.txt", tmp_path / "late.txt"
    clock = ManualClock(t0)

    async def main() -> None:
        with Store(tmp_path / "cw.db") as store:
            node = Node(store, _settings(tmp_path, csv), clock)
            first = node.service()
            await first.start(URL)
            view = await first.submit(Submission(
                command=[sys.executable, "-c", MARKER, str(marker)], deadline_s=t0 + 40,
                duration_s=2.0, name="marker"))
            assert view["status"] == "queued" and view["plan_basis"] == "forecast"
            assert view["plan_signal"] == "average"  # the csv series is average intensity
            assert view["plan"][0]["start_s"] == t0 + 5 * 3.0  # the hour-19 slot
            assert view["expected_saving_pct"] > 40  # vs the evening hours at submit
            # No forecast: planned for the latest safe start, 6 s from now.
            late = await first.submit(Submission(
                command=[sys.executable, "-c", MARKER, str(late_marker)], deadline_s=t0 + 10,
                duration_s=4.0, name="late", provider="static"))
            assert late["plan_basis"] == "no_forecast"
            assert late["plan"][0]["start_s"] == t0 + 6.0
            await first.stop()  # the daemon goes down: only the store remembers the jobs

            clock.set(t0 + 6.5)  # down at "late"'s start
            second = node.service()
            await second.start(URL)
            await second.triggers.run_due()  # what the restart found due fires at once
            started = node.job(late["id"])
            assert started.status == Status.RUNNING and started.started_s == t0 + 6.5
            assert "daemon was down" in (started.message or "")
            assert started.plan == [(t0 + 6.5, t0 + 10.5)]  # one contiguous run from now
            assert "0 s after its deadline" in (started.message or "")  # 0.5 s late: said
            await _until(lambda: node.job(late["id"]).ended, "the late job to end")
            assert node.job(view["id"]).status == Status.QUEUED and not marker.exists()

            clock.set(t0 + 14.9)
            await second.triggers.run_due()
            assert node.job(view["id"]).status == Status.QUEUED  # not a moment early
            clock.set(t0 + 15.0)
            await second.triggers.run_due()
            assert node.job(view["id"]).status == Status.RUNNING
            await _until(lambda: node.job(view["id"]).ended, "the marker job to end")
            await second.stop()
            done, late_done = node.job(view["id"]), node.job(late["id"])
        assert done.status == Status.DONE and done.exit_code == 0
        assert done.started_s == t0 + 15.0 and done.runs[0][0] == t0 + 15.0
        assert late_done.status == Status.DONE and late_done.env == {}
        # The command ran in place of the wrapper: no measured record, and it says so.
        assert done.job_id is None and "no job record" in (done.message or "")

    asyncio.run(main())
    assert marker.read_text() == "ran\n" and late_marker.read_text() == "ran\n"  # once each


def test_a_queued_job_is_replanned_when_a_newer_forecast_arrives(tmp_path):
    t0 = float(int(time.time()))
    high, low = eia_values(14, 1)[0], eia_values(19, 1)[0]
    csv = shifted_csv(tmp_path / "ciso.csv", [high] * 8 + [low] + [high] * 3, t0, 3.0)
    marker = tmp_path / "started.txt"
    clock = ManualClock(t0)

    async def main() -> None:
        with Store(tmp_path / "cw.db") as store:
            node = Node(store, _settings(tmp_path, csv, scheduler_refresh_s=1.0), clock)
            service = node.service()
            await service.start(URL)
            view = await service.submit(Submission(
                command=[sys.executable, "-c", MARKER, str(marker)], deadline_s=t0 + 40,
                duration_s=2.0, name="marker"))
            assert view["plan"][0]["start_s"] == t0 + 24
            assert service.triggers.armed(view["id"]) == ["launch"]
            # A newer forecast: the low slot is now 12 s sooner.
            shifted_csv(tmp_path / "newer.csv", [high] * 4 + [low] + [high] * 7, t0,
                        3.0).replace(csv)
            clock.set(t0 + 0.5)
            await service.triggers.run_due()
            assert node.job(view["id"]).plan[0][0] == t0 + 24  # no refresh yet
            clock.set(t0 + 1.0)
            assert await service.triggers.run_due() >= 1  # the refresh
            moved = node.job(view["id"])
            assert moved.plan[0] == (t0 + 12, t0 + 14) and moved.status == Status.QUEUED
            assert "re-planned" in (moved.message or "")
            assert moved.planned_at_s == t0 + 1.0

            clock.set(t0 + 12.0)
            await service.triggers.run_due()
            await _until(lambda: node.job(view["id"]).ended, "the job to end")
            await service.stop()
            done = node.job(view["id"])
        assert done.status == Status.DONE and done.started_s == t0 + 12.0
        assert not service.triggers.due()  # the old launch at t0+24 was disarmed

    asyncio.run(main())
    assert marker.read_text() == "ran\n"


class Held:
    """An untimed launcher (the shape of Slurm's): it takes a job at submit and holds it; the
    test says where its system has each job."""

    timed = False

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, float]] = []
        self.seen: dict[str, Seen | None] = {}

    def identity(self, job: DeferredJob) -> str:
        return f"held:{job.slurm_job_id}"

    async def submit(self, job: DeferredJob, daemon_url: str) -> dict[str, Any]:
        held_id = str(100 + len(self.calls))
        self.calls.append(("submit", held_id, job.plan[0][0]))
        return {"slurm_job_id": held_id, "slurm_state": "PENDING"}

    async def move(self, job: DeferredJob) -> None:
        self.calls.append(("move", str(job.slurm_job_id), job.plan[0][0]))

    async def cancel(self, job: DeferredJob) -> None:
        self.calls.append(("cancel", str(job.slurm_job_id), job.plan[0][0]))

    async def look(self, job: DeferredJob) -> Seen | None:
        return self.seen.get(str(job.slurm_job_id), Seen("PENDING", Status.QUEUED))


def test_an_untimed_launcher_holds_moves_cancels_and_is_followed(tmp_path):
    t0 = float(int(time.time()))
    high, low = eia_values(14, 1)[0], eia_values(19, 1)[0]
    csv = shifted_csv(tmp_path / "ciso.csv", [high] * 8 + [low] + [high] * 3, t0, 3.0)
    clock = ManualClock(t0)
    held = Held()

    async def main() -> None:
        with Store(tmp_path / "cw.db") as store:
            node = Node(store, _settings(tmp_path, csv, scheduler_refresh_s=1.0), clock)
            service = node.service(slurm=held)
            await service.start(URL)
            view = await service.submit(Submission(
                command=["--wrap=true"], deadline_s=t0 + 40, duration_s=2.0, name="held",
                via="slurm"))
            other = await service.submit(Submission(
                command=["--wrap=true"], deadline_s=t0 + 40, duration_s=2.0, name="other",
                via="slurm"))
            assert view["slurm_job_id"] == "100" and view["via"] == "slurm"
            assert held.calls[0] == ("submit", "100", t0 + 24)
            assert service.triggers.armed(view["id"]) == []  # held there: nothing armed here

            shifted_csv(tmp_path / "newer.csv", [high] * 4 + [low] + [high] * 7, t0,
                        3.0).replace(csv)
            clock.set(t0 + 1.0)
            await service.triggers.run_due()  # refresh: both re-planned and moved there
            assert ("move", "100", t0 + 12) in held.calls
            assert node.job(view["id"]).plan[0] == (t0 + 12, t0 + 14)

            cancelled = await service.cancel(other["id"])
            assert cancelled["status"] == "cancelled" and held.calls[-1][:2] == ("cancel", "101")

            clock.set(t0 + 12.5)
            held.seen["100"] = Seen("RUNNING", Status.RUNNING, start_s=t0 + 12.2)
            await service.poll()
            running = node.job(view["id"])
            assert running.status == Status.RUNNING and running.runs == [[t0 + 12.2, None]]
            assert running.slurm_state == "RUNNING"

            clock.set(t0 + 20.0)
            held.seen["100"] = Seen("FAILED", Status.FAILED, t0 + 12.2, t0 + 13.0, exit_code=3)
            await service.poll()
            # Ended there, but no measured record yet: it waits for the node's epilog.
            assert node.job(view["id"]).status == Status.RUNNING
            assert node.job(view["id"]).slurm_state == "FAILED"
            clock.set(t0 + 13.0 + 61.0)
            await service.poll()
            await service.stop()
            done = node.job(view["id"])
        assert done.status == Status.FAILED and done.exit_code == 3
        assert done.runs == [[t0 + 12.2, t0 + 13.0]] and done.ran_s == pytest.approx(0.8)
        assert "no measured job held:100" in (done.message or "")
        assert [c[0] for c in held.calls].count("cancel") == 1

    asyncio.run(main())
