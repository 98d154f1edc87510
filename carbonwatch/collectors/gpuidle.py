"""A GPU's idle power: learned from its energy counter, configured, or stored.

Learned from the *energy counter* over intervals in which no process holds a compute context and
nothing was busy: the counter delta over such intervals divided by their length. Not from the
lowest power reading, which lags (right after activity an H200 read 113 W while its counter
showed 80 W). A configured value (``gpu_idle_power_w``) overrides it; one learned earlier (kept
per GPU UUID in the store, :mod:`carbonwatch.store.gpu_idle`) stands in until this run has seen a
process-free interval; without either, the lowest power reading is the last resort, and says so.
"""

from __future__ import annotations

import logging
import math
from collections import deque
from collections.abc import Callable

log = logging.getLogger(__name__)

IDLE_CONFIGURED = "configured"
IDLE_LEARNED = "learned-from-counter"
IDLE_LOWEST_POWER = "lowest-power-reading"
IDLE_UNKNOWN = "unknown"

# A process-free interval counts towards the idle baseline only if utilisation stayed at or below
# this (NVML reports whole percent; 1 % tolerates one stray sample).
IDLE_MAX_UTIL_PCT = 1.0
# The counter moves every ~100 ms: a reading may lag the read by that much. An interval is
# process-free only if nothing was seen busy for this long before it began.
COUNTER_STALE_S = 0.2
MIN_IDLE_INTERVAL_S = 0.5


def parse_idle_setting(value: str) -> tuple[float | None, dict[str, float]]:
    """``gpu_idle_power_w``: ``""`` (learn), ``"80"`` (all GPUs) or ``"GPU-ab..=80,GPU-cd..=95"``.

    Raises ValueError naming the faulty part."""
    text = value.strip()
    if not text:
        return None, {}
    if "=" not in text:
        return _watts(text, "gpu_idle_power_w"), {}
    by_uuid: dict[str, float] = {}
    for part in text.split(","):
        uuid, sep, watts = part.partition("=")
        if not sep or not uuid.strip():
            raise ValueError(f"gpu_idle_power_w: expected UUID=W, got {part.strip()!r}")
        by_uuid[uuid.strip()] = _watts(watts, f"gpu_idle_power_w for {uuid.strip()}")
    return None, by_uuid


def _watts(text: str, what: str) -> float:
    try:
        w = float(text)
    except ValueError:
        raise ValueError(f"{what}: {text.strip()!r} is not a number of watts") from None
    if not (math.isfinite(w) and w >= 0):
        raise ValueError(f"{what}: must be a finite number of watts >= 0, got {text.strip()!r}")
    return w



class IdleBaseline:
    """One GPU's idle power and where it came from (see the module docstring)."""

    def __init__(
        self,
        configured_w: float | None = None,
        stored_w: float | None = None,
        window_s: float = 60.0,
    ) -> None:
        self.configured_w = configured_w
        self.stored_w = stored_w
        self.window_s = window_s
        self._idle: deque[tuple[float, float]] = deque()  # (duration_s, energy_j), newest last
        self._idle_s = 0.0
        self.learned_s = 0.0  # process-free seconds seen this run
        self.min_power_w: float | None = None
        self._reported_w: float | None = None

    def observe_idle(self, duration_s: float, energy_j: float) -> None:
        """A process-free interval measured by the counter. The most recent ``window_s`` of such
        intervals make the baseline (idle power drifts with temperature)."""
        # A sliver of an interval (the last one at shutdown) carries up to a whole counter step
        # (~100 ms of energy) in a few ms: it would skew the mean, so it is not used.
        if duration_s < MIN_IDLE_INTERVAL_S or not math.isfinite(energy_j) or energy_j < 0:
            return
        self._idle.append((duration_s, energy_j))
        self._idle_s += duration_s
        self.learned_s += duration_s
        while len(self._idle) > 1 and self._idle_s - self._idle[0][0] >= self.window_s:
            self._idle_s -= self._idle.popleft()[0]

    def report(self, uuid: str, callback: Callable[[str, float, float], None] | None) -> None:
        """Hand a new or moved (> 0.5 %) learned baseline to ``callback`` (which persists it)."""
        learned, last = self.learned_w, self._reported_w
        if callback is None or learned is None:
            return
        if last is None or abs(learned - last) > 0.005 * last:
            self._reported_w = learned
            try:
                callback(uuid, learned, self.learned_s)
            except Exception:  # persisting is best effort; measuring goes on
                log.exception("%s: could not persist the learned idle baseline", uuid)

    def note_power(self, power_w: float) -> None:
        if self.min_power_w is None or power_w < self.min_power_w:
            self.min_power_w = power_w

    @property
    def learned_w(self) -> float | None:
        if not self._idle:
            return None
        return math.fsum(e for _, e in self._idle) / math.fsum(d for d, _ in self._idle)

    def current(self) -> tuple[float | None, str]:
        """(idle power, source): configured > learned this run > stored > lowest power > unknown."""
        if self.configured_w is not None:
            return self.configured_w, IDLE_CONFIGURED
        learned = self.learned_w
        if learned is not None:
            return learned, IDLE_LEARNED
        if self.stored_w is not None:
            return self.stored_w, IDLE_LEARNED
        if self.min_power_w is not None:
            return self.min_power_w, IDLE_LOWEST_POWER
        return None, IDLE_UNKNOWN

    def describe(self) -> str:
        value, source = self.current()
        if value is None:
            return "idle baseline unknown (no process-free interval or power reading yet)"
        how = {
            IDLE_CONFIGURED: "configured (gpu_idle_power_w)",
            IDLE_LOWEST_POWER: "lowest power reading so far, until a process-free interval is seen",
        }.get(source)
        if how is None:
            how = (f"learned from the energy counter over {self.learned_s:.0f} s without processes"
                   if self.learned_w is not None else "learned from the energy counter earlier")
        return f"idle baseline {value:.1f} W {source}: {how}"
