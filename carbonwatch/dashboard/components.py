"""Page building blocks: messages, the first-run panel, KPI cards, graphs, and ``guarded``, which
turns any failure in a callback into a readable message in the page instead of a traceback."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Sequence
from typing import Any

import flask
from dash import dcc, html

from carbonwatch.dashboard.reader import DataUnavailable

log = logging.getLogger("carbonwatch.dashboard")

# Where create_app leaves the sentence saying who may open this dashboard (the login, or why
# none is asked): per app, in its Flask config, so several apps can live in one process.
ACCESS_CONFIG_KEY = "CARBONWATCH_ACCESS"
FONT = "system-ui, -apple-system, 'Segoe UI', sans-serif"  # DataTable cells do not inherit it
GRAPH_CONFIG = {"displaylogo": False, "responsive": True,
                "modeBarButtonsToRemove": ["lasso2d", "select2d"]}


def message(exc: DataUnavailable) -> html.Div:
    if exc.kind == "empty":
        return first_run(exc)
    return html.Div(
        [html.H3(exc.title), html.P(exc.detail),
         html.P(exc.hint, className="cw-hint") if exc.hint else None,
         dcc.Link("Open the Fleet page", href="/fleet") if exc.kind == "no-store" else None],
        className=f"cw-message cw-{exc.kind}", role="alert",
    )


def first_run(exc: DataUnavailable | None = None) -> html.Div:
    """What an empty store shows: how to start recording, not empty axes."""
    return html.Div([
        html.H3("Nothing recorded yet"),
        html.P(exc.detail if exc else "This store holds no energy readings yet."),
        html.P("Start recording in any of these ways; this page refreshes by itself."),
        html.Ol([
            html.Li(["Wrap a training job: ",
                     html.Code("carbonwatch run --kind training --model my-model -- "
                               "python train.py")]),
            html.Li(["Run the node daemon, which also measures inference services: ",
                     html.Code("carbonwatch daemon")]),
            html.Li(["Mark inference calls in the serving code: ",
                     html.Code("@carbonwatch.track_inference(model=\"my-model\")")]),
        ]),
        html.P(access_note(), className="cw-hint", id="first-run-access"),
    ], className="cw-message cw-first-run", role="status")


def access_note() -> str:
    """Who may open this dashboard, as create_app described it (callbacks run in a request of
    their app, so its Flask config is at hand)."""
    if flask.has_app_context():
        note = flask.current_app.config.get(ACCESS_CONFIG_KEY)
        if note:
            return str(note)
    return "Anyone who can reach this dashboard can read the store."


def guarded(
    on_error: Callable[[html.Div, DataUnavailable], Any] = lambda div, _exc: div,
) -> Callable:
    """Wrap a callback: a store that cannot be read, or a bug, shows a message in the page.
    ``on_error`` maps the message (and its cause) to the callback's outputs."""

    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            try:
                return fn(*args, **kwargs)
            except DataUnavailable as exc:
                return on_error(message(exc), exc)
            except Exception as exc:  # a bug must not reach the page as a traceback
                log.exception("dashboard callback %s failed", fn.__name__)
                readable = DataUnavailable(
                    "Something went wrong", f"{type(exc).__name__}: {exc}",
                    "The full error is in the dashboard's log.")
                return on_error(message(readable), readable)

        return wrapper

    return decorate


def kpi(label: str, value: str, sub: str = "", kind: str = "", kpi_id: str | None = None
        ) -> html.Div:
    return html.Div([html.Div(label, className="cw-kpi-label"),
                     html.Div(value, className="cw-kpi-value"),
                     html.Div(sub, className="cw-kpi-sub")],
                    className=f"cw-kpi {kind}", **({"id": kpi_id} if kpi_id else {}))


def graph(graph_id: str, figure: dict[str, Any], height: int | None = None) -> dcc.Graph:
    # No style at all rather than style=None: dcc.Graph reads style.height and fails on null.
    extra = {"style": {"height": f"{height}px"}} if height else {}
    return dcc.Graph(id=graph_id, figure=figure, config=GRAPH_CONFIG, **extra)


def card(title: str, *children: Any, note: str | None = None) -> html.Section:
    return html.Section([html.H2(title), *children,
                         html.P(note, className="cw-note") if note else None], className="cw-card")


def table(header: Sequence[str], rows: Sequence[Sequence[Any]], table_id: str | None = None
          ) -> html.Table:
    return html.Table(
        [html.Thead(html.Tr([html.Th(h) for h in header])),
         html.Tbody([html.Tr([html.Td(c) for c in r]) for r in rows])],
        className="cw-table", **({"id": table_id} if table_id else {}))
