"""The Dash app: the shell (navigation, range and zone, store status), routing, and each page's
callbacks, registered on the app instance (never on Dash's global registry) so several apps can
live in one process, as tests do.

Routing is a callback on ``dcc.Location`` that draws a page's skeleton; the page's own callbacks
fill it from ``data`` on every refresh tick, range or zone change. Skeletons stay put across
refreshes, so tables keep their sorting and graphs their zoom.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dash import Dash, Input, Output, dcc, html

from carbonwatch.config import Settings
from carbonwatch.dashboard import data
from carbonwatch.dashboard.components import ACCESS_CONFIG_KEY, guarded
from carbonwatch.dashboard.figures import when
from carbonwatch.dashboard.pages import devices, fleet, grid, jobs, models, overview
from carbonwatch.dashboard.style import CSS
from carbonwatch.fleet import FleetClient


@dataclass(frozen=True)
class Context:
    """What every page needs: where the store is (None: no local store), how to print money, and
    the fleet's Prometheus (None: no Fleet page)."""

    db_path: Path | None
    currency: str = "USD"
    fleet: FleetClient | None = None
    settings: Settings | None = None  # embodied carbon's lifetime and figures (Models page)


NAV = (("/", "Overview"), ("/models", "Models"), ("/jobs", "Jobs"),
       ("/grid", "Grid & schedule"), ("/devices", "Devices"))
FLEET_NAV = ("/fleet", "Fleet")


def create_app(
    db_path: str | Path | None, *, refresh_s: float = 30.0, currency: str = "USD",
    prometheus_url: str | None = None, fleet_client: FleetClient | None = None,
    access: str | None = None, settings: Settings | None = None,
) -> Dash:
    """The app over a store (``db_path``), the fleet through Prometheus (``prometheus_url``, or a
    ready ``fleet_client``), or both. Without a store the local pages say so. ``access`` says who
    may open it (the login asked, or why none is): the first-run panel shows it."""
    if fleet_client is None and prometheus_url:
        fleet_client = FleetClient(prometheus_url)
    ctx = Context(None if db_path is None else Path(db_path), currency, fleet_client, settings)
    # Styles are inlined in the page: no assets folder to ship as package data.
    app = Dash(__name__, title="carbonwatch", update_title=None,
               suppress_callback_exceptions=True, include_assets_files=False)
    app.index_string = app.index_string.replace("{%css%}", "{%css%}<style>" + CSS + "</style>")
    if access:
        app.server.config[ACCESS_CONFIG_KEY] = access
    app.layout = _shell(refresh_s, NAV + ((FLEET_NAV,) if fleet_client else ()))
    _register_shell(app, ctx)
    for page in (overview, models, jobs, grid, devices):
        page.register(app, ctx)
    if fleet_client is not None:
        fleet.register(app, ctx)
    return app


def _shell(refresh_s: float, nav: tuple[tuple[str, str], ...]) -> html.Div:
    ranges = [{"label": label, "value": key} for key, label, _ in data.RANGES]
    return html.Div([
        dcc.Location(id="url"),
        dcc.Interval(id="refresh", interval=int(refresh_s * 1000)),
        html.Header([
            html.Div([html.Span("carbonwatch", className="cw-brand"),
                      html.Nav([dcc.Link(label, href=href, className="cw-nav-link",
                                         id=f"nav-{label.split()[0].lower()}")
                                for href, label in nav])], className="cw-topbar"),
            html.Div([
                dcc.RadioItems(id="range", options=ranges, value="all", inline=True,
                               className="cw-range"),
                html.Div(dcc.Dropdown(id="zone", options=[], value=None, clearable=True,
                                      placeholder="all zones", searchable=False),
                         id="zone-box", className="cw-zone", style={"display": "none"}),
                html.Div(id="store-status", className="cw-status"),
            ], className="cw-controls"),
        ]),
        html.Main(id="page", className="cw-page"),
    ], className="cw-root")


def _register_shell(app: Dash, ctx: Context) -> None:
    @app.callback(Output("page", "children"), Input("url", "pathname"))
    def route(pathname: str | None) -> Any:
        path = (pathname or "/").rstrip("/") or "/"
        if path.startswith("/jobs/"):
            return jobs.detail_layout(path.removeprefix("/jobs/"))
        pages = {"/": overview, "/models": models, "/jobs": jobs, "/grid": grid,
                 "/devices": devices}
        if ctx.fleet is not None:
            pages["/fleet"] = fleet
        page = pages.get(path)
        if page is None:
            return html.Div([html.H3("No such page"), html.P(f"{path} is not a page here."),
                             dcc.Link("Back to the overview", href="/")],
                            className="cw-message", role="alert")
        return page.layout()

    @app.callback(
        Output("store-status", "children"), Output("zone", "options"),
        Output("zone-box", "style"),
        Input("refresh", "n_intervals"), Input("url", "pathname"),
    )
    @guarded(on_error=lambda _div, exc: (html.Span(exc.title, className="cw-bad"), [],
                                         {"display": "none"}))
    def status(_n: int | None, _path: str | None) -> tuple[Any, list[dict[str, str]], dict]:
        fleet_text = (f"fleet: Prometheus at {ctx.fleet.prometheus.base_url}"
                      if ctx.fleet is not None else "")
        if ctx.db_path is None:
            return html.Span(f"{fleet_text} · no local store"), [], {"display": "none"}
        s = data.store_status(ctx.db_path)
        text = (f"{Path(s.path).name} · read-only · schema v{s.schema_version} · "
                + (f"data {when(s.first_s)} → {when(s.end_s)}" if s.end_s else "no data yet")
                + f" · {s.jobs} jobs ({s.running} running)"
                + (f" · {fleet_text}" if fleet_text else ""))
        zones = [{"label": z or "node zone", "value": z} for z in s.zones]
        return (html.Span(text, title=s.path), zones,
                {"display": "block"} if len(s.zones) > 1 else {"display": "none"})
