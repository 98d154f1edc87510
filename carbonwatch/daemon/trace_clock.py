"""Trace time for replay backends: ``start_s`` plus real monotonic time elapsed times ``speed``.

The clock stands still at ``start_s`` until :meth:`ReplayClock.start`, so collectors built before
the sampling loop begins open their first interval exactly at ``start_s`` (a resumed replay then
continues the counter where the store left off, with no gap).

:meth:`ReplayClock.held` makes a sampling round one instant of trace time. A real device's reads
take microseconds to milliseconds, but at 20x trace speed a 5 ms stall between the round's time
and a counter read is a whole 100 ms counter step: the interval labelled ``t`` would hold the
counter at ``t + 0.1 s``, and the stored energy would no longer equal the trace's counter delta
at the time the store says it reached."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager


class ReplayClock:
    def __init__(
        self, start_s: float, speed: float = 1.0, monotonic: Callable[[], float] = time.monotonic
    ) -> None:
        if not (math.isfinite(speed) and speed > 0):
            raise ValueError(f"replay speed must be a finite number > 0, got {speed!r}")
        self.start_s = float(start_s)
        self.speed = float(speed)
        self._monotonic = monotonic
        self._origin_s: float | None = None  # real monotonic time at start()
        self._held_s: float | None = None  # while a sampling round holds the clock

    def start(self) -> None:
        if self._origin_s is None:
            self._origin_s = self._monotonic()

    @contextmanager
    def held(self, now_s: float) -> Iterator[None]:
        """Every read of this clock answers ``now_s`` until the block ends (one sampling round;
        ``now_s`` is a time this clock gave, so it never runs backwards)."""
        self._held_s = now_s
        try:
            yield
        finally:
            self._held_s = None

    def time(self) -> float:
        if self._held_s is not None:
            return self._held_s
        if self._origin_s is None:
            return self.start_s
        return self.start_s + (self._monotonic() - self._origin_s) * self.speed

    monotonic = time  # trace time is monotonic too
