"""Accounting with the grid's time series: each interval costed at its own intensity (provider
series over cached and fetched points, static where none covers), and minutes first costed with
a forecast corrected when actuals arrive, the forecast figure kept."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from carbonwatch.clock import ManualClock
from carbonwatch.config import Settings
from carbonwatch.errors import ConfigError
from carbonwatch.grid.cache import IntensityCache
from carbonwatch.grid.csvseries import CsvProvider
from carbonwatch.grid.feed import AccountingSource, accounting_source, update_with_actuals
from carbonwatch.grid.static import StaticSource
from carbonwatch.grid.types import IntensityPoint
from carbonwatch.store import open_store
from carbonwatch.times import iso_utc

NOW_S = 1_780_000_020.0  # 20 s into a minute
HOUR_S = 3600.0


def _csv(path: Path, start_s: float, values: list[float], step_s: float = HOUR_S) -> Path:
    lines = ["timestamp,carbon_intensity"]
    lines += [f"{iso_utc(start_s + i * step_s)},{v}" for i, v in enumerate(values)]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_static_provider_is_the_static_average_with_no_thread():
    source = accounting_source(Settings(country="FRA"))
    assert isinstance(source, StaticSource)
    assert source.intensity_at(NOW_S).kind == "static"


def test_a_provider_without_a_zone_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="needs a zone"):
        accounting_source(Settings(provider="csv", provider_url=str(tmp_path / "x.csv")))


def test_series_answers_per_interval_and_static_outside_it_and_fills_the_cache(tmp_path):
    hour0 = NOW_S - NOW_S % HOUR_S
    csv = _csv(tmp_path / "f.csv", hour0, [100.0, 300.0])
    clock = ManualClock(NOW_S)
    db = tmp_path / "cw.db"
    static = StaticSource(
        IntensityPoint(0, math.inf, 999.0, "static", "average", "codecarbon-static:t", "X", None)
    )
    source = AccountingSource(
        CsvProvider(str(csv), clock=clock), "CISO", static, cache_path=db, clock=clock
    )
    assert source.refresh()
    assert source.intensity_at(hour0 + 10).intensity_g_per_kwh == 100.0
    assert source.intensity_at(hour0 + HOUR_S + 10).intensity_g_per_kwh == 300.0
    later = source.intensity_at(hour0 + 3 * HOUR_S)
    assert (later.kind, later.intensity_g_per_kwh) == ("static", 999.0)

    # The fetch went to the store: a source whose provider now fails still answers from it.
    csv.unlink()
    again = AccountingSource(
        CsvProvider(str(csv), clock=clock), "CISO", static, cache_path=db, clock=clock
    )
    assert again.load_cached() == 2
    assert not again.refresh() and "cannot read" in again.errors[-1]
    assert again.intensity_at(hour0 + HOUR_S + 10).intensity_g_per_kwh == 300.0


def test_carbonwatch_run_costs_each_minute_at_the_series_intensity(tmp_path):
    """A real `carbonwatch run` with the csv provider: minute rows carry the forecast value,
    and the job's gCO2e is its energy times it."""
    now_s = time.time()
    csv = _csv(tmp_path / "f.csv", now_s - 600, [250.0] * 4, step_s=600)
    env = {k: v for k, v in os.environ.items() if not k.startswith("CARBONWATCH_")}
    env.update(
        CARBONWATCH_DB=str(tmp_path / "cw.db"),
        CARBONWATCH_BACKEND="none",
        CARBONWATCH_PROVIDER="csv",
        CARBONWATCH_PROVIDER_URL=str(csv),
        CARBONWATCH_ZONE="CISO",
        CARBONWATCH_DAEMON_URL="none",
        XDG_CONFIG_HOME=str(tmp_path / "cfg"),
    )
    spin = "import time\nt = time.time()\nwhile time.time() - t < 0.6: pass\n"
    out = subprocess.run(
        [sys.executable, "-m", "carbonwatch", "run", "--json", "--", sys.executable, "-c", spin],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["provenance"]["carbon"]["kind"] == "forecast"
    assert result["provenance"]["carbon"]["intensity"] == "csv"
    assert result["co2e_g"] == pytest.approx(result["energy_j"] / 3.6e6 * 250.0)
    with open_store(tmp_path / "cw.db", read_only=True) as store:
        kinds = {r["intensity_kind"] for r in store.db.query("SELECT * FROM energy_minute")}
        assert kinds == {"forecast"}
        assert IntensityCache(store.db).points("CISO", "csv", now_s - 600, now_s + 1800)


def _minute(
    minute_s: int, consumer: str, energy_j: float, intensity: float, kind: str = "forecast"
) -> dict:
    return {
        "minute_s": minute_s,
        "device_id": "cpu",
        "device_class": "cpu",
        "consumer": consumer,
        "phase": "training",
        "model": "",
        "energy_j": energy_j,
        "co2e_g": energy_j / 3.6e6 * 1.5 * intensity,
        "cost": 0.0,
        "intensity_g_per_kwh": intensity,
        "intensity_kind": kind,
        "provenance": "measured",
    }


def test_actuals_replace_forecast_figures_and_keep_them(tmp_path):
    t0 = 1_780_000_000 - 1_780_000_000 % 3600
    with open_store(tmp_path / "cw.db") as store:
        store.insert_job(
            id="j1",
            name="train",
            kind="training",
            source="run",
            status="finished",
            started_s=t0,
            ended_s=t0 + 180,
        )
        rows = [
            _minute(t0, "job:j1", 3.6e6, 200.0),
            _minute(t0 + 60, "job:j1", 3.6e6, 200.0),
            _minute(t0 + 120, "idle", 7.2e6, 200.0),
            _minute(t0 + 3600, "job:j1", 3.6e6, 200.0),  # no actual covers this hour
            _minute(t0 + 60, "other", 3.6e6, 50.0, kind="static"),
        ]
        store.add_energy_minutes(rows)
        store.update_job("j1", co2e_g=sum(r["co2e_g"] for r in rows if r["consumer"] == "job:j1"))
        # Actuals for the first hour (the forecast said 200, it was 100), a newer fetch.
        actual = IntensityPoint(t0, t0 + 3600, 100.0, "actual", "average", "csv", "CISO", t0 + 7200)
        IntensityCache(store.db).save([actual])

        assert update_with_actuals(store, "CISO", "csv", pue=1.5) == 3
        got = {
            (r["minute_s"], r["consumer"]): r for r in store.db.query("SELECT * FROM energy_minute")
        }
        first = got[(t0, "job:j1")]
        assert first["intensity_kind"] == "actual" and first["intensity_g_per_kwh"] == 100.0
        assert first["co2e_g"] == pytest.approx(1.5 * 100.0)  # 1 kWh x PUE 1.5 x 100 g/kWh
        assert first["co2e_g_forecast"] == pytest.approx(1.5 * 200.0)
        assert got[(t0 + 120, "idle")]["co2e_g"] == pytest.approx(2 * 1.5 * 100.0)
        untouched = got[(t0 + 3600, "job:j1")]
        assert (untouched["intensity_kind"], untouched["co2e_g_forecast"]) == ("forecast", None)
        assert got[(t0 + 60, "other")]["co2e_g_forecast"] is None  # static: never a forecast
        # The job's total moved with its minutes; the hour rollups follow the minutes.
        job_g = store.job("j1")["co2e_g"]
        assert job_g == pytest.approx(1.5 * (100 + 100 + 200))
        minute_g, hour_g = store.conn.execute(
            "SELECT (SELECT SUM(co2e_g) FROM energy_minute), (SELECT SUM(co2e_g) FROM energy_hour)"
        ).fetchone()
        assert hour_g == pytest.approx(minute_g)
        # Again: nothing left to correct, and the forecast figures stay as first recorded.
        assert update_with_actuals(store, "CISO", "csv", pue=1.5) == 0
        assert store.db.query(
            "SELECT co2e_g_forecast FROM energy_minute WHERE minute_s = ? AND consumer = ?",
            [t0, "job:j1"],
        ).__next__()["co2e_g_forecast"] == pytest.approx(300.0)


def test_a_minute_only_partly_covered_by_actuals_stays_forecast(tmp_path):
    t0 = 1_780_000_000 - 1_780_000_000 % 3600
    with open_store(tmp_path / "cw.db") as store:
        store.add_energy_minutes([_minute(t0, "idle", 3.6e6, 200.0)])
        IntensityCache(store.db).save(
            [IntensityPoint(t0 + 30, t0 + 90, 100.0, "actual", "average", "csv", "CISO", t0)]
        )
        assert update_with_actuals(store, "CISO", "csv") == 0
