"""A markdown section for an EU AI Act technical file (Regulation (EU) 2024/1689, Annex XI,
Section 1, point 2(e): the known or estimated energy consumption of the model's training).

States the training energy, how it was obtained, which share was measured by hardware counters
and which estimated, and the period; inference and emissions are added as context."""

from __future__ import annotations

from typing import Any

from carbonwatch.model import J_PER_KWH


def _pct(x: float | None) -> str:
    return "unknown" if x is None else f"{x:.1%}"


def render(statement: dict[str, Any]) -> str:
    s = statement
    t, i, prov = s["training"], s["inference"], s["provenance"]
    runs = t["runs"]
    first = min((r["started"] for r in runs if r["started"]), default=None)
    last = max((r["ended"] for r in runs if r["ended"]), default=None)
    by = t.get("energy_j_by_provenance") or {}
    t_measured = by.get("measured", 0.0) / t["energy_j"] if t["energy_j"] and by else None
    emb = t.get("embodied_co2e_g")
    lines = [
        f"## Energy consumption of the model {s['model']} (EU AI Act, Annex XI, 1.2(e))",
        "",
        f"- **Training energy:** {t['energy_j'] / J_PER_KWH:,.3f} kWh over {len(runs)} "
        f"training run(s).",
        f"- **Period:** {first or '—'} to {last or '(running)'} (training runs); all records "
        f"{s['period']['first'] or '—'} to {s['period']['last'] or '—'}.",
        f"- **Measured vs estimated:** {_pct(t_measured)} of the training energy was measured "
        f"by the devices' hardware energy counters (NVML, RAPL) and "
        f"{_pct(None if t_measured is None else 1 - t_measured)} estimated with power models "
        f"(CPU TDP table, RAM model, integrated power samples); over all of the model's energy "
        f"{_pct(prov['measured_share'])} was measured.",
        "- **Method:** per device and interval, each device's energy above its idle baseline "
        "was attributed to the processes of the model's training jobs (GPU SM share, CPU time, "
        "RSS) by carbonwatch, a sidecar on each node; idle energy is reported separately and is "
        "not included. The kWh are device energy; data-centre overhead (PUE "
        f"{', '.join(str(p) for p in prov['pue']) or 'not set'}) is applied to emissions only.",
        f"- **Emissions (context):** {t['co2e_g'] / 1000:,.3f} kg CO2e from the training "
        f"energy at the grid's average intensity of each minute; embodied (hardware "
        f"manufacture) {'unknown' if emb is None else format(emb / 1000, ',.3f') + ' kg CO2e'}.",
        f"- **Inference (context):** {i['energy_j'] / J_PER_KWH:,.3f} kWh for {i['calls']:,} "
        "recorded calls.",
        "",
    ]
    return "\n".join(lines)
