"""``carbonwatch intensity``, ``plan`` and ``estimate`` through click, with --json."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from click.testing import CliRunner

from carbonwatch.cli.grid import estimate_cmd, intensity_cmd, plan_cmd

CISO = Path(__file__).parent / "fixtures" / "eia930" / "CISO_NG_avgCI.csv"


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    """A clean environment: no user config, store in tmp_path."""
    return {
        "XDG_CONFIG_HOME": str(tmp_path / "config"),
        "XDG_DATA_HOME": str(tmp_path / "data"),
        "CARBONWATCH_DB": str(tmp_path / "cw.db"),
        "CARBONWATCH_CONFIG": "",
        "CARBONWATCH_PROVIDER": "",
        "CARBONWATCH_COUNTRY": "",
        "CARBONWATCH_ELECTRICITYMAPS_TOKEN": "tok",
    }


def invoke(cmd: Any, args: list[str], env: dict[str, str]) -> dict[str, Any]:
    result = CliRunner().invoke(cmd, [*args, "--json"], env=env, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


@pytest.fixture
def em_server() -> Iterator[dict[str, Any]]:
    """An Electricity Maps look-alike in a thread (the CLI runs its own event loop)."""
    now = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    hours = [now + timedelta(hours=h) for h in range(24)]
    state: dict[str, Any] = {"fail": False}

    async def latest(request: web.Request) -> web.Response:
        if state["fail"]:
            return web.Response(status=500)
        return web.json_response(
            {
                "zone": "DE",
                "carbonIntensity": 321,
                "datetime": now.isoformat().replace("+00:00", "Z"),
            }
        )

    async def forecast(request: web.Request) -> web.Response:
        if state["fail"]:
            return web.Response(status=500)
        rows = [
            {"carbonIntensity": 500 - 200 * (5 <= i < 9), "datetime": h.isoformat()}
            for i, h in enumerate(hours)
        ]
        return web.json_response({"zone": "DE", "forecast": rows})

    loop = asyncio.new_event_loop()
    app = web.Application()
    app.router.add_get("/v3/carbon-intensity/latest", latest)
    app.router.add_get("/v3/carbon-intensity/forecast", forecast)
    runner = web.AppRunner(app, access_log=None)
    loop.run_until_complete(runner.setup())
    site = web.TCPSite(runner, "127.0.0.1", 0)
    loop.run_until_complete(site.start())
    state["url"] = f"http://127.0.0.1:{runner.addresses[0][1]}"
    state["now"] = now
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    yield state
    loop.call_soon_threadsafe(loop.stop)
    thread.join(5)
    loop.run_until_complete(runner.cleanup())
    loop.close()


def test_intensity_json_from_a_provider_then_from_the_cache(env, em_server) -> None:
    args = ["--zone", "DE", "--provider", "electricitymaps", "--provider-url", em_server["url"]]
    out = invoke(intensity_cmd, [*args, "--forecast"], env)
    assert out["via"] == "provider" and len(out["points"]) == 24
    first = out["points"][0]
    assert first["start"] == em_server["now"].strftime("%Y-%m-%dT%H:%M:%SZ")
    assert first["intensity_g_per_kwh"] == 500
    assert first["provenance"]["provider"] == "electricitymaps"
    assert first["provenance"]["kind"] == "forecast" and first["provenance"]["fetched_at"]

    em_server["fail"] = True
    cached = invoke(intensity_cmd, args, env)
    assert cached["via"] == "cache"
    assert cached["points"][0]["intensity_g_per_kwh"] == 500
    assert any("HTTP 500" in e for e in cached["errors"])


def test_intensity_falls_back_to_static_for_the_zone_country(env) -> None:
    args = ["--zone", "DE", "--provider", "electricitymaps", "--provider-url", "http://127.0.0.1:9"]
    out = invoke(intensity_cmd, args, env)
    assert out["via"] == "static"
    assert out["points"][0]["provenance"]["zone"] == "DEU"
    assert out["points"][0]["provenance"]["kind"] == "static"


def test_plan_on_a_forecast_file(env) -> None:
    args = [
        "--duration",
        "4h",
        "--start",
        "2022-06-01T09:00:00Z",
        "--deadline",
        "+24h",
        "--forecast",
        str(CISO),
    ]
    out = invoke(plan_cmd, args, env)
    assert out["windows"] == [{"start": "2022-06-01T15:00:00Z", "end": "2022-06-01T19:00:00Z"}]
    assert out["mean_intensity_g_per_kwh"] < out["baseline_intensity_g_per_kwh"]
    split = invoke(plan_cmd, [*args, "--interruptible"], env)
    assert split["mean_intensity_g_per_kwh"] <= out["mean_intensity_g_per_kwh"]


def test_plan_from_a_zone_forecast(env, em_server) -> None:
    args = [
        "--duration",
        "2h",
        "--deadline",
        "+20h",
        "--zone",
        "DE",
        "--provider",
        "electricitymaps",
        "--provider-url",
        em_server["url"],
    ]
    out = invoke(plan_cmd, args, env)
    assert out["basis"] == "forecast"
    assert out["mean_intensity_g_per_kwh"] == 300
    assert out["windows"][0]["start"] == (em_server["now"] + timedelta(hours=5)).strftime(
        "%Y-%m-%dT%H:%M:%SZ"
    )


def test_plan_without_forecast_runs_at_the_latest_safe_start(env) -> None:
    args = [
        "--duration",
        "2h",
        "--start",
        "2030-01-01T00:00:00Z",
        "--deadline",
        "+10h",
        "--zone",
        "DE",
    ]
    out = invoke(plan_cmd, args, env)
    assert out["basis"] == "no_forecast"
    assert out["windows"] == [{"start": "2030-01-01T08:00:00Z", "end": "2030-01-01T10:00:00Z"}]


def test_plan_rejects_an_impossible_deadline(env) -> None:
    result = CliRunner().invoke(
        plan_cmd,
        [
            "--duration",
            "5h",
            "--start",
            "2030-01-01T00:00:00Z",
            "--deadline",
            "+2h",
            "--forecast",
            str(CISO),
        ],
        env=env,
    )
    assert result.exit_code == 2
    assert "only 7200 s" in result.output


def test_estimate_by_country(env) -> None:
    out = invoke(
        estimate_cmd, ["--gpu", "H100", "--count", "8", "--hours", "10", "--country", "FR"], env
    )
    assert out["estimate"] is True
    assert (out["gpu"], out["tdp_w"]) == ("h100-sxm", 700.0)
    assert out["energy_kwh"] == pytest.approx(56.0)
    assert out["co2e_g"] == pytest.approx(56.0 * out["intensity_g_per_kwh"])
    assert out["provenance"]["kind"] == "static"
    assert out["best_window"] is None


def test_estimate_by_zone_with_best_window(env, em_server) -> None:
    args = [
        "--gpu",
        "a100-pcie",
        "--hours",
        "2",
        "--zone",
        "DE",
        "--provider",
        "electricitymaps",
        "--provider-url",
        em_server["url"],
    ]
    out = invoke(estimate_cmd, args, env)
    assert out["intensity_g_per_kwh"] == 321
    assert out["energy_kwh"] == pytest.approx(0.6)
    assert out["best_window"]["mean_intensity_g_per_kwh"] == 300
    assert out["best_window"]["co2e_g"] == pytest.approx(0.6 * 300)


def test_estimate_unknown_gpu_or_country_is_a_clear_error(env) -> None:
    for args in (
        ["--gpu", "Z9000", "--hours", "1", "--country", "FR"],
        ["--gpu", "H100", "--hours", "1", "--country", "XX"],
    ):
        result = CliRunner().invoke(estimate_cmd, args, env=env)
        assert result.exit_code == 2
        assert "carbonwatch: error:" in result.output
