"""Fleet: every node through Prometheus: totals per node with stale nodes marked, training against
inference, and per model. Shown when the dashboard runs with ``--prometheus URL``."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from dash import Dash, Output, html

from carbonwatch.dashboard import data
from carbonwatch.dashboard import figures as fig
from carbonwatch.dashboard.components import card, graph, guarded, kpi
from carbonwatch.dashboard.pages import SHELL_INPUTS
from carbonwatch.fleet import FleetTotal

if TYPE_CHECKING:
    from carbonwatch.dashboard.app import Context


def layout() -> html.Div:
    return html.Div([html.Div(html.H1("Fleet"), className="cw-page-head"),
                     html.Div(id="fleet-body")])


def register(app: Dash, ctx: Context) -> None:
    @app.callback(Output("fleet-body", "children"), *SHELL_INPUTS)
    @guarded()
    def render(_n: int | None, range_key: str, _zone: str | None) -> Any:
        assert ctx.fleet is not None  # the page is only routed to with a FleetClient
        return body(data.fleet(ctx.fleet, range_key or "all"))


def _raw(t: FleetTotal | None) -> dict[str, str]:
    """Unrounded figures as data attributes, for checking the page against Prometheus."""
    if t is None:
        return {}
    out = {"data-energy-j": repr(t.energy_j), "data-co2e-g": repr(t.co2e_g)}
    if t.cost is not None:
        out["data-cost"] = repr(t.cost)
    if t.calls is not None:
        out["data-calls"] = repr(t.calls)
    return out


def _money(t: FleetTotal | None) -> str:
    if t is None or t.cost is None:
        return "mixed currencies" if t is not None and t.currency == "mixed" else "unknown"
    return fig.fmt_money(t.cost, t.currency or "")


def body(view: data.FleetView) -> list[Any]:
    w = view.whole
    stale = view.stale
    kpis = html.Div([
        kpi("Fleet emissions", fig.fmt_mass(w.co2e_g if w else 0.0),
            f"{fig.fmt_energy(w.energy_j if w else 0.0)} · {_money(w)}", "", "kpi-fleet-co2e"),
        kpi("Training", fig.fmt_mass(view.totals["training"]["co2e_g"]),
            fig.fmt_energy(view.totals["training"]["energy_j"]), "cw-training"),
        kpi("Inference", fig.fmt_mass(view.totals["inference"]["co2e_g"]),
            f"{fig.fmt_energy(view.totals['inference']['energy_j'])} · "
            f"{(w.calls or 0) if w else 0:,.0f} calls", "cw-inference"),
        kpi("Nodes", f"{len(view.nodes)}", f"{len(stale)} stale" if stale else "all current",
            "cw-alert" if stale else "cw-good", "kpi-fleet-nodes"),
    ], className="cw-kpis", id="fleet-kpis", **_raw(w))
    if view.window_s is None:
        scope = ("Cumulative since each node's store began; a stale node counts at its last "
                 "scrape.")
    else:
        label = dict((k, name) for k, name, _ in data.RANGES)[view.range_key]
        scope = f"{label}: the increase Prometheus saw, reset-safe."
    return [
        kpis,
        html.P(f"Prometheus at {view.url} · as of {fig.when(view.at_s)} · {scope}",
               className="cw-range-text", id="fleet-range-text"),
        card("Training against inference, whole fleet",
             graph("fleet-phases", fig.phase_totals_figure(
                 view.totals, view.currency, view.cost_known), 300),
             note="Idle: devices' baseline power, kept apart from every job. Other: active energy "
                  "no known process claimed."),
        card("Nodes", _nodes_table(view),
             note="Stale: Prometheus has no current figures from the node (scrape failing, gone "
                  "from discovery, or its sampler stopped). Its last values still count."),
        card("Models", _models_table(view),
             note="Per model across the fleet; jobs without a model and idle power are left out."),
    ]


def _nodes_table(view: data.FleetView) -> html.Table:
    rows = []
    for n in view.nodes:
        s, t = n.status, n.total
        health = (html.Span(f"stale: {s.reason}", className="cw-stale") if s.stale
                  else html.Span("ok", className="cw-ok"))
        seen = "—" if s.age_s is None else f"{s.age_s:,.0f} s ago"
        rows.append(html.Tr([
            html.Td(s.node), html.Td(health), html.Td(seen, title=fig.when(s.last_seen_s)),
            html.Td(fig.fmt_energy(t.energy_j) if t else "—"),
            html.Td(fig.fmt_mass(t.co2e_g) if t else "—"),
            html.Td(_money(t) if t else "—"),
            html.Td(f"{t.calls:,.0f}" if t and t.calls is not None else "—"),
        ], className="cw-stale-row" if s.stale else "",
            **{"data-node": s.node, "data-stale": "true" if s.stale else "false"}, **_raw(t)))
    header = ("Node", "Status", "Last sample", "Energy", "Emissions", "Cost", "Calls")
    return html.Table([html.Thead(html.Tr([html.Th(h) for h in header])), html.Tbody(rows)],
                      className="cw-table", id="fleet-nodes")


def _models_table(view: data.FleetView) -> html.Table:
    rows = []
    for m in view.models:
        inference_g = m.metric("inference", "co2e_g")
        rows.append(html.Tr([
            html.Td(m.model),
            html.Td(fig.fmt_mass(m.metric("training", "co2e_g"))),
            html.Td(fig.fmt_energy(m.metric("training", "energy_j"))),
            html.Td(fig.fmt_mass(inference_g)),
            html.Td(fig.fmt_energy(m.metric("inference", "energy_j"))),
            html.Td(f"{m.calls:,.0f}"),
            html.Td(f"{inference_g / m.calls * 1000:,.3f} g" if m.calls else "—"),
            html.Td(fig.ratio(inference_g, m.metric("training", "co2e_g"))),
        ], **{"data-model": m.model}))
    header = ("Model", "Training CO2e", "Training energy", "Inference CO2e", "Inference energy",
              "Calls", "CO2e / 1,000 calls", "Inference ÷ training")
    return html.Table([html.Thead(html.Tr([html.Th(h) for h in header])), html.Tbody(rows)],
                      className="cw-table", id="fleet-models")
