"""Fleet figures read from Prometheus: totals per node, model, phase (training against inference),
device or job, and which nodes are stale.

    fleet = FleetClient("http://prometheus:9090")
    for t in fleet.totals(group_by=("phase",)):
        print(t.group["phase"], t.energy_j, t.co2e_g, t.cost, t.currency)
    stale = [n.node for n in fleet.nodes() if n.stale]
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import carbonwatch.fleet.queries as q
from carbonwatch.fleet.promql import FleetError, PrometheusClient, quote
from carbonwatch.model import J_PER_KWH

MAX_LAST_SEEN_LOOKUPS = 20  # stale nodes whose last-seen time is looked up one by one


@dataclass(frozen=True)
class FleetTotal:
    """One group's totals. ``group`` maps each group_by name to its value, '' where the series had
    none (idle and other energy, and jobs folded after they ended, have no job_id or model).
    ``cost`` is None when no node prices its energy, or when the group mixes currencies
    (``currency`` "mixed")."""

    group: Mapping[str, str]
    energy_j: float
    co2e_g: float
    cost: float | None
    currency: str | None
    calls: float | None = None  # inference calls, when grouped by node and/or model only

    @property
    def energy_kwh(self) -> float:
        return self.energy_j / J_PER_KWH

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "group": dict(self.group), "energy_kwh": self.energy_kwh}


@dataclass(frozen=True)
class NodeStatus:
    """A node seen within the lookback. ``stale``: its figures are not current (``reason`` says
    why); its last values still count in :meth:`FleetClient.totals` unless told otherwise."""

    node: str
    instance: str
    scrape_up: bool | None  # Prometheus's ``up``; None when the target left service discovery
    sampling_ok: bool | None  # the daemon's own ``carbonwatch_up``, last reported
    last_seen_s: float | None
    age_s: float | None
    stale: bool
    reason: str
    current: bool = True  # Prometheus has a current sample of it (its series count as they are)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


# (values of the group labels, currency ('' but for cost), value)
Rows = list[tuple[tuple[str, ...], str, float]]


class FleetClient:
    """Reads fleet totals and node health from Prometheus's HTTP API.

    ``lookback_s``: how far back a node that stopped answering is still shown (and counted at its
    last values). ``stale_after_s``: a node whose latest sample is older than this is stale."""

    def __init__(
        self,
        base_url: str,
        *,
        timeout_s: float = 10.0,
        headers: Mapping[str, str] | None = None,
        lookback_s: float = 3600.0,
        stale_after_s: float = 120.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.prometheus = PrometheusClient(base_url, timeout_s=timeout_s, headers=headers)
        self.lookback_s = lookback_s
        self.stale_after_s = stale_after_s
        self.clock = clock

    # --- totals ------------------------------------------------------------------------------

    def totals(
        self,
        group_by: str | Sequence[str] = ("node",),
        *,
        window_s: float | None = None,
        at_s: float | None = None,
        include_stale: bool = True,
        nodes: Sequence[NodeStatus] | None = None,
    ) -> list[FleetTotal]:
        """Energy, emissions, cost (and calls) per group, largest energy first.

        ``group_by``: any of node, model, phase, device, job_id, job_name (a name or a sequence;
        () for the whole fleet). ``window_s``: over the last ``window_s`` seconds (reset-safe
        increase); else cumulative since each node's store began. ``include_stale``: keep nodes
        that stopped answering at their last values (cumulative totals only). ``nodes``: what
        :meth:`nodes` returned for the same ``at_s``, to save asking again."""
        names = (group_by,) if isinstance(group_by, str) else tuple(group_by)
        by = q.group_labels(names)
        now_s = self.clock() if at_s is None else at_s
        if window_s is None:
            frozen: dict[str, float | None] = {}
            if include_stale:
                for n in self.nodes(at_s=now_s) if nodes is None else nodes:
                    if not n.current:
                        frozen[n.node] = n.last_seen_s

            def fetch(metric: str, by: Sequence[str]) -> Rows:
                expr = q.counter_total(metric, by, frozen=frozen, lookback_s=self.lookback_s)
                return self._rows(expr, by, now_s)
        else:

            def fetch(metric: str, by: Sequence[str]) -> Rows:
                return self._window(metric, by, window_s, now_s)

        energy = {k: v for k, _, v in fetch(q.ENERGY, by)}
        carbon = {k: v for k, _, v in fetch(q.EMISSIONS, by)}
        money: dict[tuple[str, ...], dict[str, float]] = {}
        for key, currency, value in fetch(q.COST, by):
            money.setdefault(key, {})[currency] = value
        calls = None
        if set(by) <= {"node", "model"}:  # the calls counter carries only these labels
            calls = {k: v for k, _, v in fetch(q.CALLS, by)}
        out = []
        for key in sorted(energy.keys() | carbon.keys(), key=lambda k: -energy.get(k, 0.0)):
            cost, currency = _one_currency(money.get(key, {}).items())
            out.append(
                FleetTotal(
                    group=dict(zip(names, key, strict=True)),
                    energy_j=energy.get(key, 0.0),
                    co2e_g=carbon.get(key, 0.0),
                    cost=cost,
                    currency=currency,
                    calls=None if calls is None else calls.get(key, 0.0),
                )
            )
        return out

    def _rows(self, expr: str, by: Sequence[str], at_s: float) -> Rows:
        return [
            (tuple(s.labels.get(b, "") for b in by), s.labels.get("currency", ""), s.value)
            for s in self.prometheus.query(expr, at_s)
        ]

    def _window(self, metric: str, by: Sequence[str], window_s: float, at_s: float) -> Rows:
        """Window totals. Grouped by a job label: each job's own series' increase, and for
        job_id="" what the jobs leave of the per-(node, device, model, phase) total's increase
        (idle, other, and jobs whose series were folded or began within the window)."""
        rest = tuple(b for b in by if b not in q.JOB_LABELS)
        totals = self._rows(q.window_total(metric, rest, window_s), rest, at_s)
        if len(rest) == len(by):
            return totals
        jobs = self._rows(q.window_jobs(metric, by, window_s), by, at_s)
        left: dict[tuple[tuple[str, ...], str], float] = {(k, c): v for k, c, v in totals}
        at = [by.index(b) for b in rest]
        out: Rows = []
        for key, currency, value in jobs:
            if any(key[by.index(j)] for j in q.JOB_LABELS if j in by):
                sub = (tuple(key[i] for i in at), currency)
                left[sub] = left.get(sub, 0.0) - value
                out.append((key, currency, value))
        whole = {(k, c): v for k, c, v in totals}
        for (sub, currency), value in left.items():
            if value <= 1e-9 * abs(whole.get((sub, currency), 0.0)):
                continue  # the jobs account for all of it (up to rounding)
            values = dict(zip(rest, sub, strict=True))
            out.append((tuple(values.get(b, "") for b in by), currency, value))
        return out

    # --- nodes -------------------------------------------------------------------------------

    def nodes(self, *, at_s: float | None = None) -> list[NodeStatus]:
        """Every node seen within the lookback, stale ones marked, sorted by name."""
        now_s = self.clock() if at_s is None else at_s
        lb = self.lookback_s
        known = {_key(s.labels): s.value for s in self.prometheus.query(q.node_known(lb), now_s)}
        seen = {_key(s.labels): s.value for s in self.prometheus.query(q.node_last_sample(), now_s)}
        scrape = {
            _key(s.labels): s.value for s in self.prometheus.query(q.node_scrape_up(lb), now_s)
        }
        best: dict[str, NodeStatus] = {}
        lookups = 0
        for (node, instance), healthy in known.items():
            last_s = seen.get((node, instance))
            if last_s is None and lookups < MAX_LAST_SEEN_LOOKUPS:
                lookups += 1
                last_s = self._last_seen(node, instance, now_s)
            status = self._status(
                node,
                instance,
                scrape.get((node, instance)),
                healthy,
                last_s,
                now_s,
                fresh_series=(node, instance) in seen,
            )
            current = best.get(node)
            # A node restarted under another instance: the newest instance speaks for it.
            if current is None or (status.last_seen_s or 0) > (current.last_seen_s or 0):
                best[node] = status
        return [best[n] for n in sorted(best)]

    def _last_seen(self, node: str, instance: str, now_s: float) -> float | None:
        try:
            series = self.prometheus.query_range_vector(
                q.node_samples(quote(node), self.lookback_s), now_s
            )
        except FleetError:
            return None
        times = [t for s in series if s.labels.get("instance") == instance for t, _ in s.points]
        return max(times) if times else None

    def _status(
        self,
        node: str,
        instance: str,
        up: float | None,
        healthy: float,
        last_s: float | None,
        now_s: float,
        *,
        fresh_series: bool,
    ) -> NodeStatus:
        age = None if last_s is None else max(0.0, now_s - last_s)
        if up == 0:
            reason = "scrape failing (up == 0)"
        elif up is None:
            reason = "target gone from service discovery"
        elif not fresh_series:
            reason = "no current sample"
        elif age is not None and age > self.stale_after_s:
            reason = f"last sample {age:.0f} s old"
        elif healthy == 0:
            reason = "sampling stopped or stuck (carbonwatch_up == 0)"
        else:
            reason = ""
        return NodeStatus(
            node=node,
            instance=instance,
            scrape_up=None if up is None else up == 1,
            sampling_ok=healthy == 1,
            last_seen_s=last_s,
            age_s=age,
            stale=bool(reason),
            reason=reason,
            current=fresh_series,
        )


def _key(labels: Mapping[str, str]) -> tuple[str, str]:
    return labels.get("node", ""), labels.get("instance", "")


def _one_currency(items: Iterable[tuple[str, float]]) -> tuple[float | None, str | None]:
    pairs = [(c, v) for c, v in items]
    if not pairs:
        return None, None
    if len(pairs) > 1:
        return None, "mixed"
    return pairs[0][1], pairs[0][0]
