"""Devices: each device's power over time with its idle baseline, and its health."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from dash import Dash, Output, html

from carbonwatch.dashboard import data
from carbonwatch.dashboard import figures as fig
from carbonwatch.dashboard.components import card, graph, guarded, table
from carbonwatch.dashboard.pages import SHELL_INPUTS

if TYPE_CHECKING:
    from carbonwatch.dashboard.app import Context


def layout() -> html.Div:
    return html.Div([html.Div(html.H1("Devices"), className="cw-page-head"),
                     html.Div(id="devices-body")])


def register(app: Dash, ctx: Context) -> None:
    @app.callback(Output("devices-body", "children"), *SHELL_INPUTS)
    @guarded()
    def render(_n: int | None, range_key: str, zone: str | None) -> Any:
        return body(data.devices(ctx.db_path, range_key or "all", zone))


def body(view: data.DevicesView) -> list[Any]:
    rows = []
    for d in view.devices:
        health = view.health(d)
        baseline = d.idle_baseline_w
        mean = d.energy_j / (d.minutes_seen * 60) if d.minutes_seen else None
        rows.append((
            d.device_id, d.device_class.upper(),
            "—" if mean is None else f"{mean:,.0f} W",
            "—" if baseline is None else f"{baseline:,.0f} W",
            f"{max(d.power_w, default=0):,.0f} W", fig.fmt_energy(d.energy_j),
            "estimated" if d.energy_j and d.estimated_j / d.energy_j > 0.5 else "measured",
            fig.when(d.last_seen_s),
            html.Span(health, className="cw-ok" if health == "ok" else "cw-bad"),
        ))
    return [
        card("Power per device (dotted: idle baseline)",
             graph("devices-power", fig.devices_figure(view), 420),
             note="Mean power over each bucket's reported minutes, from the attributed energy "
                  "(energy / 60 s per minute). The idle baseline is the part below which a "
                  "device draws with nothing running; it is never billed to a job."),
        card("Health", table(("Device", "Class", "Mean", "Idle baseline", "Peak (bucket)",
                              "Energy", "Source", "Last reading", "Health"), rows,
                             "devices-health")),
    ]
