"""Prometheus ``/metrics``: a custom collector over in-memory totals (prometheus/client_python's
one-method Collector protocol).

The totals are seeded from the store at start and grow only by what the writer has committed, so
the counters equal the store, a restart continues them, and a crash at worst steps them back to
what was committed (Prometheus reads a decrease as a counter reset)."""

from __future__ import annotations

import threading
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

EnergyKey = tuple[str, str, str, str]  # job (name), model, phase, device
ENERGY_LABELS = ("job", "model", "phase", "device")


@dataclass(frozen=True)
class Health:
    """What the health gauges show, read at scrape time."""

    up: bool
    collector_errors: int
    device_power_w: Mapping[str, float]
    device_age_s: Mapping[str, float]


class MetricTotals:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._energy: dict[EnergyKey, list[float]] = defaultdict(lambda: [0.0, 0.0, 0.0])
        self._calls: dict[str, int] = defaultdict(int)

    def add_energy(self, items: Iterable[tuple[EnergyKey, float, float, float]]) -> None:
        """(key, energy_j, co2e_g, cost) items, after they are committed."""
        with self._lock:
            for key, energy_j, carbon_g, cost in items:
                acc = self._energy[key]
                acc[0] += energy_j
                acc[1] += carbon_g
                acc[2] += cost

    def add_calls(self, by_model: Mapping[str, int]) -> None:
        with self._lock:
            for model, n in by_model.items():
                self._calls[model] += n

    def snapshot(self) -> tuple[dict[EnergyKey, list[float]], dict[str, int]]:
        with self._lock:
            return {k: list(v) for k, v in self._energy.items()}, dict(self._calls)


class DaemonCollector:
    """Renders the totals and the health callback as metric families, with a ``node`` label."""

    def __init__(
        self, totals: MetricTotals, health: Callable[[], Health], node: str, currency: str | None
    ) -> None:
        self.totals = totals
        self.health = health
        self.node = node
        self.currency = currency  # None: no price configured, so no cost counter (unknown != 0)

    def collect(self) -> Iterator[Metric]:
        energy, calls = self.totals.snapshot()
        labels = [*ENERGY_LABELS, "node"]
        joules = CounterMetricFamily(
            "carbonwatch_energy_joules", "Energy attributed, in joules.", labels=labels
        )
        grams = CounterMetricFamily(
            "carbonwatch_emissions_grams", "Emissions attributed, in grams CO2e.", labels=labels
        )
        cost = CounterMetricFamily(
            "carbonwatch_cost", "Energy cost attributed, in the currency label's unit.",
            labels=[*labels, "currency"],
        )
        for key, (energy_j, carbon_g, money) in sorted(energy.items()):
            values = [*key, self.node]
            joules.add_metric(values, energy_j)
            grams.add_metric(values, carbon_g)
            if self.currency is not None:
                cost.add_metric([*values, self.currency], money)
        yield joules
        yield grams
        if self.currency is not None:
            yield cost
        served = CounterMetricFamily(
            "carbonwatch_inference_calls", "Inference calls settled.", labels=["model", "node"]
        )
        for model, n in sorted(calls.items()):
            served.add_metric([model, self.node], n)
        yield served

        health = self.health()
        power = GaugeMetricFamily(
            "carbonwatch_device_power_watts", "Average power over the device's last interval.",
            labels=["device", "node"],
        )
        age = GaugeMetricFamily(
            "carbonwatch_device_last_sample_age_seconds",
            "Seconds since the device's last closed interval.", labels=["device", "node"],
        )
        for device, watts in sorted(health.device_power_w.items()):
            power.add_metric([device, self.node], watts)
        for device, seconds in sorted(health.device_age_s.items()):
            age.add_metric([device, self.node], seconds)
        yield power
        yield age
        errors = CounterMetricFamily(
            "carbonwatch_collector_errors", "Collector and sink failures.", labels=["node"]
        )
        errors.add_metric([self.node], health.collector_errors)
        yield errors
        up = GaugeMetricFamily("carbonwatch_up", "1 while sampling is healthy.", labels=["node"])
        up.add_metric([self.node], 1.0 if health.up else 0.0)
        yield up


def render(collector: DaemonCollector) -> bytes:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    return generate_latest(registry)
