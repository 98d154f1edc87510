"""The one protocol every collector speaks.

The sampling loop calls ``poll`` often (about 10 Hz: cheap reads such as GPU power) and ``collect``
about once a second (expensive reads such as the GPU energy counter, RAPL, a process scan).
``collect`` returns the intervals closed since the previous call. Time always comes in as an
argument from an injectable clock, so a replayed trace drives the very same code."""

from __future__ import annotations

from typing import Protocol

from carbonwatch.model import DeviceInfo, EnergyInterval


class Collector(Protocol):
    # Whether ``poll`` reads anything between collects. The loop wakes at the poll cadence only
    # if some collector does (on the benchmark VM each wake-up costs ~80 us of CPU).
    polls: bool

    def devices(self) -> list[DeviceInfo]:
        """What this collector measures, and how (state included)."""

    def poll(self, now_s: float) -> None:
        """Cheap, frequent reads (power samples that shape the counter intervals). Called at every
        collect too, first, whether or not the collector ``polls``."""

    def collect(self, now_s: float) -> list[EnergyInterval]:
        """Expensive reads; returns the intervals closed since the previous call."""

    def close(self) -> None:
        """Release hardware handles."""
