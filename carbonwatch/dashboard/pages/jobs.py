"""Jobs: a sortable, filterable table of every job, and a page per job with its power per device,
its share of the devices it shared, and where its figures come from."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from dash import Dash, Input, Output, dash_table, dcc, html

from carbonwatch.dashboard import data
from carbonwatch.dashboard import figures as fig
from carbonwatch.dashboard.components import FONT, card, first_run, graph, guarded, kpi, table
from carbonwatch.model import J_PER_KWH

if TYPE_CHECKING:
    from carbonwatch.dashboard.app import Context

COLUMNS = [
    ("name", "Job", "text", "markdown"),
    ("kind", "Kind", "text", None),
    ("model", "Model", "text", None),
    ("status", "Status", "text", None),
    ("started", "Started (UTC)", "text", None),
    ("duration_h", "Hours", "numeric", None),
    ("energy_kwh", "kWh", "numeric", None),
    ("co2e_kg", "kg CO2e", "numeric", None),
    ("cost", "Cost", "numeric", None),
    ("provenance", "Energy provenance", "text", None),
]


def layout() -> html.Div:
    return html.Div([
        html.Div(html.H1("Jobs"), className="cw-page-head"),
        html.Div(id="jobs-message"),
        card("Every job recorded", dash_table.DataTable(
            id="jobs-table",
            columns=[{"name": n, "id": i, "type": t, **({"presentation": p} if p else {})}
                     for i, n, t, p in COLUMNS],
            data=[], sort_action="native", filter_action="native", page_size=25,
            sort_by=[{"column_id": "started", "direction": "desc"}],
            markdown_options={"link_target": "_self"},
            style_table={"overflowX": "auto"},
            style_cell={"fontFamily": FONT, "padding": "4px 8px", "textAlign": "left"},
            style_header={"fontWeight": "600", "whiteSpace": "normal", "height": "auto"}),
            note="Sort by a column header; filter by typing in the row under it "
                 "(e.g. training, or > 1 in kWh). A running job shows its totals so far."),
    ])


def detail_layout(job_id: str) -> html.Div:
    return html.Div([dcc.Store(id="job-id", data=job_id), html.Div(id="job-body")])


def register(app: Dash, ctx: Context) -> None:
    @app.callback(Output("jobs-table", "data"), Output("jobs-message", "children"),
                  Input("refresh", "n_intervals"), Input("url", "pathname"))
    @guarded(on_error=lambda div, _exc: ([], div))
    def rows(_n: int | None, _path: str | None) -> tuple[list[dict[str, Any]], Any]:
        jobs = data.jobs(ctx.db_path)
        if not jobs:
            return [], first_run()
        return [_row(j) for j in jobs], None

    @app.callback(Output("job-body", "children"), Input("refresh", "n_intervals"),
                  Input("job-id", "data"))
    @guarded()
    def job(_n: int | None, job_id: str) -> Any:
        detail = data.job_detail(ctx.db_path, job_id)
        if detail is None:
            return html.Div([html.H3("No such job"), html.P(f"No job with id {job_id!r}."),
                             dcc.Link("All jobs", href="/jobs")], className="cw-message",
                            role="alert")
        return job_body(detail, ctx.currency)


def _row(j: dict[str, Any]) -> dict[str, Any]:
    ended = j["ended_s"]
    name = str(j["name"]).replace("[", "(").replace("]", ")")  # keep the markdown link intact
    energy_prov = sorted({str(v).split(" ")[0] for v in (j["provenance"].get("energy") or {})
                          .values()})
    return {
        "id": j["id"], "name": f"[{name}](/jobs/{j['id']})", "kind": j["kind"],
        "model": j["model"] or "", "status": j["status"],
        "started": fig.when(j["started_s"]).removesuffix(" UTC"),
        "duration_h": round((ended - j["started_s"]) / 3600, 2) if ended else None,
        "energy_kwh": round(j["energy_j"] / J_PER_KWH, 4), "co2e_kg": round(j["co2e_g"] / 1000, 4),
        "cost": None if j["cost"] is None else round(j["cost"], 4),
        "provenance": ", ".join(energy_prov) or "unknown",
    }


def job_body(d: data.JobDetail, currency: str) -> list[Any]:
    j = d.job
    duration = (j["ended_s"] - j["started_s"]) if j["ended_s"] else None
    prov = j.get("provenance") or {}
    energy_prov = prov.get("energy") or {}
    carbon = prov.get("carbon") or {}
    shares = [
        (dev, f"{100 * s['this job'] / (sum(s.values()) or 1):.1f}%",
         fig.fmt_energy(s["this job"]), fig.fmt_energy(s["other jobs"]), fig.fmt_energy(s["idle"]),
         ", ".join(d.other_consumers.get(dev, [])[:6]) or "—")
        for dev, s in sorted(d.shares.items())
    ]
    total = sum(d.energy_by_provenance.values()) or 1.0
    return [
        html.Div([html.H1(j["name"]), html.Span(f"{j['kind']} · {j['status']}",
                                                className=f"cw-badge cw-{j['status']}")],
                 className="cw-page-head"),
        html.P([dcc.Link("← all jobs", href="/jobs"),
                f" · id {j['id']} · model {j['model'] or '—'} · started {fig.when(j['started_s'])}"
                f" · {fig.fmt_duration(duration)}"], className="cw-range-text"),
        html.Div([
            kpi("Energy", fig.fmt_energy(j["energy_j"])),
            kpi("Emissions", fig.fmt_mass(j["co2e_g"])),
            kpi("Cost", fig.fmt_money(j["cost"], j.get("currency") or currency)),
            kpi("Devices", str(len(d.power_w)), ", ".join(sorted(d.power_w))),
        ], className="cw-kpis"),
        card("Power per device", graph("job-power", fig.job_power_figure(d), 320),
             note="Energy attributed to this job per minute (or bucket) over its length, as mean "
                  "watts: its share of each device's active power, idle excluded."),
        card("Share of the devices it used", graph("job-shares", fig.job_shares_figure(d)),
             table(("Device", "This job", "Job energy", "Other jobs", "Idle",
                    "Shared with"), shares, "job-shares-table")),
        card("Provenance", table(("Figure", "How it was obtained"), [
            *[(f"energy {dev}", how) for dev, how in sorted(energy_prov.items())],
            ("energy (rollups)", ", ".join(f"{k} {v / total:.0%}" for k, v in
                                           sorted(d.energy_by_provenance.items())) or "—"),
            ("carbon intensity", ", ".join(f"{k} {v / total:.0%}" for k, v in
                                           sorted(d.energy_by_intensity_kind.items())) or "—"),
            ("intensity source", f"{carbon.get('intensity') or '—'} "
                                 f"(PUE {carbon.get('pue', '—')})"),
            ("cost", str(prov.get("cost") or "—")),
            ("attribution", str(prov.get("attribution") or "—")),
        ], "job-provenance")),
    ]
