"""Prometheus ``/metrics``: a custom collector over in-memory totals (prometheus/client_python's
one-method Collector protocol).

The totals are seeded from the store at start and grow only by what the writer has committed, so
the counters equal the store, a restart continues them, and a crash at worst steps them back to
what was committed (Prometheus reads a decrease as a counter reset).

Bounded series: a job's series are labelled with its id, so every job adds series. Once a job has
ended ``retention_s`` ago its series are *folded*: each one's value is added to the series with
the same model, phase and device and ``job_id=""`` (idle and other energy live there too), and the
job's own series is no longer exported. The sum over all series never changes at a fold, and every
exported series only ever grows, so per-node, per-model and per-phase totals stay exact counters;
only the per-job detail of old jobs leaves Prometheus (the store keeps it)."""

from __future__ import annotations

import threading
from collections import OrderedDict, defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

EnergyKey = tuple[str, str, str, str, str]  # job_id, job_name, model, phase, device
ENERGY_LABELS = ("job_id", "job_name", "model", "phase", "device")
FOLDED_MEMORY = 4096  # recently folded job ids remembered, so late energy joins the fold


OTHER = "other"  # the model label of every value past the cap


class LabelCap:
    """At most ``limit`` distinct values of a label (model names): the first ones seen keep
    their name, later new ones become ``other`` and are counted. 30,000 model names once grew
    /metrics from 4 kB to 7.4 MB; the cap bounds the series, the store's rollups and memory."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._known: set[str] = set()
        self._lock = threading.Lock()
        self.refused = 0  # calls and jobs that brought a value past the cap

    def admit(self, value: str, count: int = 1) -> str:
        """``value``, taking a place if one is left; else OTHER (and ``count`` is counted)."""
        if value in self._known or value == OTHER:  # 'other' itself takes no place
            return value
        with self._lock:
            if value in self._known or len(self._known) < self.limit:
                self._known.add(value)
                return value
            self.refused += count
            return OTHER

    def count_refused(self, count: int) -> None:
        with self._lock:
            self.refused += count

    def label(self, value: str) -> str:
        """The label a value is shown under: as ``admit``, without counting a refusal (the
        value's calls or job were counted when they came in)."""
        return value if value == "" else self.admit(value, 0)


@dataclass(frozen=True)
class Health:
    """What the health gauges show, read at scrape time."""

    up: bool
    collector_errors: int
    device_power_w: Mapping[str, float]
    device_age_s: Mapping[str, float]


class MetricTotals:
    """Counter values keyed by their labels; thread-safe (the writer's callbacks add, scrapes
    read)."""

    def __init__(self, models: LabelCap | None = None) -> None:
        self.models = models or LabelCap(2**62)
        self._lock = threading.Lock()
        self._energy: dict[EnergyKey, list[float]] = defaultdict(lambda: [0.0, 0.0, 0.0])
        self._calls: dict[str, int] = defaultdict(int)
        self._tokens: dict[tuple[str, str], int] = defaultdict(int)  # (model, "in"|"out")
        self._dropped = 0
        self._rows_dropped = 0  # minute rows dropped while the store refused writes
        self._folded_calls: dict[str, int] = defaultdict(int)  # reason -> calls folded
        self._ended: dict[str, float] = {}  # job id -> ended_s, its series not folded yet
        self._folded: OrderedDict[str, None] = OrderedDict()

    def add_energy(self, items: Iterable[tuple[EnergyKey, float, float, float]]) -> None:
        """(key, energy_j, co2e_g, cost) items, after they are committed."""
        label = self.models.label
        with self._lock:
            folded = self._folded
            for key, energy_j, carbon_g, cost in items:
                if key[0] in folded:  # energy that arrived after its job was folded
                    key = ("", "", *key[2:])
                model = label(key[2])
                if model is not key[2]:
                    key = (key[0], key[1], model, key[3], key[4])
                acc = self._energy[key]
                acc[0] += energy_j
                acc[1] += carbon_g
                acc[2] += cost

    def add_calls(self, by_model: Mapping[str, int]) -> None:
        label = self.models.label
        with self._lock:
            for model, n in by_model.items():
                self._calls[label(model)] += n

    def add_tokens(self, by_model_direction: Mapping[tuple[str, str], int]) -> None:
        """Tokens of settled calls, keyed (model, "in" | "out"), after they are committed.
        Models past ``max_label_values`` show as ``other``, as their calls do (a store written
        before the cap may hold more names than it allows)."""
        label = self.models.label
        with self._lock:
            for (model, direction), n in by_model_direction.items():
                self._tokens[(label(model), direction)] += n

    def tokens(self) -> dict[tuple[str, str], int]:
        with self._lock:
            return dict(self._tokens)

    def add_dropped(self, spans: int) -> None:
        """Spans a client reported dropping before it could send them (a batch's ``dropped``)."""
        with self._lock:
            self._dropped += spans

    def add_rows_dropped(self, rows: int) -> None:
        """Minute rows dropped: the store refused writes for longer than the daemon keeps them."""
        with self._lock:
            self._rows_dropped += rows

    def add_folded_calls(self, by_reason: Mapping[str, int]) -> None:
        """Calls whose pid was set aside (no such process; the auto-registered job cap)."""
        with self._lock:
            for reason, n in by_reason.items():
                self._folded_calls[reason] += n

    def folded_calls(self) -> dict[str, int]:
        with self._lock:
            return dict(self._folded_calls)

    def rows_dropped(self) -> int:
        with self._lock:
            return self._rows_dropped

    def job_ended(self, job_id: str, ended_s: float) -> None:
        """The job's series may be folded once ``ended_s`` is older than the retention."""
        with self._lock:
            if job_id not in self._folded:
                self._ended[job_id] = ended_s

    def fold(self, ended_before_s: float) -> int:
        """Fold the series of jobs that ended before ``ended_before_s``; returns how many jobs."""
        with self._lock:
            due = {j for j, t in self._ended.items() if t < ended_before_s}
            if not due:
                return 0
            energy = self._energy
            for key in [k for k in energy if k[0] in due]:
                values = energy.pop(key)
                acc = energy[("", "", *key[2:])]
                for i, v in enumerate(values):
                    acc[i] += v
            for job_id in due:
                del self._ended[job_id]
                self._folded[job_id] = None
            while len(self._folded) > FOLDED_MEMORY:
                self._folded.popitem(last=False)
            return len(due)

    def snapshot(self) -> tuple[dict[EnergyKey, list[float]], dict[str, int], int]:
        with self._lock:
            return {k: list(v) for k, v in self._energy.items()}, dict(self._calls), self._dropped


class DaemonCollector:
    """Renders the totals and the health callback as metric families, with a ``node`` label."""

    def __init__(
        self, totals: MetricTotals, health: Callable[[], Health], node: str, currency: str | None,
        *, now: Callable[[], float] | None = None, retention_s: float = 3600.0,
    ) -> None:
        self.totals = totals
        self.health = health
        self.node = node
        self.currency = currency  # None: no price configured, so no cost counter (unknown != 0)
        self.now = now  # the clock jobs' ended_s is in; None: never fold
        self.retention_s = retention_s

    def collect(self) -> Iterator[Metric]:
        if self.now is not None:
            self.totals.fold(self.now() - self.retention_s)
        energy, calls, dropped = self.totals.snapshot()
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
        tokens = CounterMetricFamily(
            "carbonwatch_inference_tokens",
            "Tokens of settled inference calls, as their clients reported them (direction in: "
            "prompt, out: generated).", labels=["model", "direction", "node"],
        )
        for (model, direction), n in sorted(self.totals.tokens().items()):
            tokens.add_metric([model, direction, self.node], n)
        yield tokens
        lost = CounterMetricFamily(
            "carbonwatch_inference_spans_dropped",
            "Call spans clients reported dropping before sending (their buffer was full).",
            labels=["node"],
        )
        lost.add_metric([self.node], dropped)
        yield lost
        unstored = CounterMetricFamily(
            "carbonwatch_store_rows_dropped",
            "Energy minute rows dropped because the store refused writes for too long.",
            labels=["node"],
        )
        unstored.add_metric([self.node], self.totals.rows_dropped())
        yield unstored
        folded = CounterMetricFamily(
            "carbonwatch_calls_folded",
            "Calls whose pid was set aside (reason: no_such_pid, auto_job_cap) and that were "
            "attributed as if they named none.",
            labels=["reason", "node"],
        )
        for reason, n in sorted(self.totals.folded_calls().items()):
            folded.add_metric([reason, self.node], n)
        yield folded
        capped = CounterMetricFamily(
            "carbonwatch_label_values_folded",
            "Calls and jobs whose label value (a model name) came past the max_label_values "
            "cap and was shown and stored as 'other'.",
            labels=["label", "node"],
        )
        capped.add_metric(["model", self.node], self.totals.models.refused)
        yield capped

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
