"""The sampling loop's core: drive collectors on their cadences, attribute each closed interval,
price it, and hand it to sinks (a ledger, the store writer, Prometheus counters).

It never sleeps and never reads the time itself: ``step(now_s)`` does what is due at ``now_s`` and
says when it next needs to run. The wrapper and the daemon sleep between steps; replay advances a
ManualClock through recorded time and calls the very same code."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass

from carbonwatch.attribution import group_shares, split_interval
from carbonwatch.collectors.base import Collector
from carbonwatch.grid.types import IntensityPoint, IntensitySource
from carbonwatch.model import IDLE, DeviceInfo, EnergyInterval

log = logging.getLogger(__name__)

Owners = Callable[[], Mapping[int | str, str]]


@dataclass(frozen=True)
class AttributedInterval:
    """One device interval split over consumers (``parts`` includes ``idle`` when non-zero)."""

    interval: EnergyInterval
    intensity: IntensityPoint
    parts: dict[str, float]


Sink = Callable[[AttributedInterval], None]
# Holds the devices' clock at one time for a round of reads (a replay's trace clock; see
# daemon/trace_clock.py); live devices are read when they are read.
Instant = Callable[[float], AbstractContextManager[object]]


class Sampler:
    def __init__(
        self,
        collectors: Sequence[Collector],
        *,
        intensity: IntensitySource,
        owners: Owners,
        sinks: Sequence[Sink] = (),
        idle_policy: str = "separate",
        power_interval_s: float = 0.1,
        counter_interval_s: float = 1.0,
        instant: Instant | None = None,
    ) -> None:
        self.collectors = list(collectors)
        self._instant: Instant = instant or (lambda now_s: nullcontext())
        self.intensity = intensity
        self.owners = owners
        self.sinks = list(sinks)
        self.idle_policy = idle_policy
        self.power_interval_s = power_interval_s
        # Without a collector that polls, the loop need only wake to collect.
        self._polls = any(c.polls for c in self.collectors)
        self.counter_interval_s = counter_interval_s
        self._next_poll_s = -math.inf
        self._next_collect_s = -math.inf
        self.errors = 0

    def devices(self) -> list[DeviceInfo]:
        return [d for c in self.collectors for d in c.devices()]

    def start(self, now_s: float) -> None:
        """First readings: they open the intervals that the next ``collect`` closes."""
        self._run(now_s, collect=True)

    def step(self, now_s: float) -> float:
        """Do what is due at ``now_s``; return the time of the next due step."""
        collect = now_s >= self._next_collect_s
        if now_s >= self._next_poll_s or collect:
            self._run(now_s, collect=collect)
        return min(self._next_poll_s, self._next_collect_s)

    def flush(self, now_s: float) -> None:
        """Close every open interval at ``now_s`` (at job end and on shutdown)."""
        self._run(now_s, collect=True)

    def _run(self, now_s: float, *, collect: bool) -> None:
        with self._instant(now_s):
            self._read(now_s, collect=collect)

    def _read(self, now_s: float, *, collect: bool) -> None:
        for collector in self.collectors:
            try:
                collector.poll(now_s)
            except Exception:  # a collector must never take the loop down
                self.errors += 1
                log.exception("collector %r failed to poll", collector)
        self._next_poll_s = now_s + self.power_interval_s if self._polls else math.inf
        if not collect:
            return
        self._next_collect_s = now_s + self.counter_interval_s
        owners = self.owners()
        for collector in self.collectors:
            try:
                intervals = collector.collect(now_s)
            except Exception:
                self.errors += 1
                log.exception("collector %r failed to collect", collector)
                continue
            for interval in intervals:
                self._emit(self.attribute(interval, owners))

    def attribute(
        self, interval: EnergyInterval, owners: Mapping[int | str, str]
    ) -> AttributedInterval:
        shares = group_shares(interval.shares, owners)
        split = split_interval(interval.energy_j, interval.idle_energy_j, shares, self.idle_policy)
        parts = dict(split.by_consumer)
        if split.idle_j > 0:
            parts[IDLE] = split.idle_j
        midpoint_s = (interval.start_s + interval.end_s) / 2
        return AttributedInterval(interval, self.intensity.intensity_at(midpoint_s), parts)

    def _emit(self, item: AttributedInterval) -> None:
        for sink in self.sinks:
            try:
                sink(item)
            except Exception:
                self.errors += 1
                log.exception("sink %r failed", sink)
