"""When the scheduler acts: APScheduler 3's AsyncIOScheduler on the daemon's event loop, one
date trigger per event of a job (``<job id>:launch``, ``:pause:<i>``, ``:resume:<i>``) and
the interval jobs of the scheduler itself. Times come in as the scheduler's :class:`Clock`
seconds; a time already passed runs at once (never twice)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.date import DateTrigger

from carbonwatch.clock import Clock


def _when(t_s: float) -> datetime:
    return datetime.fromtimestamp(t_s, UTC)


class Triggers:
    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self._scheduler: AsyncIOScheduler | None = None

    @property
    def started(self) -> bool:
        return self._scheduler is not None

    def start(self, every: dict[str, tuple[Callable[[], Awaitable[None]], float]]) -> None:
        """Start timing on the running loop, with ``every`` = {id: (fn, interval s)}."""
        self._scheduler = AsyncIOScheduler(
            event_loop=asyncio.get_running_loop(),
            timezone=UTC,
            # Run however late (the loop may be busy, the trigger may be "now"); never twice.
            job_defaults={"misfire_grace_time": None, "coalesce": True, "max_instances": 1},
        )
        self._scheduler.start()
        for job_id, (fn, seconds) in every.items():
            self._scheduler.add_job(fn, "interval", seconds=seconds, id=job_id)

    def stop(self) -> None:
        if self._scheduler is not None:
            self._scheduler.shutdown(wait=False)
            self._scheduler = None

    def at(
        self, t_s: float, fn: Callable[[str], Awaitable[None]], job_id: str, event: str
    ) -> None:
        """Run ``fn(job_id)`` at clock time ``t_s`` (now if it passed), replacing the job's
        trigger of the same ``event``."""
        assert self._scheduler is not None
        self._scheduler.add_job(
            fn,
            DateTrigger(run_date=_when(max(t_s, self.clock.time()))),
            args=[job_id],
            id=f"{job_id}:{event}",
            replace_existing=True,
        )

    def disarm(self, job_id: str) -> None:
        """Drop every trigger of one job."""
        if self._scheduler is None:
            return
        for job in self._scheduler.get_jobs():
            if job.id.startswith(f"{job_id}:"):
                job.remove()


class ClockTriggers:
    """Triggers kept in the scheduler's clock time and fired by :meth:`run_due`: nothing waits
    in real time. With a ManualClock a caller advances the clock and runs what fell due, in
    time order, each event once (the same contract as :class:`Triggers`)."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self._events: dict[str, tuple[float, Callable[[str], Awaitable[None]], str]] = {}
        self._every: dict[str, tuple[Callable[[], Awaitable[None]], float]] = {}
        self._next_every: dict[str, float] = {}
        self.started = False

    def start(self, every: dict[str, tuple[Callable[[], Awaitable[None]], float]]) -> None:
        self.started = True
        self._every = dict(every)
        now_s = self.clock.time()
        self._next_every = {k: now_s + seconds for k, (_, seconds) in every.items()}

    def stop(self) -> None:
        self.started = False
        self._events.clear()

    def at(
        self, t_s: float, fn: Callable[[str], Awaitable[None]], job_id: str, event: str
    ) -> None:
        self._events[f"{job_id}:{event}"] = (t_s, fn, job_id)

    def disarm(self, job_id: str) -> None:
        for key in [k for k in self._events if k.startswith(f"{job_id}:")]:
            del self._events[key]

    def due(self) -> list[str]:
        """The ids of the events due now (``<job id>:<event>``), earliest first."""
        now_s = self.clock.time()
        return [k for k, v in sorted(self._events.items(), key=lambda kv: kv[1][0])
                if v[0] <= now_s]

    async def run_due(self) -> int:
        """Run every event and interval job due at the clock's time; returns how many ran."""
        ran = 0
        while self.started and (keys := self.due()):
            _, fn, job_id = self._events.pop(keys[0])
            await fn(job_id)
            ran += 1
        now_s = self.clock.time()
        for key, (fn_every, seconds) in self._every.items():
            if self.started and self._next_every[key] <= now_s:
                self._next_every[key] = now_s + seconds
                await fn_every()
                ran += 1
        return ran
