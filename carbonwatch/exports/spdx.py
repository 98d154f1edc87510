"""An SPDX 3.0.1 JSON-LD document holding one AI package with its energy consumption
(``ai_energyConsumption``: training and inference, kWh). Valid against the official SPDX 3.0.1
JSON schema (tests/fixtures/schemas). SPDX has no property for CO2e: the carbon figures and how
they were obtained go in the package's ``comment``. The element ids are IRIs under a namespace
derived from the model name and the statement's time, unless one is given."""

from __future__ import annotations

import json
import re
from typing import Any
from urllib.parse import quote

from carbonwatch.exports import tool_version
from carbonwatch.model import J_PER_KWH

SPDX_CONTEXT = "https://spdx.org/rdf/3.0.1/spdx-context.jsonld"


def _stamp(iso: str) -> str:
    """SPDX's dateTimeStamp: whole seconds, 'Z'."""
    return re.sub(r"\.\d+", "", iso.replace("+00:00", "Z"))


def _g(value: float | None) -> str:
    return "unknown" if value is None else f"{value:.3f} g"


def _kwh(energy_j: float) -> str:
    return f"{energy_j / J_PER_KWH:.9f}"  # a decimal string: no float rounding in the file


def spdx_document(statement: dict[str, Any], namespace: str | None = None) -> dict[str, Any]:
    s = statement
    created = _stamp(s["generated_at"])
    ns = (namespace or f"https://carbonwatch.invalid/spdx/{quote(s['model'], safe='')}/"
          f"{created}").rstrip("/")
    t, i = s["training"], s["inference"]
    energy: dict[str, Any] = {"type": "ai_EnergyConsumption"}
    if t["energy_j"] > 0:
        energy["ai_trainingEnergyConsumption"] = [{
            "type": "ai_EnergyConsumptionDescription",
            "ai_energyQuantity": _kwh(t["energy_j"]), "ai_energyUnit": "kilowattHour"}]
    if i["energy_j"] > 0:
        energy["ai_inferenceEnergyConsumption"] = [{
            "type": "ai_EnergyConsumptionDescription",
            "ai_energyQuantity": _kwh(i["energy_j"]), "ai_energyUnit": "kilowattHour"}]
    prov = s["provenance"]
    measured = prov["measured_share"]
    comment = (
        f"Energy and emissions recorded by carbonwatch {tool_version()} from "
        f"{s['period']['first']} to {s['period']['last']}. Training: {t['co2e_g']:.3f} g CO2e "
        f"operational (average grid intensity), embodied "
        f"{_g(t.get('embodied_co2e_g'))}"
        f"; {len(t['runs'])} runs. Inference: {i['co2e_g']:.3f} g CO2e over {i['calls']} calls "
        f"(serving energy, between calls included). Energy measured by hardware counters: "
        f"{'unknown' if measured is None else format(measured, '.1%')}, the rest estimated. Device "
        "energy, PUE not included in the kWh.")
    package = {
        "type": "ai_AIPackage",
        "spdxId": f"{ns}#model",
        "creationInfo": "_:creationinfo",
        "name": s["model"],
        "comment": comment,
        "software_primaryPurpose": "model",
        "ai_energyConsumption": energy,
    }
    agent = {"type": "SoftwareAgent", "spdxId": f"{ns}#carbonwatch",
             "creationInfo": "_:creationinfo", "name": f"carbonwatch {tool_version()}"}
    document = {"type": "SpdxDocument", "spdxId": f"{ns}#document",
                "creationInfo": "_:creationinfo",
                "name": f"Energy consumption of {s['model']}",
                "element": [agent["spdxId"], package["spdxId"]],
                "rootElement": [package["spdxId"]],
                "profileConformance": ["core", "software", "ai"]}
    return {
        "@context": SPDX_CONTEXT,
        "@graph": [
            {"type": "CreationInfo", "@id": "_:creationinfo", "specVersion": "3.0.1",
             "created": created, "createdBy": [agent["spdxId"]]},
            agent, package, document,
        ],
    }


def render(statement: dict[str, Any], namespace: str | None = None) -> str:
    return json.dumps(spdx_document(statement, namespace), indent=2)
