"""Overview: training against inference for the range, cumulative curves per model with the
point where inference overtook training, the idle share, and where the figures come from."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from dash import Dash, Input, Output, dcc, html

from carbonwatch.dashboard import data
from carbonwatch.dashboard import figures as fig
from carbonwatch.dashboard.components import card, graph, guarded, kpi
from carbonwatch.dashboard.pages import SHELL_INPUTS

if TYPE_CHECKING:
    from carbonwatch.dashboard.app import Context

METRIC_OPTIONS = [{"label": "gCO2e", "value": "co2e_g"}, {"label": "Energy", "value": "energy_j"},
                  {"label": "Cost", "value": "cost"}]


def layout() -> html.Div:
    return html.Div([
        html.Div([html.H1("Overview"),
                  html.Div(["Cumulative curves in ",
                            dcc.RadioItems(id="overview-metric", options=METRIC_OPTIONS,
                                           value="co2e_g", inline=True, className="cw-segmented")],
                           className="cw-page-controls")], className="cw-page-head"),
        html.Div(id="overview-body"),
    ])


def register(app: Dash, ctx: Context) -> None:
    @app.callback(Output("overview-body", "children"), *SHELL_INPUTS,
                  Input("overview-metric", "value"))
    @guarded()
    def render(_n: int | None, range_key: str, zone: str | None, metric: str) -> Any:
        ov = data.overview(ctx.db_path, range_key or "all", zone, metric or "co2e_g")
        return body(ov, ctx.currency)


def body(ov: data.Overview, currency: str) -> list[Any]:
    t = ov.totals
    idle = ov.idle_share
    measured = ov.energy_by_provenance.get("measured", 0.0) / (ov.total_energy_j or 1.0)
    kpis = html.Div([
        kpi("Training", fig.fmt_mass(t["training"]["co2e_g"]),
            f"{fig.fmt_energy(t['training']['energy_j'])} · "
            f"{fig.fmt_money(t['training']['cost'], currency, ov.cost_known)}",
            "cw-training", "kpi-training"),
        kpi("Inference", fig.fmt_mass(t["inference"]["co2e_g"]),
            f"{fig.fmt_energy(t['inference']['energy_j'])} · "
            f"{fig.fmt_money(t['inference']['cost'], currency, ov.cost_known)} · "
            f"{ov.calls:,} calls", "cw-inference", "kpi-inference"),
        kpi("Inference ÷ training", fig.ratio(t["inference"]["co2e_g"], t["training"]["co2e_g"]),
            "of gCO2e in this range"),
        kpi("Idle share", "—" if idle is None else f"{idle:.1%}",
            f"{fig.fmt_energy(t['idle']['energy_j'])} of devices idling", "cw-idle", "kpi-idle"),
        kpi("Measured", f"{measured:.1%}", "of energy from hardware counters; rest estimated",
            "", "kpi-measured"),
    ], className="cw-kpis")
    shown = len(ov.curves)
    note = (f"The {shown} largest of {ov.models} models; all are on the Models page. "
            if ov.models > shown else "")
    provenance_lines = [
        html.Li(f"{cls.upper()}: {fig.fmt_energy(j)} {prov}")
        for (cls, prov), j in sorted(ov.energy_by_class.items())
    ]
    return [
        kpis,
        html.P(f"{fig.when(ov.window.start_s)} → {fig.when(ov.window.end_s)}"
               + (f" · zone {ov.zone}" if ov.zone else ""), className="cw-range-text",
               id="overview-range-text"),
        html.Div([
            card("Training against inference", graph("overview-totals",
                                                     fig.totals_figure(ov, currency), 300),
                 note="Idle: devices' baseline power, kept apart from every job. Other: active "
                      "energy no known process claimed."),
            card("Where the energy went", graph("overview-phases", fig.phase_share_figure(ov),
                                                300)),
        ], className="cw-grid-2"),
        card("Cumulative per model: training (solid) and inference (dashed)",
             graph("overview-cumulative", fig.cumulative_figure(ov, currency), 380),
             note=note + "★ marks where a model's inference overtook its training in this range."),
        card("Provenance", graph("overview-provenance", fig.provenance_figure(ov), 150),
             html.Ul(provenance_lines, className="cw-provenance"),
             note="Measured: the GPU's energy counter or RAPL. Estimated: a power model (CPU "
                  "TDP, RAM) or integrated power samples. Carbon uses the intensity of each "
                  "minute's zone and time: actual where known, else forecast, else a static "
                  "average."),
    ]
