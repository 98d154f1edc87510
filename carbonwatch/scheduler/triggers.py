"""When the scheduler acts, in the scheduler's :class:`Clock` time: one trigger per event of a
job (``<job id>:launch``, ``:pause:<i>``, ``:resume:<i>``) and the scheduler's own interval
jobs (the refresh, the poll of untimed launchers). A time already passed fires at once, each
trigger once.

One timing path for the daemon and the tests: what is due is decided here, in clock time, from
one table. A test on a ManualClock builds ``Triggers(clock, loop=False)``, moves the clock and
calls :meth:`Triggers.run_due`. In the daemon, APScheduler 3's ``AsyncIOScheduler`` does the
waiting in real time: one date job wakes this table at the next due time (converted from clock
time to wall time at arming, so a clock that is not the system's still decides), re-armed
whenever the table changes and never more than ``MAX_SLEEP_S`` ahead, so a wall clock stepped
forward is noticed within that (stepped back, the planned wall times are simply later). An
interval job every ``MAX_SLEEP_S`` keeps the table looked at should a wake-up ever fail to re-arm
the next. What falls due fires as its own task, so a slow refresh never holds back a launch, and an
interval job still running is skipped rather than run twice (APScheduler's coalescing, kept)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta

from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.date import DateTrigger

from carbonwatch.clock import Clock

log = logging.getLogger(__name__)
MAX_SLEEP_S = 5.0  # the longest wait before the table is looked at again
_WAKE, _TICK = "carbonwatch:wake", "carbonwatch:tick"
Every = dict[str, tuple[Callable[[], Awaitable[None]], float]]


class Triggers:
    def __init__(self, clock: Clock, *, loop: bool = True) -> None:
        """``loop``: on :meth:`start`, APScheduler on the running event loop fires what falls
        due; False leaves that to :meth:`run_due` (a test on a ManualClock)."""
        self.clock = clock
        self._loop_wanted = loop
        self._events: dict[str, tuple[float, Callable[[str], Awaitable[None]], str]] = {}
        self._every: Every = {}
        self._next_every: dict[str, float] = {}
        self._busy: dict[str, asyncio.Task[None]] = {}  # interval jobs running (never two)
        self._tasks: set[asyncio.Task[None]] = set()
        self._waker: AsyncIOScheduler | None = None
        self.started = False

    def start(self, every: Every) -> None:
        """Start timing, with ``every`` = {id: (fn, interval s)}, each first due one interval
        from now."""
        self.started = True
        self._every = dict(every)
        now_s = self.clock.time()
        self._next_every = {k: now_s + seconds for k, (_, seconds) in every.items()}
        if self._loop_wanted:
            self._waker = AsyncIOScheduler(
                event_loop=asyncio.get_running_loop(), timezone=UTC,
                # Run however late (the loop may be busy); the table decides what is due, so a
                # wake-up that comes twice or late fires nothing twice.
                job_defaults={"misfire_grace_time": None, "coalesce": True, "max_instances": 8},
            )
            self._waker.start()
            self._waker.add_job(self._fire_due, "interval", seconds=MAX_SLEEP_S, id=_TICK)
            self._rearm()

    def stop(self) -> None:
        """No more firing. Events already firing run on (a launch half done is finished)."""
        self.started = False
        self._events.clear()
        if self._waker is not None:
            self._waker.shutdown(wait=False)
            self._waker = None

    def at(
        self, t_s: float, fn: Callable[[str], Awaitable[None]], job_id: str, event: str
    ) -> None:
        """Run ``fn(job_id)`` at clock time ``t_s`` (at once if it passed), replacing the
        job's trigger of the same ``event``."""
        self._events[f"{job_id}:{event}"] = (t_s, fn, job_id)
        self._rearm()

    def disarm(self, job_id: str) -> None:
        """Drop every trigger of one job."""
        for key in [k for k in self._events if k.startswith(f"{job_id}:")]:
            del self._events[key]

    def armed(self, job_id: str) -> list[str]:
        """The events armed for one job (``launch``, ``pause:<i>``, ``resume:<i>``)."""
        return [k.split(":", 1)[1] for k in self._events if k.startswith(f"{job_id}:")]

    def due(self) -> list[str]:
        """The ids of the events due now (``<job id>:<event>``), earliest first."""
        now_s = self.clock.time()
        return [k for k, v in sorted(self._events.items(), key=lambda kv: kv[1][0])
                if v[0] <= now_s]

    def next_s(self) -> float | None:
        """The clock time of the next event or interval job, None when none is armed."""
        times = [t for t, _, _ in self._events.values()] + list(self._next_every.values())
        return min(times) if times else None

    async def run_due(self) -> int:
        """Run every event and interval job due at the clock's time, one after the other;
        returns how many ran."""
        ran = 0
        while self.started and (keys := self.due()):
            _, fn, job_id = self._events.pop(keys[0])
            await fn(job_id)
            ran += 1
        for _key, fn_every in self._due_every():
            await fn_every()
            ran += 1
        return ran

    def _due_every(self) -> list[tuple[str, Callable[[], Awaitable[None]]]]:
        now_s = self.clock.time()
        due = []
        for key, (fn, seconds) in self._every.items():
            if self.started and self._next_every[key] <= now_s:
                self._next_every[key] = now_s + seconds
                due.append((key, fn))
        return due

    async def _fire_due(self) -> None:
        """APScheduler's job: fire what is due, each as its own task, then wake again at the
        next due time."""
        if not self.started:
            return
        for key in self.due():
            _, fn, job_id = self._events.pop(key)
            self._spawn(key, fn(job_id))
        for key, fn_every in self._due_every():
            if key in self._busy:
                continue  # the last one still runs: skip, as a coalescing scheduler would
            self._busy[key] = self._spawn(key, fn_every())
            self._busy[key].add_done_callback(lambda _t, k=key: self._busy.pop(k, None))
        self._rearm()

    def _rearm(self) -> None:
        """One APScheduler date job at the table's next due time, in wall time."""
        if self._waker is None or not self.started:
            return
        next_s = self.next_s()
        if next_s is None:
            return
        wait_s = min(max(0.0, next_s - self.clock.time()), MAX_SLEEP_S)
        self._waker.add_job(
            self._fire_due, DateTrigger(run_date=datetime.now(UTC) + timedelta(seconds=wait_s)),
            id=_WAKE, replace_existing=True,
        )

    def _spawn(self, key: str, work: Awaitable[None]) -> asyncio.Task[None]:
        async def fire() -> None:
            try:
                await work
            except Exception:  # noqa: BLE001 - a trigger has nobody to report to
                log.exception("scheduler trigger %s failed", key)

        task = asyncio.get_running_loop().create_task(fire())
        self._tasks.add(task)  # held: the loop keeps only weak references to tasks
        task.add_done_callback(self._tasks.discard)
        return task
