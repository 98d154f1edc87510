"""A CycloneDX 1.6 BOM with the model as a ``machine-learning-model`` component whose model
card carries ``considerations.environmentalConsiderations.energyConsumptions`` (training and
inference: kWh, tCO2eq), valid against the official bom-1.6 schema (tests/fixtures/schemas).

CycloneDX asks each activity's energy providers with their energy source; carbonwatch knows the
grid zone and intensity, not the generation mix, so the source is ``unknown`` and the provider is
the grid of the recorded zones. Embodied and marginal figures, and provenance, are properties
(``carbonwatch:*``)."""

from __future__ import annotations

import json
import uuid
from typing import Any

from carbonwatch.exports import tool_version
from carbonwatch.model import J_PER_KWH


def _prop(name: str, value: Any) -> dict[str, str]:
    return {"name": f"carbonwatch:{name}", "value": "unknown" if value is None else str(value)}


def _activity(activity: str, block: dict[str, Any], zones: list[str]) -> dict[str, Any]:
    kwh = block["energy_j"] / J_PER_KWH
    return {
        "activity": activity,
        "energyProviders": [{
            "description": "the electricity grid of the recorded zones; generation mix not "
                           "known to carbonwatch",
            "organization": {"name": f"electricity grid ({', '.join(zones) or 'unknown zone'})"},
            "energySource": "unknown",
            "energyProvided": {"value": kwh, "unit": "kWh"},
        }],
        "activityEnergyCost": {"value": kwh, "unit": "kWh"},
        "co2CostEquivalent": {"value": block["co2e_g"] / 1e6, "unit": "tCO2eq"},
        "properties": [
            _prop("co2e_g_average", block["co2e_g"]),
            _prop("co2e_g_marginal", block.get("co2e_g_marginal")),
            _prop("embodied_co2e_g", block.get("embodied_co2e_g")),
        ],
    }


def cyclonedx_bom(statement: dict[str, Any], serial: str | None = None) -> dict[str, Any]:
    s = statement
    prov = s["provenance"]
    considerations = []
    for activity in ("training", "inference"):
        if s[activity]["energy_j"] > 0:
            considerations.append(_activity(activity, s[activity], prov["zones"]))
    return {
        "bomFormat": "CycloneDX",
        "specVersion": "1.6",
        "serialNumber": serial or f"urn:uuid:{uuid.uuid4()}",
        "version": 1,
        "metadata": {
            "timestamp": s["generated_at"],
            "tools": {"components": [{"type": "application", "name": "carbonwatch",
                                      "version": tool_version()}]},
        },
        "components": [{
            "type": "machine-learning-model",
            "bom-ref": f"model:{s['model']}",
            "name": s["model"],
            "modelCard": {"considerations": {"environmentalConsiderations": {
                "energyConsumptions": considerations,
                "properties": [
                    _prop("period_first", s["period"]["first"]),
                    _prop("period_last", s["period"]["last"]),
                    _prop("measured_share", prov["measured_share"]),
                    _prop("intensity_sources", ", ".join(prov["intensity_sources"]) or None),
                    _prop("pue", ", ".join(str(p) for p in prov["pue"]) or None),
                    _prop("inference_calls", s["inference"]["calls"]),
                    _prop("energy_scope", "device energy (GPU, CPU, RAM) above idle; PUE in "
                                          "the CO2e, not in the kWh"),
                ],
            }}},
        }],
    }


def render(statement: dict[str, Any], serial: str | None = None) -> str:
    return json.dumps(cyclonedx_bom(statement, serial), indent=2)
