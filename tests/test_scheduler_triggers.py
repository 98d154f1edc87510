"""The scheduler's one timing path in its daemon form: the loop task fires each trigger once,
in the scheduler's Clock time (not the system clock's), woken when a trigger is added. The
clock here runs an hour behind the system clock: a trigger timed on the system clock would fire
at once. Nothing waits for a fixed time: each check waits for the event itself."""

from __future__ import annotations

import asyncio
import time

from carbonwatch.clock import SystemClock
from carbonwatch.scheduler.triggers import Triggers


class BehindClock(SystemClock):
    """Wall time an hour behind the system clock."""

    def time(self) -> float:
        return time.time() - 3600.0


async def _until(check, what: str, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.01)


def test_the_loop_fires_each_trigger_once_at_its_clock_time():
    clock = BehindClock()
    fired: list[tuple[str, float]] = []
    ticks: list[float] = []
    running = [0, 0]  # now, most at once

    async def record(job_id: str) -> None:
        fired.append((job_id, clock.time()))

    async def tick() -> None:
        ticks.append(clock.time())
        running[0] += 1
        running[1] = max(running)
        await asyncio.sleep(0.3)  # longer than its interval: never two at once
        running[0] -= 1

    async def main() -> None:
        triggers = Triggers(clock)
        triggers.start({"tick": (tick, 0.05)})
        try:
            now_s = clock.time()
            triggers.at(now_s - 10.0, record, "past", "launch")  # passed: fires at once
            later_s = now_s + 0.2
            triggers.at(later_s, record, "later", "launch")
            triggers.at(now_s + 0.1, record, "dropped", "launch")
            triggers.disarm("dropped")
            await _until(lambda: len(fired) == 2, "both triggers")
            assert [job for job, _ in fired] == ["past", "later"]
            assert fired[1][1] >= later_s  # in the clock's time, never early
            await _until(lambda: len(ticks) >= 3, "the interval job")
        finally:
            triggers.stop()
        count = len(fired)
        await asyncio.sleep(0.1)
        assert len(fired) == count == 2  # each once; none after stop
        assert running[1] == 1

    asyncio.run(main())
