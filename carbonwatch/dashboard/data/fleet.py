"""The fleet view: every node's daemon through Prometheus (``carbonwatch.fleet.FleetClient``),
per node with stale nodes marked, per model, and training against inference.

"All recorded" is the cumulative total (a stale node counted at its last scrape); a shorter range
is the reset-safe increase over that many seconds up to now. Every figure of one view is read at
one instant, so the page's parts add up."""

from __future__ import annotations

from dataclasses import dataclass, field

from carbonwatch.dashboard.data.common import METRICS, PHASES, RANGES
from carbonwatch.dashboard.reader import DataUnavailable
from carbonwatch.fleet import FleetClient, FleetError, FleetTotal, NodeStatus


@dataclass(frozen=True)
class FleetNode:
    status: NodeStatus
    total: FleetTotal | None  # None: nothing in the range


@dataclass(frozen=True)
class FleetModel:
    model: str
    by_phase: dict[str, FleetTotal] = field(default_factory=dict)
    calls: float = 0.0

    def metric(self, phase: str, metric: str) -> float:
        total = self.by_phase.get(phase)
        return 0.0 if total is None else _value(total, metric)


@dataclass(frozen=True)
class FleetView:
    url: str
    range_key: str
    window_s: int | None  # None: cumulative, all recorded
    at_s: float
    nodes: list[FleetNode]
    models: list[FleetModel]
    totals: dict[str, dict[str, float]]  # phase -> metric -> value (money: 0 when unknown)
    whole: FleetTotal | None
    cost_known: bool
    currency: str

    @property
    def stale(self) -> list[FleetNode]:
        return [n for n in self.nodes if n.status.stale]


def fleet(client: FleetClient, range_key: str, at_s: float | None = None) -> FleetView:
    """Everything the Fleet page shows, read from Prometheus at one instant."""
    seconds = dict((k, s) for k, _, s in RANGES).get(range_key)
    at_s = client.clock() if at_s is None else at_s
    try:
        statuses = client.nodes(at_s=at_s)

        def totals(group_by: str | tuple[str, ...]) -> list[FleetTotal]:
            return client.totals(group_by, window_s=seconds, at_s=at_s, nodes=statuses)

        by_node = {t.group["node"]: t for t in totals("node")}
        by_phase = totals("phase")
        by_model_phase = totals(("model", "phase"))
        calls = {t.group["model"]: t.calls or 0.0 for t in totals("model")}
        whole = totals(())
    except FleetError as exc:
        raise DataUnavailable(
            "Prometheus unavailable", str(exc),
            "The fleet figures come from Prometheus's HTTP API (--prometheus URL); this page "
            "retries at the next refresh.", kind="fleet",
        ) from exc
    nodes = [FleetNode(s, by_node.pop(s.node, None)) for s in statuses]
    models: dict[str, FleetModel] = {}
    for t in by_model_phase:
        name = t.group["model"]
        m = models.setdefault(name, FleetModel(name, calls=calls.get(name, 0.0)))
        m.by_phase[t.group["phase"]] = t
    phase_totals = {p: dict.fromkeys(METRICS, 0.0) for p in PHASES}
    for t in by_phase:
        acc = phase_totals.setdefault(t.group["phase"], dict.fromkeys(METRICS, 0.0))
        for metric in METRICS:
            acc[metric] += _value(t, metric)
    currencies = {t.currency for t in by_phase if t.currency is not None}
    return FleetView(
        url=client.prometheus.base_url, range_key=range_key, window_s=seconds, at_s=at_s,
        nodes=nodes,
        models=sorted((m for m in models.values() if m.model),
                      key=lambda m: -sum(_value(t, "co2e_g") for t in m.by_phase.values())),
        totals=phase_totals, whole=whole[0] if whole else None,
        cost_known=len(currencies) == 1 and "mixed" not in currencies,
        currency=next(iter(currencies)) if len(currencies) == 1 else "",
    )


def _value(t: FleetTotal, metric: str) -> float:
    if metric == "cost":
        return t.cost or 0.0
    return t.energy_j if metric == "energy_j" else t.co2e_g
