"""An interruptible deferred job through its windows on a ManualClock: launched at its first
window's start, frozen (SIGSTOP, a real process) at its end, continued at the next window's
start, recorded when it exits. The scheduler's triggers run in clock time (fired by
``Triggers.run_due``), so the test moves the clock instead of sleeping through real slots; the
job's process is real, started by an injected launcher that runs the command itself."""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Callable
from typing import Any

import psutil
import pytest
from forecast_csv import eia_values, shifted_csv

from carbonwatch.clock import ManualClock
from carbonwatch.config import Settings
from carbonwatch.scheduler.job import Status, Submission
from carbonwatch.scheduler.launcher import LocalLauncher
from carbonwatch.scheduler.service import SchedulerService
from carbonwatch.scheduler.triggers import Triggers
from carbonwatch.store import Store, deferred

# Writes "started", then waits (polling) until the file "go" exists, then exits 0.
WAITER = (
    "import os, sys, time\n"
    "open(sys.argv[1], 'w').write('started')\n"
    "while not os.path.exists(sys.argv[2]): time.sleep(0.02)\n"
)


async def _until(check: Callable[[], bool], what: str, timeout_s: float = 30.0) -> None:
    """Wait for a real process to act (a signal delivered, an exit), never for a slot."""
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


def test_an_interruptible_job_follows_its_windows_in_clock_time(tmp_path):
    t0 = float(int(time.time()))
    high, low = eia_values(5, 1)[0], eia_values(19, 2)
    # Two low 4 s slots apart, high ones around them (CISO's hours 19 and 20 of the fixture).
    csv = shifted_csv(tmp_path / "ciso.csv", [high, low[0], high, low[1], high, high], t0, 4.0)
    started, go = tmp_path / "started", tmp_path / "go"
    settings = Settings(
        db=str(tmp_path / "cw.db"), port=0, zone="CISO", provider="csv", provider_url=str(csv)
    ).validate()
    clock = ManualClock(t0)
    triggers = Triggers(clock, loop=False)

    async def main() -> None:
        with Store(tmp_path / "cw.db") as store:

            async def read(fn: Callable[[Store], Any]) -> Any:
                return fn(store)

            async def write(fn: Callable[[Store], Any]) -> Any:
                with store.transaction():
                    return fn(store)

            def row() -> dict[str, Any]:
                found = deferred.get(store.conn, view["id"])
                assert found is not None
                return found

            service = SchedulerService(
                settings, read=read, write=write, clock=clock, poll_s=0.02, triggers=triggers,
                launchers={"": LocalLauncher(argv=lambda _n, _k, command, cwd=None: [*command])},
            )
            await service.start("http://127.0.0.1:9")
            try:
                view = await service.submit(Submission(
                    command=[sys.executable, "-c", WAITER, str(started), str(go)],
                    deadline_s=t0 + 40, duration_s=8.0, name="waiter", interruptible=True,
                ))
                windows = [(w["start_s"], w["end_s"]) for w in view["plan"]]
                assert windows == [(t0 + 4, t0 + 8), (t0 + 12, t0 + 16)]
                assert await triggers.run_due() == 0 and row()["status"] == Status.QUEUED

                clock.set(t0 + 4)
                await triggers.run_due()
                assert row()["status"] == Status.RUNNING
                pid = row()["wrapper_pid"]
                await _until(started.exists, "the job to start")

                clock.set(t0 + 8)
                await triggers.run_due()
                assert row()["status"] == Status.PAUSED
                assert row()["runs"] == [[t0 + 4, t0 + 8]] and row()["ran_s"] == 4.0
                await _until(lambda: psutil.Process(pid).status() == psutil.STATUS_STOPPED,
                             "SIGSTOP to reach the job")

                go.touch()  # a stopped process cannot see it: it must still be there
                clock.set(t0 + 10)
                await triggers.run_due()
                assert psutil.Process(pid).status() == psutil.STATUS_STOPPED

                clock.set(t0 + 12)
                await triggers.run_due()
                assert row()["status"] == Status.RUNNING
                await _until(lambda: row()["status"] == Status.DONE, "the job to end")
                done = row()
                assert done["exit_code"] == 0
                assert done["runs"] == [[t0 + 4, t0 + 8], [t0 + 12, t0 + 12]]
                assert done["ran_s"] == pytest.approx(4.0)
                assert not triggers.due()  # nothing left armed for an ended job
            finally:
                await service.stop()

    asyncio.run(main())
