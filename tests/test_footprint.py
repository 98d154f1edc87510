"""Embodied carbon (unknown, never 0, without a sourced figure), SCI terms against independent SQL
over the store, and payback: training (operational + embodied) against inference."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys

import pytest
from footprint_helpers import (
    A100,
    CALLS_PER_MINUTE,
    H200,
    INTENSITY,
    MODEL,
    PUE,
    SERVE_MINUTES,
    T0,
    build_store,
)

from carbonwatch.config import Settings
from carbonwatch.embodied import Amortisation, job_embodied, parse_overrides, table
from carbonwatch.errors import ConfigError, InputError
from carbonwatch.exports.sci import sci
from carbonwatch.statement import model_statement, render_markdown
from carbonwatch.store import open_store

# The shipped A100 figure, restated from its source (Luccioni et al. 2023): 150 kg CO2e, spread
# over 6 years at 85% use.
A100_G_PER_S = 150_000.0 / (6 * 365.25 * 24 * 3600 * 0.85)


@pytest.fixture(scope="module")
def db(tmp_path_factory):
    return build_store(tmp_path_factory.mktemp("footprint") / "fp.db")


def _report(db, *args, env=None):
    return subprocess.run(
        [sys.executable, "-m", "carbonwatch", "report", "--db", str(db), *args],
        capture_output=True, text=True, timeout=60,
        env={**{k: v for k, v in os.environ.items() if not k.startswith("CARBONWATCH_")},
             **(env or {})},
    )


def test_every_shipped_figure_names_its_source_and_date():
    assert table()
    for fig in table():
        assert fig.kgco2e > 0 and fig.source and fig.date and fig.url.startswith("https://")
    assert Amortisation().figure_for(H200) is None  # not sourced: unknown
    assert Amortisation().figure_for(A100).kgco2e == 150.0


def test_embodied_is_unknown_not_zero_for_a_device_model_without_a_figure(db):
    out = _report(db, "--json")
    assert out.returncode == 0, out.stderr
    jobs = {j["id"]: j for j in json.loads(out.stdout)["jobs"]}
    h200 = jobs["h200"]
    assert h200["energy_j"] > 0
    assert h200["embodied_co2e_g"] is None  # JSON null: unknown, not 0
    assert h200["footprint_provenance"]["embodied"]["devices_without_figure"] == [H200]
    # The training job used both: the A100's part is known (its share of the device-minutes
    # above idle: 12 kJ of 15 kJ each minute, 'other' keeping its 3 kJ), the H200 listed.
    train = jobs["train"]
    assert train["embodied_co2e_g"] == pytest.approx(60 * 60 * 0.8 * A100_G_PER_S, rel=1e-9)
    assert train["footprint_provenance"]["embodied"]["devices_without_figure"] == [H200]
    assert train["footprint_provenance"]["embodied"]["devices"]["gpu0"]["figure"]["source"]


def test_a_setting_overrides_the_figure_per_device_model(db):
    settings = Settings(embodied_kgco2e="*H200*=1000,*A100*=200", embodied_lifetime_years=4,
                        embodied_utilisation=0.5)
    with open_store(db, read_only=True) as store:
        got = job_embodied(store.conn, Amortisation.from_settings(settings), ["h200", "train"])
    rate = 1000e3 / (4 * 365.25 * 24 * 3600 * 0.5)
    assert got["h200"]["embodied_co2e_g"] == pytest.approx(30 * 60 * rate, rel=1e-9)
    assert got["h200"]["by_device"]["gpu1"]["figure"]["from"] == "setting"
    a100 = 200e3 / (4 * 365.25 * 24 * 3600 * 0.5)
    assert got["train"]["embodied_co2e_g"] == pytest.approx(
        3600 * 0.8 * a100 + 3600 * rate, rel=1e-9)
    # The environment form, through the CLI.
    out = _report(db, "--json", "--job", "h200", env={"CARBONWATCH_EMBODIED_KGCO2E": "*H200*=1000"})
    assert json.loads(out.stdout)["jobs"][0]["embodied_co2e_g"] > 0


@pytest.mark.parametrize("bad", ["*H200*", "=5", "*H200*=-1", "*H200*=lots"])
def test_bad_overrides_are_config_errors_naming_the_pair(bad):
    with pytest.raises(ConfigError, match="embodied_kgco2e"):
        parse_overrides(bad)
    with pytest.raises(ConfigError, match="embodied_utilisation"):
        Settings(embodied_utilisation=0).validate()


def _independent(db):
    """E, I and R straight from the tables; M from the devices' shares of each device-minute."""
    with sqlite3.connect(db) as conn:
        e_j, g = conn.execute(
            "SELECT SUM(energy_j), SUM(co2e_g) FROM energy_minute WHERE model = ? AND "
            "phase = 'inference'", [MODEL]).fetchone()
        calls, tokens_out = conn.execute(
            "SELECT SUM(calls), SUM(tokens_out) FROM call_minute WHERE model = ?",
            [MODEL]).fetchone()
        rows = conn.execute(
            """SELECT d.name, SUM(60.0 * e.energy_j / (SELECT SUM(x.energy_j) FROM energy_minute x
                   WHERE x.minute_s = e.minute_s AND x.device_id = e.device_id
                   AND x.consumer <> 'idle'))
               FROM energy_minute e JOIN devices d ON d.device_id = e.device_id
               WHERE e.model = ? AND e.phase = 'inference' GROUP BY d.name""",
            [MODEL]).fetchall()
    m = sum(s * A100_G_PER_S for name, s in rows if name == A100)
    return e_j / 3.6e6, g / (e_j / 3.6e6), m, calls, tokens_out


def test_sci_terms_equal_independent_sql_over_the_store(db):
    e_kwh, i, m, calls, tokens_out = _independent(db)
    assert i == pytest.approx(INTENSITY * PUE)
    with open_store(db, read_only=True) as store:
        s = model_statement(store, MODEL)
    terms = sci(s, "calls")
    assert terms["E_kwh"] == pytest.approx(e_kwh, rel=1e-12)
    assert terms["I_g_per_kwh"] == pytest.approx(i, rel=1e-12)
    assert terms["M_g"] == pytest.approx(m, rel=1e-9)
    assert terms["R"] == calls == SERVE_MINUTES * CALLS_PER_MINUTE
    assert terms["sci_g_per_unit"] == pytest.approx((e_kwh * i + m) / calls, rel=1e-9)
    tok = sci(s, "1k-output-tokens")  # every call reported tokens: the whole serving energy
    assert tok["R"] == pytest.approx(tokens_out / 1000)
    assert tok["sci_g_per_unit"] == pytest.approx((e_kwh * i + m) / (tokens_out / 1000))
    run = sci(s, "training-run")
    assert run["R"] == 1 and run["M_g"] == pytest.approx(3600 * 0.8 * A100_G_PER_S, rel=1e-9)
    assert run["provenance"]["M"]["devices_without_figure"] == [H200]
    with pytest.raises(InputError, match="functional unit"):
        sci(s, "per-banana")


def test_report_sci_and_the_api_agree_with_the_statement(db):
    out = _report(db, "--model", MODEL, "--format", "sci", "--functional-unit", "training-run",
                  "--json")
    assert out.returncode == 0, out.stderr
    terms = json.loads(out.stdout)
    assert terms["functional_unit"] == "training-run" and terms["R_unit"] == "training runs"
    md = _report(db, "--model", MODEL, "--format", "sci").stdout
    assert "| **SCI (gCO2e per unit)** |" in md and "| M (gCO2e, embodied) |" in md
    bad = _report(db, "--model", MODEL, "--format", "sci", "--functional-unit", "x")
    assert bad.returncode == 2 and "functional-unit" in bad.stderr


def test_payback_adds_embodied_to_training_and_dates_the_overtaking(db):
    with open_store(db, read_only=True) as store:
        s = model_statement(store, MODEL)
    pay = s["payback"]
    train_op = 60 * 18_000 / 3.6e6 * PUE * INTENSITY
    train_emb = 3600 * 0.8 * A100_G_PER_S
    inf_op = SERVE_MINUTES * 4_000 / 3.6e6 * PUE * INTENSITY
    inf_emb = SERVE_MINUTES * 60 * A100_G_PER_S  # served alone on the A100 above idle
    assert pay["training_co2e_g"] == pytest.approx(train_op + train_emb, rel=1e-9)
    assert pay["inference_co2e_g"] == pytest.approx(inf_op + inf_emb, rel=1e-9)
    calls = SERVE_MINUTES * CALLS_PER_MINUTE
    assert pay["inference_co2e_g_per_1k_calls"] == pytest.approx(
        (inf_op + inf_emb) / calls * 1000, rel=1e-9)
    assert pay["inference_co2e_g_per_1k_output_tokens"] == pytest.approx(
        (inf_op + inf_emb) / (calls * 50) * 1000, rel=1e-9)
    # Serving starts at T0 + 2 h and adds (inf_op + inf_emb) / 5 per hour: it passes training
    # during its fifth hour.
    per_hour = (inf_op + inf_emb) / (SERVE_MINUTES / 60)
    hours = next(h for h in range(1, 6) if h * per_hour >= train_op + train_emb)
    assert hours == 5
    from datetime import UTC, datetime
    expected = datetime.fromtimestamp(T0 + 7200 + hours * 3600, UTC)
    assert pay["inference_overtook_training_at"] == expected.isoformat().replace("+00:00", "Z")
    assert s["training"]["embodied_co2e_g"] == pytest.approx(train_emb, rel=1e-9)
    assert s["inference"]["per_1000_calls"]["embodied_co2e_g"] == pytest.approx(
        inf_emb / calls * 1000, rel=1e-9)
    # The calls' own share (3 kJ of the 4 kJ a minute the service drew) of the embodied carbon.
    assert s["inference"]["calls_only_per_1000_calls"]["embodied_co2e_g"] == pytest.approx(
        inf_emb * 0.75 / calls * 1000, rel=1e-9)
    md = render_markdown(s)
    assert "**Payback:**" in md and "**Embodied (manufacturing) carbon**" in md
    assert f"no sourced figure for {H200}" in md


def test_the_models_page_payback_follows_new_rows(tmp_path):
    """The dashboard caches the payback per store state: a new energy row changes it."""
    from footprint_helpers import _row

    from carbonwatch.dashboard.data.payback import model_payback

    db = build_store(tmp_path / "fp.db")
    before = model_payback(db, MODEL)
    assert model_payback(db, MODEL) == before
    with open_store(db) as store:
        store.add_energy_minutes([_row(T0 + 3 * 86400, "gpu0", "job:serve", "inference", 4_000.0)])
    after = model_payback(db, MODEL)
    assert after["inference_co2e_g"] == pytest.approx(
        before["inference_co2e_g"] + 4_000 / 3.6e6 * PUE * INTENSITY + 60 * A100_G_PER_S)


def test_the_figures_can_be_a_toml_table_and_bad_ones_stop_the_command(db, tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text('embodied_lifetime_years = 5\n[embodied_kgco2e]\n"*H200*" = 900\n')
    out = _report(db, "--config", str(cfg), "--json", "--job", "h200")
    assert out.returncode == 0, out.stderr
    rate = 900e3 / (5 * 365.25 * 24 * 3600 * 0.85)
    assert json.loads(out.stdout)["jobs"][0]["embodied_co2e_g"] == pytest.approx(30 * 60 * rate)
    bad = _report(db, "--json", env={"CARBONWATCH_EMBODIED_KGCO2E": "*H100*"})
    assert bad.returncode == 2 and "embodied_kgco2e: '*H100*' is not PATTERN=KG" in bad.stderr
