"""Software Carbon Intensity (ISO/IEC 21031:2024, the Green Software Foundation's SCI):
``SCI = (E x I + M) per R``.

- E: energy of the software boundary, kWh: the model's serving jobs (between calls included) for
  ``calls`` and ``1k-output-tokens`` (for tokens, the share of serving energy that went to calls
  reporting tokens, as the per-token figures use), its training jobs for ``training-run``. Device
  energy: the PUE is in I.
- I: gCO2e per kWh: the boundary's operational gCO2e over E, i.e. each minute's grid intensity
  (location-based; actual, forecast or static, as costed) times the PUE, energy-weighted. The
  marginal equivalent is given beside it where known.
- M: embodied gCO2e of the devices used, amortised per device-hour (carbonwatch.embodied); unknown
  (null) when no device used has a sourced figure, and then SCI is null too (the standard has no
  SCI without M); ``sci_without_m_g`` is given so the operational part is still usable.
- R: the functional unit: calls, thousands of output tokens, or training runs.
"""

from __future__ import annotations

from typing import Any

from carbonwatch.errors import InputError
from carbonwatch.model import J_PER_KWH

FUNCTIONAL_UNITS = ("calls", "1k-output-tokens", "training-run")


def sci(statement: dict[str, Any], functional_unit: str = "calls") -> dict[str, Any]:
    """The SCI terms of a model statement for ``functional_unit`` (see the module doc)."""
    if functional_unit not in FUNCTIONAL_UNITS:
        raise InputError(f"functional unit must be one of {', '.join(FUNCTIONAL_UNITS)}, "
                         f"got {functional_unit!r}")
    phase = "training" if functional_unit == "training-run" else "inference"
    block = statement[phase]
    share = 1.0
    if functional_unit == "calls":
        r = float(block["calls"])
        r_text = "inference calls"
    elif functional_unit == "1k-output-tokens":
        r = block.get("tokens_out", 0) / 1000.0
        share = block.get("token_energy_share")
        r_text = "thousands of output tokens"
        if share is None:
            r = 0.0
    else:
        r = float(len(block["runs"]))
        r_text = "training runs"
    energy_kwh = block["energy_j"] / J_PER_KWH
    e = energy_kwh * (share or 0.0)
    i = block["co2e_g"] / energy_kwh if energy_kwh > 0 else None
    marg = block.get("co2e_g_marginal")
    i_marginal = marg / energy_kwh if marg is not None and energy_kwh > 0 else None
    emb = block.get("embodied_co2e_g")
    m = emb * share if emb is not None and share is not None else None
    operational = e * i if i is not None else None
    known = r > 0 and operational is not None
    prov = statement["provenance"]
    emb_info = statement.get("embodied", {})
    return {
        "model": statement["model"],
        "standard": "ISO/IEC 21031:2024 Software Carbon Intensity: SCI = (E x I + M) per R",
        "functional_unit": functional_unit,
        "boundary": (f"the model's {phase} jobs recorded by carbonwatch"
                     + (", between-call energy included" if phase == "inference" else "")),
        "period": statement["period"],
        "E_kwh": e,
        "I_g_per_kwh": i,
        "I_marginal_g_per_kwh": i_marginal,
        "M_g": m,
        "R": r,
        "R_unit": r_text,
        "sci_g_per_unit": (operational + m) / r if known and m is not None else None,
        "sci_without_m_g_per_unit": operational / r if known else None,
        "sci_marginal_g_per_unit": (e * i_marginal + m) / r
        if known and m is not None and i_marginal is not None else None,
        "provenance": {
            "E": {"measured_share": prov["measured_share"],
                  "energy_j_by_provenance": prov["energy_j_by_provenance"],
                  "share_of_phase_energy": share},
            "I": {"kind": "location-based average, PUE included",
                  "energy_j_by_intensity_kind": prov["energy_j_by_intensity_kind"],
                  "sources": prov["intensity_sources"], "zones": prov["zones"],
                  "pue": prov["pue"]},
            "M": {"lifetime_years": emb_info.get("lifetime_years"),
                  "utilisation": emb_info.get("utilisation"),
                  "devices": (emb_info.get("phases") or {}).get(phase, {}).get("by_device"),
                  "devices_without_figure": (emb_info.get("phases") or {}).get(phase, {}).get(
                      "devices_without_figure")},
            "R": f"{r:g} {r_text} in the period",
        },
    }


def render_markdown(terms: dict[str, Any]) -> str:
    def num(v: float | None, fmt: str = ",.6g") -> str:
        return "unknown" if v is None else format(v, fmt)

    return "\n".join([
        f"## Software Carbon Intensity: {terms['model']} (per {terms['R_unit']})",
        "",
        f"{terms['standard']}; boundary: {terms['boundary']}; period "
        f"{terms['period']['first'] or '—'} to {terms['period']['last'] or '—'}.",
        "",
        "| Term | Value |", "|---|---:|",
        f"| E (kWh) | {num(terms['E_kwh'])} |",
        f"| I (gCO2e/kWh, average) | {num(terms['I_g_per_kwh'])} |",
        f"| I (gCO2e/kWh, marginal) | {num(terms['I_marginal_g_per_kwh'])} |",
        f"| M (gCO2e, embodied) | {num(terms['M_g'])} |",
        f"| R ({terms['R_unit']}) | {num(terms['R'])} |",
        f"| **SCI (gCO2e per unit)** | **{num(terms['sci_g_per_unit'])}** |",
        f"| SCI without M | {num(terms['sci_without_m_g_per_unit'])} |",
        "",
    ])
