"""The per-model statement: its figures equal plain sums over the store, in JSON and markdown."""

from __future__ import annotations

import json
import sqlite3

import pytest
from seed import SeedSpec, seed_store

from carbonwatch.errors import InputError
from carbonwatch.statement import model_statement, render_markdown
from carbonwatch.store import open_store


@pytest.fixture(scope="module")
def seeded(tmp_path_factory: pytest.TempPathFactory):
    return seed_store(tmp_path_factory.mktemp("statement") / "s.db",
                      SeedSpec(days=1.5, gpus=2, training_jobs=4, calls=400_000))


def _sums(path, model):
    with sqlite3.connect(path) as conn:
        phases = dict((p, (e, g, c)) for p, e, g, c in conn.execute(
            "SELECT phase, SUM(energy_j), SUM(co2e_g), SUM(cost) FROM energy_minute "
            "WHERE model = ? GROUP BY phase", [model]))
        calls = conn.execute("SELECT SUM(calls), SUM(energy_j) FROM call_minute WHERE model = ?",
                             [model]).fetchone()
        runs = [r[0] for r in conn.execute(
            "SELECT id FROM jobs WHERE model = ? AND kind = 'training' ORDER BY started_s",
            [model])]
    return phases, calls, runs


@pytest.mark.parametrize("model", ["llama-ft", "whisper-s"])
def test_statement_figures_equal_sums_over_the_store(seeded, model):
    with open_store(seeded.path, read_only=True) as store:
        s = model_statement(store, model)
    phases, (calls, calls_energy), runs = _sums(seeded.path, model)
    for part in ("training", "inference"):
        energy, co2e, cost = phases[part]
        assert s[part]["energy_j"] == pytest.approx(energy, rel=1e-9)
        assert s[part]["co2e_g"] == pytest.approx(co2e, rel=1e-9)
        assert s[part]["cost"] == pytest.approx(cost, rel=1e-9)
    assert s["inference"]["calls"] == calls
    per = s["inference"]["per_1000_calls"]
    assert per["co2e_g"] == pytest.approx(phases["inference"][1] / calls * 1000, rel=1e-9)
    own = s["inference"]["calls_only_per_1000_calls"]
    assert own["energy_j"] == pytest.approx(calls_energy / calls * 1000, rel=1e-9)
    assert own["energy_j"] < per["energy_j"]  # energy between calls is not in the calls
    assert [r["id"] for r in s["training"]["runs"]] == runs
    assert s["totals"]["co2e_g"] == pytest.approx(phases["training"][1] + phases["inference"][1])
    assert s["provenance"]["measured_share"] > 0.9
    json.dumps(s)  # JSON as it stands


def test_markdown_is_a_model_card_section(seeded):
    with open_store(seeded.path, read_only=True) as store:
        s = model_statement(store, "llama-ft")
    md = render_markdown(s)
    assert md.startswith("## Energy and emissions: llama-ft")
    for needle in ("| Training (", "| Inference (", "**Total**", "Per 1,000 inference calls",
                   "### Training runs", "### Provenance", "### Methodology", "PUE 1.2"):
        assert needle in md
    assert f"{s['inference']['calls']:,} calls" in md


def test_unknown_model_is_an_input_error_naming_known_ones(seeded):
    with open_store(seeded.path, read_only=True) as store, pytest.raises(
            InputError, match="resnet50"):
        model_statement(store, "gpt-nothing")


def test_cost_is_unknown_when_no_price_was_configured(tmp_path):
    with open_store(tmp_path / "s.db") as store:
        store.insert_job(id="j1", name="t", kind="training", model="m", source="run",
                         status="finished", started_s=0.0, ended_s=120.0, energy_j=20.0,
                         co2e_g=2.0, cost=None)
        store.add_energy_minutes([dict(
            minute_s=m, device_id="gpu0", device_class="gpu", consumer="job:j1",
            phase="training", model="m", energy_j=10.0, co2e_g=1.0, cost=0.0,
            intensity_g_per_kwh=100.0, intensity_kind="static", provenance="estimated")
            for m in (0, 60)])
        s = model_statement(store, "m")
    assert s["training"]["cost"] is None and s["totals"]["cost"] is None
    assert s["inference"]["per_1000_calls"] is None
    md = render_markdown(s)
    assert "unknown" in md and "Per 1,000" not in md
