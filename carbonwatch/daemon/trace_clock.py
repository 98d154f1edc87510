"""Trace time for replay backends: ``start_s`` plus real monotonic time elapsed times ``speed``.

The clock stands still at ``start_s`` until :meth:`ReplayClock.start`, so collectors built before
the sampling loop begins open their first interval exactly at ``start_s`` (a resumed replay then
continues the counter where the store left off, with no gap)."""

from __future__ import annotations

import math
import time
from collections.abc import Callable


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

    def start(self) -> None:
        if self._origin_s is None:
            self._origin_s = self._monotonic()

    def time(self) -> float:
        if self._origin_s is None:
            return self.start_s
        return self.start_s + (self._monotonic() - self._origin_s) * self.speed

    monotonic = time  # trace time is monotonic too
