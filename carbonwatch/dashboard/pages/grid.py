"""Grid and schedule: carbon intensity per zone (history and the latest forecast), the deferred
jobs' planned and executed windows on top, and the savings they realised."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from dash import Dash, Output, html

from carbonwatch.dashboard import data
from carbonwatch.dashboard import figures as fig
from carbonwatch.dashboard.components import card, graph, guarded, kpi, table
from carbonwatch.dashboard.pages import SHELL_INPUTS

if TYPE_CHECKING:
    from carbonwatch.dashboard.app import Context


def layout() -> html.Div:
    return html.Div([html.Div(html.H1("Grid & schedule"), className="cw-page-head"),
                     html.Div(id="grid-body")])


def register(app: Dash, ctx: Context) -> None:
    @app.callback(Output("grid-body", "children"), *SHELL_INPUTS)
    @guarded()
    def render(_n: int | None, range_key: str, zone: str | None) -> Any:
        return body(data.grid(ctx.db_path, range_key or "all", zone))


def body(view: data.GridView) -> list[Any]:
    realised_pct = (view.realised_saving_g / view.realised_baseline_g
                    if view.realised_baseline_g else None)
    fetched = [s.forecast_fetched_at_s for s in view.zones if s.forecast_fetched_at_s]
    rows = []
    for d in view.deferred:
        plan = ", ".join(f"{fig.when(a)} → {fig.when(b)}" for a, b in d["plan"]) or "—"
        ran = d["executed"][0][0] if d["executed"] else None
        saving = d["planned_saving_fraction"]
        realised = (d["realised_baseline_co2e_g"] - d["realised_co2e_g"]
                    if d["realised_co2e_g"] is not None
                    and d["realised_baseline_co2e_g"] is not None else None)
        rows.append((
            d["name"], d["status"], d["zone"] or "—", fig.when(d["deadline_s"]), plan,
            html.A(fig.when(ran), href=f"/jobs/{d['job_id']}") if d["job_id"] and ran
            else fig.when(ran),
            "—" if saving is None else f"{saving:.0%}" + (
                "" if d["saving_band_fraction"] is None
                else f" ± {d['saving_band_fraction']:.0%}"),
            "—" if realised is None else fig.fmt_mass(realised),
        ))
    return [
        html.Div([
            kpi("Realised saving", fig.fmt_mass(view.realised_saving_g),
                "—" if realised_pct is None else
                f"{abs(realised_pct):.0%} {'less' if realised_pct >= 0 else 'more'} than "
                "running at submit time", "cw-good", "kpi-realised"),
            kpi("Planned saving ahead", fig.fmt_mass(view.planned_saving_g),
                "queued jobs, on the forecast"),
            kpi("Deferred jobs", str(len(view.deferred)),
                f"{sum(d['status'] == 'queued' for d in view.deferred)} queued"),
            kpi("Forecast fetched", fig.when(max(fetched)) if fetched else "—"),
        ], className="cw-kpis"),
        card("Carbon intensity: history (solid) and forecast (dotted)",
             graph("grid-intensity", fig.grid_figure(view), 380),
             note="Green bands: planned windows of deferred jobs. Blue strip along the bottom: "
                  "when they ran."),
        card("Deferred jobs", table(("Job", "Status", "Zone", "Deadline", "Planned window",
                                     "Ran", "Planned saving (± forecast error)", "Realised saving"),
                                    rows,
                                    "grid-deferred") if rows
             else html.P("No deferred jobs. Submit one with carbonwatch submit.")),
    ]
