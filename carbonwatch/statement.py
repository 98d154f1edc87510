"""The per-model energy and emissions statement: training, inference per 1,000 calls, totals,
provenance and methodology, as a dict (JSON) and as markdown fit for a model card.

It covers everything the store holds for the model. Sums come from the day rollups (migration
m004), which hold every minute exactly; a store without them is read from its minute tables.
Reads only: works on a read-only ``Store``.
"""

from __future__ import annotations

import math
import sqlite3
from datetime import UTC, datetime
from typing import Any

from carbonwatch.config import Settings
from carbonwatch.errors import InputError
from carbonwatch.footprint import extend
from carbonwatch.model import J_PER_KWH
from carbonwatch.store import Store, job_dicts
from carbonwatch.times import iso_utc_or_none
from carbonwatch.tokens import per_token

PHASES = ("training", "inference")

METHODOLOGY = [
    "Energy is measured per device: the GPU's cumulative energy counter (NVML) where supported, "
    "RAPL for CPUs where readable; otherwise a power model (CPU TDP table, RAM model) or "
    "integrated power samples, marked 'estimated'.",
    "Each device's energy above its idle baseline is split among the processes active on it "
    "(GPU: by the power each process draws, estimated from its SM activity; CPU: by CPU time); "
    "idle energy is reported separately and is not in these figures.",
    "Training is the energy attributed to the model's training jobs. Inference is the energy "
    "attributed to the jobs serving the model, between calls included, so 'per 1,000 calls' is "
    "the full serving cost of 1,000 calls; the calls' own share is given as well.",
    "Emissions are computed per minute with the grid's carbon intensity of that minute and zone "
    "(actual where known, else forecast, else a static average), times the PUE; never one "
    "average over a whole run.",
    "Cost is energy times the configured price (PUE included); device-hour rates, where set, "
    "are in the training runs' own costs only.",
    "Per token: the serving energy of the calls that reported output tokens (their share of "
    "the calls' apportioned energy, between-call energy included pro rata), divided by the "
    "tokens the serving code reported; per output token and per token (prompt + output) apart.",
]
FOOTPRINT_METHODOLOGY = [
    "Embodied carbon: each device model's manufacturing emissions (sourced per model; unknown "
    "where no figure is sourced, never 0) spread over lifetime x utilisation hours, charged per "
    "device-minute of use by energy share; reported beside, never inside, the operational "
    "figures.",
    "co2e_g uses average grid intensity (inventory); co2e_g_marginal, where a marginal signal "
    "(WattTime MOER) covers every minute, what the consumption changed at the margin.",
]


def _tables(conn: sqlite3.Connection) -> set[str]:
    return {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}


def _energy(conn: sqlite3.Connection, model: str, by_day: bool) -> list[dict[str, Any]]:
    """The model's energy by phase, provenance, intensity kind, device class and zone."""
    columns = {r[1] for r in conn.execute("PRAGMA table_info(energy_minute)")}
    zone = "zone" if "zone" in columns else "'' AS zone"
    table = "energy_day" if by_day else "energy_minute"
    cur = conn.execute(
        f"SELECT phase, provenance, intensity_kind, device_class, {zone}, "  # noqa: S608 - fixed
        f"SUM(energy_j), SUM(co2e_g), SUM(cost) FROM {table} "
        "WHERE model = ? AND phase IN ('training', 'inference') GROUP BY 1, 2, 3, 4, 5", [model])
    names = ("phase", "provenance", "intensity_kind", "device_class", "zone", "energy_j",
             "co2e_g", "cost")
    return [dict(zip(names, r, strict=True)) for r in cur]


def _hourly(conn: sqlite3.Connection, model: str, by_hour: bool) -> list[tuple[int, str, float]]:
    if by_hour:
        sql = ("SELECT hour_s, phase, SUM(co2e_g) FROM energy_hour WHERE model = ? "
               "AND phase IN ('training', 'inference') GROUP BY 1, 2 ORDER BY 1")
    else:
        sql = ("SELECT minute_s - minute_s % 3600, phase, SUM(co2e_g) FROM energy_minute "
               "WHERE model = ? AND phase IN ('training', 'inference') GROUP BY 1, 2 ORDER BY 1")
    return [(int(t), str(p), float(v)) for t, p, v in conn.execute(sql, [model])]


def _overtaken_at(hourly: list[tuple[int, str, float]]) -> float | None:
    """The hour in which cumulative inference gCO2e last passed training's, if it stays ahead."""
    hours: dict[int, list[float]] = {}
    for t, phase, value in hourly:
        hours.setdefault(t, [0.0, 0.0])[0 if phase == "training" else 1] += value
    train = inf = 0.0
    at = None
    for t in sorted(hours):
        ahead_before = inf >= train > 0
        train, inf = train + hours[t][0], inf + hours[t][1]
        if inf < train:
            at = None
        elif train > 0 and not ahead_before:
            at = t + 3600
    return at


def _jobs(conn: sqlite3.Connection, model: str) -> list[dict[str, Any]]:
    cur = conn.execute(
        "SELECT id, name, kind, status, started_s, ended_s, energy_j, co2e_g, cost, currency, "
        "provenance, energy_by_device FROM jobs WHERE model = ? ORDER BY started_s", [model])
    return job_dicts(cur)


def _figures(energy_j: float, co2e_g: float, cost: float | None) -> dict[str, Any]:
    return {"energy_j": energy_j, "energy_kwh": energy_j / J_PER_KWH, "co2e_g": co2e_g,
            "cost": cost}


def model_statement(store: Store, model: str, settings: Settings | None = None) -> dict[str, Any]:
    """Everything the store knows about ``model``'s energy, emissions and cost, with how each
    figure was obtained. Raises InputError when the store holds nothing for it. ``settings``:
    embodied carbon's lifetime, utilisation and figures, the node zone for the marginal signal
    (carbonwatch.footprint); the defaults when None."""
    conn = store.conn
    tables = _tables(conn)
    rollups = {"energy_day", "energy_hour", "call_day"} <= tables
    energy = _energy(conn, model, rollups)
    table = "call_day" if rollups else "call_minute"
    columns = {r[1] for r in conn.execute(f"PRAGMA table_info({table})")}
    # A store written before migration m006 holds no tokens: read as none reported.
    aggregates = ", ".join(f"SUM({c})" if c in columns else "0" for c in (
        "tokens_in", "tokens_out", "token_calls", "token_energy_j"))
    calls_row = conn.execute(
        f"SELECT SUM(calls), SUM(energy_j), SUM(co2e_g), SUM(cost), {aggregates} "  # noqa: S608
        f"FROM {table} WHERE model = ?", [model]).fetchone()
    jobs = _jobs(conn, model)
    if not energy and not jobs and not calls_row[0]:
        known = [r[0] for r in conn.execute(
            "SELECT DISTINCT model FROM jobs WHERE model IS NOT NULL ORDER BY 1")]
        raise InputError(f"no energy, calls or jobs recorded for model {model!r}"
                         + (f"; models with jobs: {', '.join(known)}" if known else ""))
    hourly = _hourly(conn, model, rollups)

    sums = {p: [0.0, 0.0, 0.0] for p in PHASES}
    by_prov: dict[str, float] = {}
    phase_prov: dict[str, dict[str, float]] = {p: {} for p in PHASES}
    by_kind: dict[str, float] = {}
    by_class: dict[str, dict[str, float]] = {}
    zones: set[str] = set()
    for r in energy:
        s = sums[r["phase"]]
        s[0] += r["energy_j"]
        s[1] += r["co2e_g"]
        s[2] += r["cost"]
        by_prov[r["provenance"]] = by_prov.get(r["provenance"], 0.0) + r["energy_j"]
        mine = phase_prov[r["phase"]]
        mine[r["provenance"]] = mine.get(r["provenance"], 0.0) + r["energy_j"]
        by_kind[r["intensity_kind"]] = by_kind.get(r["intensity_kind"], 0.0) + r["energy_j"]
        cls = by_class.setdefault(r["device_class"], {})
        cls[r["provenance"]] = cls.get(r["provenance"], 0.0) + r["energy_j"]
        zones.add(r["zone"])
    currency = next((j["currency"] for j in jobs if j["currency"]), None)
    cost_known = any(j["cost"] is not None for j in jobs) or any(s[2] for s in sums.values())

    def cost(value: float) -> float | None:
        return value if cost_known else None

    calls = int(calls_row[0] or 0)
    calls_energy_j, calls_co2e_g, calls_cost = (float(v or 0.0) for v in calls_row[1:4])
    t_j, t_g, t_c = sums["training"]
    i_j, i_g, i_c = sums["inference"]
    tokens = per_token(
        serving_energy_j=i_j, serving_co2e_g=i_g, calls=calls, calls_energy_j=calls_energy_j,
        tokens_in=int(calls_row[4] or 0), tokens_out=int(calls_row[5] or 0),
        token_calls=int(calls_row[6] or 0), token_energy_j=float(calls_row[7] or 0.0))
    per_call_g = i_g / calls if calls else None
    runs = [j for j in jobs if j["kind"] == "training"]
    total_j = t_j + i_j
    pues = sorted({(j["provenance"].get("carbon") or {}).get("pue") for j in jobs} - {None})
    sources = sorted({(j["provenance"].get("carbon") or {}).get("intensity") for j in jobs}
                     - {None, ""})
    prices = sorted({str(j["provenance"].get("cost")) for j in jobs if j["provenance"].get("cost")})
    overtaken = _overtaken_at(hourly)
    statement = {
        "model": model,
        "generated_at": iso_utc_or_none(datetime.now(UTC).timestamp()),
        "store": str(store.path),
        # To the hour: the hours in which the model drew energy.
        "period": {"first": iso_utc_or_none(hourly[0][0]) if hourly else None,
                   "last": iso_utc_or_none(hourly[-1][0] + 3600) if hourly else None},
        "currency": currency,
        "training": {
            **_figures(t_j, t_g, cost(t_c)),
            "energy_j_by_provenance": phase_prov["training"],
            "runs": [{
                "id": j["id"], "name": j["name"], "status": j["status"],
                "started": iso_utc_or_none(j["started_s"]), "ended": iso_utc_or_none(j["ended_s"]),
                "duration_s": (j["ended_s"] - j["started_s"]) if j["ended_s"] else None,
                "energy_j": j["energy_j"], "energy_kwh": j["energy_j"] / J_PER_KWH,
                "co2e_g": j["co2e_g"], "cost": j["cost"],
                "devices": sorted(j["energy_by_device"]),
            } for j in runs],
        },
        "inference": {
            **_figures(i_j, i_g, cost(i_c)),
            "energy_j_by_provenance": phase_prov["inference"],
            "calls": calls,
            "services": [j["id"] for j in jobs if j["kind"] == "inference"],
            "per_1000_calls": (_figures(i_j / calls * 1000, i_g / calls * 1000,
                                        cost(i_c / calls * 1000)) if calls else None),
            "calls_only_per_1000_calls": (_figures(
                calls_energy_j / calls * 1000, calls_co2e_g / calls * 1000,
                cost(calls_cost / calls * 1000)) if calls else None),
            **tokens,
        },
        "totals": {
            **_figures(total_j, t_g + i_g, cost(t_c + i_c)),
            "inference_share_of_co2e": i_g / (t_g + i_g) if t_g + i_g else None,
            "inference_overtook_training_at": iso_utc_or_none(overtaken),
            "calls_to_match_training": (math.ceil(t_g / per_call_g) if per_call_g and t_g
                                        else None),
        },
        "provenance": {
            "energy_j_by_provenance": by_prov,
            "energy_j_by_device_class": by_class,
            "energy_j_by_intensity_kind": by_kind,
            "zones": sorted(z or "(node zone)" for z in zones),
            "intensity_sources": sources,
            "pue": pues,
            "pricing": prices,
            "measured_share": by_prov.get("measured", 0.0) / total_j if total_j else None,
        },
        "methodology": [*METHODOLOGY, *FOOTPRINT_METHODOLOGY],
    }
    return extend(statement, conn, model, settings or Settings(), hourly)


# --- markdown -------------------------------------------------------------------------------
def _kwh(j: float) -> str:
    return f"{j / J_PER_KWH:,.3f}"


def _kg(g: float) -> str:
    return f"{g / 1000:,.3f}"


def _money(x: float | None) -> str:
    if x is None:
        return "unknown"
    return f"{x:,.2f}" if abs(x) >= 1 else f"{x:.4f}"


def _pct(part: float, whole: float) -> str:
    return f"{part / whole:.1%}" if whole else "—"


def _g(value: float | None) -> str:
    return "unknown" if value is None else f"{value:,.2f} g"


def _footprint_lines(s: dict[str, Any]) -> list[str]:
    """Embodied, marginal and payback lines (carbonwatch.footprint)."""
    emb, pay = s.get("embodied"), s.get("payback")
    if not emb or not pay:
        return []
    t, i = s["training"], s["inference"]
    missing = sorted({n for p in emb["phases"].values() for n in p["devices_without_figure"]})
    lines = [
        f"**Embodied (manufacturing) carbon**, beside the operational figures: training "
        f"{_g(t['embodied_co2e_g'])}, inference {_g(i['embodied_co2e_g'])} CO2e (lifetime "
        f"{emb['lifetime_years']:g} years at {emb['utilisation']:.0%} use"
        + (f"; no sourced figure for {', '.join(missing)}" if missing else "") + ").",
        "",
        f"**Average and marginal:** training {_g(t['co2e_g'])} average, "
        f"{_g(t['co2e_g_marginal'])} marginal; inference {_g(i['co2e_g'])} average, "
        f"{_g(i['co2e_g_marginal'])} marginal.",
        "",
    ]
    per_k = pay["inference_co2e_g_per_1k_calls"]
    lines.append(
        f"**Payback:** training {_g(pay['training_co2e_g'])} CO2e (operational + embodied); "
        "inference " + (f"{per_k:,.3f} g per 1,000 calls" if per_k is not None else "—")
        + (f", {pay['inference_co2e_g_per_1k_output_tokens']:,.4g} g per 1,000 output tokens"
           if pay["inference_co2e_g_per_1k_output_tokens"] is not None else "")
        + (f"; inference overtook training at {pay['inference_overtook_training_at']}"
           if pay["inference_overtook_training_at"] else
           (f"; inference pays training back after {pay['calls_to_pay_back']:,} calls"
            if pay["calls_to_pay_back"] else "")) + ".")
    return [*lines, ""]


def render_markdown(statement: dict[str, Any]) -> str:
    """The statement as a markdown section for a model card."""
    s = statement
    t, i, tot, prov = s["training"], s["inference"], s["totals"], s["provenance"]
    cur = s["currency"] or "currency"
    lines = [
        f"## Energy and emissions: {s['model']}",
        "",
        f"Recorded {s['period']['first'] or '—'} to {s['period']['last'] or '—'} by carbonwatch "
        f"(generated {s['generated_at']}).",
        "",
        f"| | Energy (kWh) | Emissions (kg CO2e) | Cost ({cur}) |",
        "|---|---:|---:|---:|",
        f"| Training ({len(t['runs'])} runs) | {_kwh(t['energy_j'])} | {_kg(t['co2e_g'])} | "
        f"{_money(t['cost'])} |",
        f"| Inference ({i['calls']:,} calls) | {_kwh(i['energy_j'])} | {_kg(i['co2e_g'])} | "
        f"{_money(i['cost'])} |",
        f"| **Total** | **{_kwh(tot['energy_j'])}** | **{_kg(tot['co2e_g'])}** | "
        f"**{_money(tot['cost'])}** |",
        "",
    ]
    lines += _footprint_lines(s)
    per = i["per_1000_calls"]
    if per:
        own = i["calls_only_per_1000_calls"]
        lines += [
            f"**Per 1,000 inference calls:** {per['energy_j'] / 3600:,.2f} Wh, "
            f"{per['co2e_g']:,.2f} g CO2e, {_money(per['cost'])} {cur} (everything the serving "
            f"jobs drew; the calls alone: {own['energy_j'] / 3600:,.2f} Wh, "
            f"{own['co2e_g']:,.2f} g CO2e).",
            "",
        ]
    if i.get("energy_j_per_output_token") is not None:
        share = i["token_energy_share"]
        lines += [
            f"**Per token:** {i['energy_j_per_output_token']:,.4g} J per output token, "
            f"{i['energy_j_per_token']:,.4g} J per token (prompt and output), "
            f"{i['co2e_g_per_1k_output_tokens']:,.4g} g CO2e per 1,000 output tokens "
            f"({i['tokens_out']:,} output and {i['tokens_in']:,} prompt tokens over "
            f"{i['token_calls']:,} calls"
            + (f"; the figures cover the {share:.1%} of the serving energy that went to calls "
               "reporting tokens" if share < 1 else "") + ").",
            "",
        ]
    if tot["inference_overtook_training_at"]:
        lines += [f"Inference emissions overtook training's at "
                  f"{tot['inference_overtook_training_at']}; inference is now "
                  f"{tot['inference_share_of_co2e']:.0%} of the model's emissions.", ""]
    elif tot["calls_to_match_training"]:
        lines += [f"At the current rate, inference will match training's emissions after "
                  f"{tot['calls_to_match_training']:,} calls in all ({i['calls']:,} so far).", ""]
    if t["runs"]:
        lines += ["### Training runs", "",
                  "| Run | Status | Started | Hours | kWh | kg CO2e | Devices |",
                  "|---|---|---|---:|---:|---:|---|"]
        for r in t["runs"]:
            hours = f"{r['duration_s'] / 3600:.2f}" if r["duration_s"] is not None else "running"
            name = str(r["name"]).replace("|", "\\|")
            lines.append(f"| {name} (`{r['id']}`) | {r['status']} | {r['started']} | {hours} | "
                         f"{_kwh(r['energy_j'])} | {_kg(r['co2e_g'])} | "
                         f"{', '.join(r['devices']) or '—'} |")
        lines.append("")
    energy_total = sum(prov["energy_j_by_provenance"].values())
    by_class = "; ".join(
        f"{cls.upper()} " + ", ".join(f"{k} {_pct(v, energy_total)}" for k, v in sorted(p.items()))
        for cls, p in sorted(prov["energy_j_by_device_class"].items()))
    lines += [
        "### Provenance", "",
        f"- Energy: {_pct(prov['energy_j_by_provenance'].get('measured', 0.0), energy_total)} "
        f"measured by hardware counters, the rest estimated ({by_class or 'no devices'}).",
        "- Carbon intensity: " + (", ".join(
            f"{k} {_pct(v, energy_total)}" for k, v in sorted(
                prov["energy_j_by_intensity_kind"].items())) or "—")
        + f"; zones {', '.join(prov['zones']) or '—'}; sources "
        f"{', '.join(prov['intensity_sources']) or '—'}; PUE "
        f"{', '.join(str(p) for p in prov['pue']) or '—'}.",
        f"- Cost: {'; '.join(prov['pricing']) or 'unknown (no energy price configured)'}.",
        "", "### Methodology", "",
        *[f"- {m}" for m in s["methodology"]],
        "",
    ]
    return "\n".join(lines)
