"""A model's footprint beyond operational average carbon: embodied carbon, the marginal figure
beside the average one, and payback (when inference's carbon overtook training's).

Adds to the statement of :mod:`carbonwatch.statement`; read-only, like it. Everything per phase
comes from ``energy_minute`` (embodied carbon needs each minute's device shares; the rollups sum
them away), so this costs one indexed scan of the model's minute rows.
"""

from __future__ import annotations

import math
import sqlite3
from typing import Any

from carbonwatch.config import Settings
from carbonwatch.embodied import (
    Amortisation,
    device_names,
    device_seconds,
    embodied_of,
    job_embodied,
)
from carbonwatch.grid.signals import job_marginal, marginal_by
from carbonwatch.times import iso_utc_or_none

PHASES = ("training", "inference")


def _filters(model: str) -> tuple[str, list[Any]]:
    return "e.model = ? AND e.phase IN ('training', 'inference')", [model]


def embodied_by_phase_and_hour(
    conn: sqlite3.Connection, model: str, amort: Amortisation
) -> tuple[dict[str, dict[str, Any]], list[tuple[int, str, float]]]:
    """Embodied carbon per phase, and (hour_s, phase, g) for payback, from one scan."""
    filters, args = _filters(model)
    key = "e.phase || ':' || (e.minute_s - e.minute_s % 3600)"
    names = device_names(conn)
    per_phase: dict[str, dict[str, float]] = {p: {} for p in PHASES}
    per_hour: dict[tuple[int, str], dict[str, float]] = {}
    for (k, dev), secs in device_seconds(conn, key, filters, args).items():
        phase, hour = str(k).split(":")
        per_phase[phase][dev] = per_phase[phase].get(dev, 0.0) + secs
        per_hour.setdefault((int(hour), phase), {})[dev] = secs
    phases = {p: embodied_of(per_phase[p], names, amort) for p in PHASES}
    hourly = []
    for (hour, phase), secs in sorted(per_hour.items()):
        g = embodied_of(secs, names, amort)["embodied_co2e_g"]
        if g is not None:
            hourly.append((hour, phase, float(g)))
    return phases, hourly


def phase_marginal(
    conn: sqlite3.Connection, model: str, settings: Settings
) -> dict[str, dict[str, Any]]:
    filters, args = _filters(model)
    got = marginal_by(conn, settings, "e.phase", filters, args)
    empty = {"co2e_g_marginal": None, "marginal_coverage": None, "marginal_zones": []}
    return {p: got.get(p) or dict(empty) for p in PHASES}


def overtaken_at(hourly: list[tuple[int, str, float]]) -> float | None:
    """The end of the hour in which cumulative inference gCO2e passed training's for the last
    time (None if it is behind now, or there was no training)."""
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


def payback(
    statement: dict[str, Any], embodied: dict[str, dict[str, Any]],
    hourly: list[tuple[int, str, float]],
) -> dict[str, Any]:
    """Training carbon (operational + embodied) against inference's per 1k calls and tokens."""
    t, i = statement["training"], statement["inference"]
    t_emb, i_emb = (embodied[p]["embodied_co2e_g"] for p in PHASES)
    train_g = t["co2e_g"] + (t_emb or 0.0)
    inf_g = i["co2e_g"] + (i_emb or 0.0)
    calls = i["calls"]
    share = i.get("token_energy_share")
    tokens_out = i.get("tokens_out") or 0
    per_1k_calls = inf_g / calls * 1000 if calls else None
    per_1k_tokens = (inf_g * share / tokens_out * 1000
                     if share is not None and tokens_out > 0 and i["energy_j"] > 0 else None)
    return {
        "training_co2e_g": train_g,
        "training_operational_co2e_g": t["co2e_g"],
        "training_embodied_co2e_g": t_emb,
        "inference_co2e_g": inf_g,
        "inference_embodied_co2e_g": i_emb,
        "includes_embodied": t_emb is not None or i_emb is not None,
        "inference_co2e_g_per_1k_calls": per_1k_calls,
        "inference_co2e_g_per_1k_output_tokens": per_1k_tokens,
        "calls_to_pay_back": (math.ceil(train_g / per_1k_calls * 1000)
                              if per_1k_calls and train_g > 0 else None),
        "output_tokens_to_pay_back": (math.ceil(train_g / per_1k_tokens * 1000)
                                      if per_1k_tokens and train_g > 0 else None),
        "inference_overtook_training_at": iso_utc_or_none(overtaken_at(hourly)),
        "method": "training = its operational gCO2e + its embodied gCO2e (where device figures "
                  "are known); inference likewise; the date is the end of the hour in which "
                  "cumulative inference carbon passed training's and stayed ahead",
    }


def extend(
    statement: dict[str, Any], conn: sqlite3.Connection, model: str, settings: Settings,
    hourly_operational: list[tuple[int, str, float]],
) -> dict[str, Any]:
    """Add embodied, marginal and payback figures to a model statement (in place, returned)."""
    amort = Amortisation.from_settings(settings)
    embodied, hourly_emb = embodied_by_phase_and_hour(conn, model, amort)
    marginal = phase_marginal(conn, model, settings)
    for phase in PHASES:
        block = statement[phase]
        block["embodied_co2e_g"] = embodied[phase]["embodied_co2e_g"]
        block["co2e_g_marginal"] = marginal[phase]["co2e_g_marginal"]
    inf = statement["inference"]
    calls, i_emb = inf["calls"], embodied["inference"]["embodied_co2e_g"]
    if inf.get("per_1000_calls"):
        inf["per_1000_calls"]["embodied_co2e_g"] = i_emb / calls * 1000 if i_emb is not None \
            else None
        own = inf.get("calls_only_per_1000_calls")
        if own is not None:  # the calls' own share of the serving embodied carbon, by energy
            own["embodied_co2e_g"] = (i_emb * own["energy_j"] / inf["per_1000_calls"]["energy_j"]
                                      / calls * 1000 if i_emb is not None
                                      and inf["per_1000_calls"]["energy_j"] > 0 else None)
        m = marginal["inference"]["co2e_g_marginal"]
        inf["per_1000_calls"]["co2e_g_marginal"] = m / calls * 1000 if m is not None else None
    t_emb = embodied["training"]["embodied_co2e_g"]
    known = [v for v in (t_emb, i_emb) if v is not None]
    statement["totals"]["embodied_co2e_g"] = sum(known) if known else None
    margs = [marginal[p]["co2e_g_marginal"] for p in PHASES]
    energies = [statement[p]["energy_j"] for p in PHASES]
    statement["totals"]["co2e_g_marginal"] = (
        sum(m or 0.0 for m in margs)
        if all(m is not None or e == 0 for m, e in zip(margs, energies, strict=True))
        and any(m is not None for m in margs) else None)
    statement["embodied"] = {
        **amort.basis(),
        "phases": embodied,
        "kind": "estimated (device figures from the sources named per device)",
    }
    statement["marginal"] = {
        "phases": marginal,
        "note": "co2e_g is costed with average intensity (inventory); co2e_g_marginal with the "
                "marginal signal (WattTime MOER) where its points cover every minute, else null",
    }
    hourly = list(hourly_operational) + hourly_emb
    statement["payback"] = payback(statement, embodied, hourly)
    return statement


def job_footprint(
    conn: sqlite3.Connection, settings: Settings, job_id: str
) -> tuple[float | None, list[str], float | None]:
    """One job's embodied gCO2e, the device models without a figure, and its marginal gCO2e
    (None: unknown), from its minute rows: what ``carbonwatch run`` prints beside co2e_g."""
    emb = job_embodied(conn, Amortisation.from_settings(settings), [job_id]).get(job_id)
    marg = job_marginal(conn, settings, [job_id]).get(job_id)
    return (emb["embodied_co2e_g"] if emb else None,
            emb["devices_without_figure"] if emb else [],
            marg["co2e_g_marginal"] if marg else None)
