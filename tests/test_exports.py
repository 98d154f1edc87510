"""SPDX 3.0.1 and CycloneDX 1.6 output validates against the official schemas (vendored under
tests/fixtures/schemas, no network), and carries the statement's figures; the EU AI Act section
states training energy, method, measured share and period."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
from footprint_helpers import MODEL, build_store
from referencing import Registry, Resource

from carbonwatch.statement import model_statement
from carbonwatch.store import open_store

SCHEMAS = Path(__file__).parent / "fixtures" / "schemas"


def _load(name: str) -> dict:
    return json.loads((SCHEMAS / name).read_text())


def cyclonedx_validator() -> jsonschema.protocols.Validator:
    registry = Registry()
    for name in ("spdx.schema.json", "jsf-0.82.schema.json", "bom-1.6.schema.json"):
        doc = _load(name)
        registry = registry.with_resource(doc["$id"], Resource.from_contents(doc))
        # bom-1.6 refers to its neighbours by relative name
        registry = registry.with_resource(name, Resource.from_contents(doc))
    bom = _load("bom-1.6.schema.json")
    return jsonschema.Draft7Validator(bom, registry=registry)


def spdx_validator() -> jsonschema.protocols.Validator:
    return jsonschema.Draft202012Validator(_load("spdx-3.0.1-json-schema.json"))


@pytest.fixture(scope="module")
def db(tmp_path_factory):
    return build_store(tmp_path_factory.mktemp("exports") / "ex.db")


def _report(db, *args):
    out = subprocess.run(
        [sys.executable, "-m", "carbonwatch", "report", "--db", str(db), "--model", MODEL, *args],
        capture_output=True, text=True, timeout=60,
        env={k: v for k, v in os.environ.items() if not k.startswith("CARBONWATCH_")})
    assert out.returncode == 0, out.stderr
    return out.stdout


def _statement(db):
    with open_store(db, read_only=True) as store:
        return model_statement(store, MODEL)


def _errors(validator, doc) -> list[str]:
    return [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(doc)]


def test_the_validators_reject_what_the_schemas_forbid():
    """The vendored schemas are live: a broken document fails."""
    assert _errors(cyclonedx_validator(), {"bomFormat": "CycloneDX", "specVersion": "1.6",
                                           "components": [{"type": "machine-learning-model"}]})
    assert _errors(spdx_validator(), {"@context": "https://spdx.org/rdf/3.0.1/spdx-context.jsonld",
                                      "@graph": [{"type": "ai_AIPackage", "name": "x"}]})


def test_cyclonedx_validates_and_carries_the_figures(db):
    bom = json.loads(_report(db, "--format", "cyclonedx"))
    assert _errors(cyclonedx_validator(), bom) == []
    s = _statement(db)
    card = bom["components"][0]["modelCard"]["considerations"]["environmentalConsiderations"]
    by = {c["activity"]: c for c in card["energyConsumptions"]}
    assert set(by) == {"training", "inference"}
    for phase in ("training", "inference"):
        assert by[phase]["activityEnergyCost"] == {"value": pytest.approx(
            s[phase]["energy_j"] / 3.6e6), "unit": "kWh"}
        assert by[phase]["co2CostEquivalent"]["value"] == pytest.approx(s[phase]["co2e_g"] / 1e6)
        props = {p["name"]: p["value"] for p in by[phase]["properties"]}
        assert props["carbonwatch:co2e_g_marginal"] == "unknown"  # no marginal signal here
        assert float(props["carbonwatch:embodied_co2e_g"]) == pytest.approx(
            s[phase]["embodied_co2e_g"])


def test_spdx_validates_and_carries_training_and_inference_energy(db):
    doc = json.loads(_report(db, "--format", "spdx"))
    assert _errors(spdx_validator(), doc) == []
    s = _statement(db)
    pkg = next(e for e in doc["@graph"] if e["type"] == "ai_AIPackage")
    assert pkg["name"] == MODEL and pkg["software_primaryPurpose"] == "model"
    energy = pkg["ai_energyConsumption"]
    train = energy["ai_trainingEnergyConsumption"][0]
    inf = energy["ai_inferenceEnergyConsumption"][0]
    assert train["ai_energyUnit"] == inf["ai_energyUnit"] == "kilowattHour"
    assert float(train["ai_energyQuantity"]) == pytest.approx(s["training"]["energy_j"] / 3.6e6)
    assert float(inf["ai_energyQuantity"]) == pytest.approx(s["inference"]["energy_j"] / 3.6e6)
    assert "g CO2e" in pkg["comment"]


def test_eu_ai_act_section_states_energy_method_measured_share_and_period(db):
    md = _report(db, "--format", "eu-ai-act")
    s = _statement(db)
    assert md.startswith(f"## Energy consumption of the model {MODEL} (EU AI Act, Annex XI")
    assert f"**Training energy:** {s['training']['energy_j'] / 3.6e6:,.3f} kWh" in md
    run = s["training"]["runs"][0]
    assert f"**Period:** {run['started']} to {run['ended']}" in md
    assert "**Measured vs estimated:** 100.0% of the training energy was measured" in md
    assert "and 0.0% estimated" in md
    assert "**Method:**" in md


def test_eu_ai_act_measured_share_equals_sql_on_a_mixed_store(tmp_path):
    """GPUs measured, CPUs estimated (tests/seed.py): the section's share is the SQL one."""
    import sqlite3

    from seed import SeedSpec, seed_store

    from carbonwatch.exports import euaiact

    db = tmp_path / "mixed.db"
    seed_store(db, SeedSpec())
    with sqlite3.connect(db) as conn:
        model, measured, total = conn.execute(
            "SELECT model, SUM(CASE WHEN provenance = 'measured' THEN energy_j ELSE 0 END), "
            "SUM(energy_j) FROM energy_minute WHERE phase = 'training' GROUP BY model "
            "ORDER BY model LIMIT 1").fetchone()
    assert 0 < measured < total  # the store really is mixed
    with open_store(db, read_only=True) as store:
        md = euaiact.render(model_statement(store, model))
    assert f"{measured / total:.1%} of the training energy was measured" in md
    assert f"and {1 - measured / total:.1%} estimated" in md
