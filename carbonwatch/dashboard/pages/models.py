"""Models: per model, training runs against inference calls, energy and gCO2e per 1,000 calls,
and how those moved over time."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from dash import Dash, Input, Output, State, dash_table, dcc, html

from carbonwatch.dashboard import data
from carbonwatch.dashboard import figures as fig
from carbonwatch.dashboard.components import FONT, card, graph, guarded, table
from carbonwatch.dashboard.data.payback import model_payback
from carbonwatch.dashboard.pages import SHELL_INPUTS
from carbonwatch.model import J_PER_KWH

if TYPE_CHECKING:
    from carbonwatch.dashboard.app import Context

COLUMNS = [
    ("model", "Model", "text"),
    ("training_runs", "Training runs", "numeric"),
    ("training_kg", "Training kg CO2e", "numeric"),
    ("training_kwh", "Training kWh", "numeric"),
    ("calls", "Calls", "numeric"),
    ("inference_kg", "Inference kg CO2e", "numeric"),
    ("inference_kwh", "Inference kWh", "numeric"),
    ("g_per_1000", "g CO2e / 1,000 calls", "numeric"),
    ("wh_per_1000", "Wh / 1,000 calls", "numeric"),
    ("cost_per_1000", "Cost / 1,000 calls", "numeric"),
    ("tokens_out", "Output tokens", "numeric"),
    ("j_per_output_token", "J / output token", "numeric"),
    ("j_per_token", "J / token (in + out)", "numeric"),
    ("g_per_1k_output_tokens", "g CO2e / 1,000 output tokens", "numeric"),
    ("ratio", "Inference ÷ training", "numeric"),
]


def layout() -> html.Div:
    return html.Div([
        html.Div(html.H1("Models"), className="cw-page-head"),
        html.Div(id="models-message"),
        card("All models in the range", dash_table.DataTable(
            id="models-table", columns=[{"name": n, "id": i, "type": t} for i, n, t in COLUMNS],
            data=[], sort_action="native", filter_action="native", page_size=20,
            style_table={"overflowX": "auto"}, style_cell={"fontFamily": FONT,
                                                          "padding": "4px 8px"},
            style_header={"fontWeight": "600", "whiteSpace": "normal", "height": "auto"},
            style_cell_conditional=[{"if": {"column_id": "model"}, "textAlign": "left"}]),
            note="Per 1,000 calls: everything the model's serving jobs drew (between calls "
                 "included), divided by the calls. Idle device power is not in it. Per token: "
                 "the same energy, for the calls that reported output tokens, divided by their "
                 "tokens; empty where no call reported tokens."),
        html.Div([html.Label("Model ", htmlFor="models-model"),
                  dcc.Dropdown(id="models-model", options=[], value=None, clearable=False)],
                 className="cw-model-pick"),
        html.Div(id="models-detail"),
    ])


def register(app: Dash, ctx: Context) -> None:
    @app.callback(
        Output("models-table", "data"), Output("models-model", "options"),
        Output("models-model", "value"), Output("models-message", "children"),
        *SHELL_INPUTS, State("models-model", "value"),
    )
    @guarded(on_error=lambda div, _exc: ([], [], None, div))
    def summary(_n: int | None, range_key: str, zone: str | None, current: str | None
                ) -> tuple[list[dict[str, Any]], list[str], str | None, Any]:
        view = data.models(ctx.db_path, range_key or "all", zone)
        rows = [_row(r) for r in view.rows]
        names = [r.model for r in view.rows]
        value = current if current in names else (names[0] if names else None)
        return rows, names, value, None

    @app.callback(Output("models-detail", "children"), Input("models-model", "value"),
                  *SHELL_INPUTS)
    @guarded()
    def detail(model: str | None, _n: int | None, range_key: str, zone: str | None) -> Any:
        if not model:
            return None
        trend = data.model_trend(ctx.db_path, model, range_key or "all", zone)
        runs = [
            (html.A(r["name"], href=f"/jobs/{r['id']}"), r["status"], fig.when(r["started_s"]),
             fig.fmt_duration(r["ended_s"] - r["started_s"] if r["ended_s"] else None),
             fig.fmt_energy(r["energy_j"]), fig.fmt_mass(r["co2e_g"]))
            for r in trend.training_runs
        ]
        return [
            _payback_card(model, model_payback(ctx.db_path, model, ctx.settings)),
            card(f"{model}: inference over time",
                 graph("models-trend", fig.model_trend_figure(trend, ctx.currency), 340)),
            card(f"{model}: training runs", table(
                ("Run", "Status", "Started", "Duration", "Energy", "Emissions"), runs,
                "models-runs") if runs else html.P("No training runs recorded for this model.")),
        ]


def _payback_card(model: str, pay: dict[str, Any] | None) -> Any:
    if pay is None:
        return None

    def g(value: float | None) -> str:
        return "unknown" if value is None else fig.fmt_mass(value)

    emb = pay["training_embodied_co2e_g"]
    rows = [
        ("Training, operational", g(pay["training_operational_co2e_g"])),
        ("Training, embodied (hardware manufacture)", g(emb)),
        ("Training in all", g(pay["training_co2e_g"])),
        ("Inference per 1,000 calls (operational + embodied)",
         g(pay["inference_co2e_g_per_1k_calls"])),
        ("Inference per 1,000 output tokens", g(pay["inference_co2e_g_per_1k_output_tokens"])),
        ("Inference overtook training", pay["inference_overtook_training_at"] or "not yet"),
        ("Calls to pay training back", f"{pay['calls_to_pay_back']:,}"
         if pay["calls_to_pay_back"] else "—"),
    ]
    missing = pay["devices_without_figure"]
    return card(f"{model}: payback (all records)", table(("", "Value"), rows, "models-payback"),
                note=f"Embodied carbon over {pay['lifetime_years']:g} years at "
                     f"{pay['utilisation']:.0%} use"
                     + (f"; unknown for {', '.join(missing)} (no sourced figure)"
                        if missing else "") + ".")


def _row(r: data.ModelRow) -> dict[str, Any]:
    def per(metric: str, scale: float) -> float | None:
        v = r.per_1000_calls(metric)
        return None if v is None else round(v / scale, 4)

    train, inf = r.training["co2e_g"], r.inference["co2e_g"]
    tok = r.per_token()

    def rounded(value: float | None, digits: int) -> float | None:
        return None if value is None else float(f"{value:.{digits}g}")  # significant digits

    return {
        "model": r.model, "training_runs": r.training_runs,
        "training_kg": round(train / 1000, 3),
        "training_kwh": round(r.training["energy_j"] / J_PER_KWH, 3),
        "calls": r.calls, "inference_kg": round(inf / 1000, 3),
        "inference_kwh": round(r.inference["energy_j"] / J_PER_KWH, 3),
        "g_per_1000": per("co2e_g", 1), "wh_per_1000": per("energy_j", 3600),
        "cost_per_1000": per("cost", 1), "ratio": round(inf / train, 3) if train else None,
        "tokens_out": tok["tokens_out"] if tok["token_calls"] else None,
        "j_per_output_token": rounded(tok["energy_j_per_output_token"], 4),
        "j_per_token": rounded(tok["energy_j_per_token"], 4),
        "g_per_1k_output_tokens": rounded(tok["co2e_g_per_1k_output_tokens"], 4),
    }
