"""Accumulates attributed intervals into per-consumer totals and per-minute rollups.

A sink of the Sampler. Each interval is priced with its own intensity point (carbon) and the
energy price (cost); minute rollups are what the store keeps, so the store's size grows with time,
not with the sampling rate."""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field

from carbonwatch.model import IDLE, OTHER, Provenance
from carbonwatch.pricing import Pricing, co2e_g
from carbonwatch.sampler import AttributedInterval

# consumer key -> (phase, model). Phases: training | inference | other | idle.
PhaseOf = Callable[[str], tuple[str, str]]


def default_phase_of(consumer: str) -> tuple[str, str]:
    if consumer == IDLE:
        return "idle", ""
    return "other", ""


@dataclass
class ConsumerTotals:
    energy_j: float = 0.0
    co2e_g: float = 0.0
    cost: float = 0.0
    energy_by_device: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    energy_by_class: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    # provenance per device class: "measured" unless any interval was estimated
    provenance_by_class: dict[str, str] = field(default_factory=dict)
    methods: set[str] = field(default_factory=set)
    intensity_kinds: set[str] = field(default_factory=set)
    intensity_providers: set[str] = field(default_factory=set)


@dataclass
class MinuteRow:
    energy_j: float = 0.0
    co2e_g: float = 0.0
    cost: float = 0.0
    intensity_weighted: float = 0.0  # Σ energy·intensity, to report the energy-weighted mean
    intensity_kind: str = "static"
    provenance: str = Provenance.MEASURED.value


class EnergyLedger:
    def __init__(self, pricing: Pricing, phase_of: PhaseOf = default_phase_of) -> None:
        self.pricing = pricing
        self.phase_of = phase_of
        self.totals: dict[str, ConsumerTotals] = defaultdict(ConsumerTotals)
        self._minutes: dict[tuple[int, str, str, str], MinuteRow] = {}
        self.first_s: float | None = None
        self.last_s: float | None = None

    def __call__(self, item: AttributedInterval) -> None:
        self.add(item)

    def add(self, item: AttributedInterval) -> None:
        iv = item.interval
        self.first_s = iv.start_s if self.first_s is None else min(self.first_s, iv.start_s)
        self.last_s = iv.end_s if self.last_s is None else max(self.last_s, iv.end_s)
        intensity = item.intensity.intensity_g_per_kwh
        cls = iv.device_class.value
        for consumer, energy_j in item.parts.items():
            carbon = co2e_g(energy_j, intensity, self.pricing.pue)
            cost = self.pricing.energy_cost(energy_j)
            t = self.totals[consumer]
            t.energy_j += energy_j
            t.co2e_g += carbon
            t.cost += cost
            t.energy_by_device[iv.device_id] += energy_j
            t.energy_by_class[cls] += energy_j
            if t.provenance_by_class.get(cls) != Provenance.ESTIMATED.value:
                t.provenance_by_class[cls] = iv.provenance.value
            t.methods.add(iv.method)
            t.intensity_kinds.add(item.intensity.kind)
            t.intensity_providers.add(item.intensity.provider)
            self._add_minutes(item, consumer, energy_j, carbon, cost, intensity)

    def _add_minutes(
        self,
        item: AttributedInterval,
        consumer: str,
        energy_j: float,
        carbon: float,
        cost: float,
        intensity: float,
    ) -> None:
        iv = item.interval
        for minute_s, fraction in _minute_fractions(iv.start_s, iv.end_s):
            key = (minute_s, iv.device_id, iv.device_class.value, consumer)
            row = self._minutes.get(key)
            if row is None:
                row = self._minutes[key] = MinuteRow(intensity_kind=item.intensity.kind)
            row.energy_j += energy_j * fraction
            row.co2e_g += carbon * fraction
            row.cost += cost * fraction
            row.intensity_weighted += energy_j * fraction * intensity
            if iv.provenance.value == Provenance.ESTIMATED.value:
                row.provenance = Provenance.ESTIMATED.value
            if item.intensity.kind != row.intensity_kind:
                row.intensity_kind = "mixed"

    def drain_minute_rows(self) -> list[dict]:
        """Rows for the store's ``energy_minute`` table (added, not replaced); then forgets them."""
        rows = []
        for (minute_s, device_id, device_class, consumer), r in self._minutes.items():
            phase, model = self.phase_of(consumer)
            mean = r.intensity_weighted / r.energy_j if r.energy_j > 0 else 0.0
            rows.append(
                {
                    "minute_s": minute_s,
                    "device_id": device_id,
                    "device_class": device_class,
                    "consumer": consumer,
                    "phase": phase,
                    "model": model,
                    "energy_j": r.energy_j,
                    "co2e_g": r.co2e_g,
                    "cost": r.cost,
                    "intensity_g_per_kwh": mean,
                    "intensity_kind": r.intensity_kind,
                    "provenance": r.provenance,
                }
            )
        self._minutes.clear()
        return rows

    def device_total_j(self) -> float:
        return math.fsum(t.energy_j for t in self.totals.values())

    def consumers(self) -> list[str]:
        return [c for c in self.totals if c not in (IDLE, OTHER)]


def _minute_fractions(start_s: float, end_s: float) -> list[tuple[int, float]]:
    """Which minutes [start_s, end_s) touches and the fraction of the interval in each."""
    first = int(start_s // 60) * 60
    if end_s <= start_s or end_s <= first + 60:
        return [(first, 1.0)]
    out = []
    minute = first
    duration = end_s - start_s
    while minute < end_s:
        lo, hi = max(start_s, minute), min(end_s, minute + 60)
        if hi > lo:
            out.append((minute, (hi - lo) / duration))
        minute += 60
    return out
