"""Injectable time. Production code asks a Clock, never ``time`` directly, so replay and tests can
drive the sampling loop through recorded or simulated time."""

from __future__ import annotations

import time
from typing import Protocol


class Clock(Protocol):
    def time(self) -> float:
        """Wall-clock Unix seconds (UTC): used for timestamps at rest."""

    def monotonic(self) -> float:
        """Monotonic seconds: used for durations and for scheduling the next poll."""


class SystemClock:
    def time(self) -> float:
        return time.time()

    def monotonic(self) -> float:
        return time.monotonic()


class ManualClock:
    """A clock that moves only when told to; wall and monotonic time move together."""

    def __init__(self, start_s: float = 0.0) -> None:
        self._now_s = float(start_s)

    def time(self) -> float:
        return self._now_s

    def monotonic(self) -> float:
        return self._now_s

    def set(self, now_s: float) -> None:
        if now_s < self._now_s:
            raise ValueError("ManualClock cannot go backwards")
        self._now_s = float(now_s)

    def advance(self, seconds: float) -> None:
        self.set(self._now_s + seconds)


class SteadyClock:
    """Wall time that does not step: the wall clock's reading when built, plus the monotonic
    time elapsed since. A collector measuring on it neither invents energy when the wall clock
    jumps forward (an interval an hour long) nor stalls when it jumps back (an interval that
    would end before it began); :class:`carbonwatch.daemon.sampling.WallTimeLabels` moves its
    intervals back onto the wall clock for the record."""

    def __init__(self, wall: Clock) -> None:
        self._wall = wall
        self._origin_s = wall.time()
        self._origin_mono = wall.monotonic()

    def time(self) -> float:
        return self._origin_s + (self._wall.monotonic() - self._origin_mono)

    def monotonic(self) -> float:
        return self._wall.monotonic()

    def offset_s(self) -> float:
        """How far the wall clock has stepped since this clock was built (wall - steady)."""
        return self._wall.time() - self.time()
