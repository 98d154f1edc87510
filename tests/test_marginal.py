"""Average and marginal side by side: an Electricity Maps-style average series and a WattTime-style
marginal (MOER) series for the same hours, each served by a real aiohttp server on 127.0.0.1
speaking its provider's JSON, give one real `carbonwatch run` job both co2e_g (average) and
co2e_g_marginal; without marginal points covering its minutes the marginal figure is unknown."""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime

import pytest
from aiohttp import web

from carbonwatch.config import Settings
from carbonwatch.errors import ConfigError
from carbonwatch.grid.signals import marginal_recorder, signal_of

AVERAGE_G_PER_KWH = 300.0
MOER_LB_PER_MWH = 1000.0
MOER_G_PER_KWH = MOER_LB_PER_MWH * 0.453592
AOER_LB_PER_MWH = 700.0  # WattTime's average operating emissions rate
ZONE = "CAISO_NORTH"


def _iso(t_s: float) -> str:
    return datetime.fromtimestamp(t_s, UTC).isoformat()


def em_app(hour_s: float) -> web.Application:
    """Electricity Maps v3: latest and forecast, hourly, average intensity."""

    async def latest(request: web.Request) -> web.Response:
        assert request.headers["auth-token"] == "em-token"
        return web.json_response({"zone": request.query["zone"],
                                  "carbonIntensity": AVERAGE_G_PER_KWH,
                                  "datetime": _iso(hour_s), "updatedAt": _iso(hour_s),
                                  "isEstimated": False})

    async def forecast(request: web.Request) -> web.Response:
        return web.json_response({"zone": request.query["zone"], "forecast": [
            {"carbonIntensity": AVERAGE_G_PER_KWH, "datetime": _iso(hour_s + h * 3600)}
            for h in range(-1, 3)], "updatedAt": _iso(hour_s)})

    app = web.Application()
    app.router.add_get("/v3/carbon-intensity/latest", latest)
    app.router.add_get("/v3/carbon-intensity/forecast", forecast)
    return app


def wt_app(hour_s: float) -> web.Application:
    """WattTime v3: login, then a 5-minute MOER (or AOER) forecast in lbs/MWh."""

    async def login(request: web.Request) -> web.Response:
        if request.headers.get("Authorization") != "Basic dXNlcjpwdw==":  # user:pw
            return web.Response(status=401)
        return web.json_response({"token": "wt-token"})

    async def forecast(request: web.Request) -> web.Response:
        if request.headers.get("Authorization") != "Bearer wt-token":
            return web.Response(status=401)
        signal = request.query["signal_type"]
        assert request.query["region"] == ZONE and signal in ("co2_moer", "co2_aoer")
        value = MOER_LB_PER_MWH if signal == "co2_moer" else AOER_LB_PER_MWH
        start = hour_s - 3600
        return web.json_response({
            "data": [{"point_time": _iso(start + 300 * k), "value": value}
                     for k in range(4 * 12)],
            "meta": {"data_point_period_seconds": 300, "region": ZONE,
                     "signal_type": signal, "units": "lbs_co2_per_mwh",
                     "generated_at": _iso(hour_s)}})

    app = web.Application()
    app.router.add_get("/login", login)
    app.router.add_get("/v3/forecast", forecast)
    return app


@contextmanager
def serving(*apps: web.Application) -> Iterator[list[str]]:
    """Real servers on 127.0.0.1, on a loop in a thread (the code under test runs its own)."""
    loop = asyncio.new_event_loop()
    runners: list[web.AppRunner] = []
    urls: list[str] = []

    async def start() -> None:
        for app in apps:
            runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
            await runner.setup()
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            runners.append(runner)
            urls.append(f"http://127.0.0.1:{runner.addresses[0][1]}")

    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    asyncio.run_coroutine_threadsafe(start(), loop).result(10)
    try:
        yield urls
    finally:
        async def stop() -> None:
            for r in runners:
                await r.cleanup()

        asyncio.run_coroutine_threadsafe(stop(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.close()


def _env(tmp_path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CARBONWATCH_")}
    env.update(CARBONWATCH_DB=str(tmp_path / "cw.db"), CARBONWATCH_BACKEND="none",
               CARBONWATCH_DAEMON_URL="none", CARBONWATCH_ZONE=ZONE,
               XDG_CONFIG_HOME=str(tmp_path / "cfg"), **extra)
    return env


def _cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "carbonwatch", *args], capture_output=True,
                          text=True, env=env, timeout=90)


def test_one_job_carries_the_average_and_the_marginal_figure(tmp_path):
    now_s = time.time()
    hour_s = now_s - now_s % 3600
    with serving(em_app(hour_s), wt_app(hour_s)) as (em_url, wt_url):
        env = _env(tmp_path, CARBONWATCH_PROVIDER="electricitymaps",
                   CARBONWATCH_PROVIDER_URL=em_url, CARBONWATCH_ELECTRICITYMAPS_TOKEN="em-token",
                   CARBONWATCH_MARGINAL_PROVIDER="watttime",
                   CARBONWATCH_MARGINAL_PROVIDER_URL=wt_url,
                   CARBONWATCH_WATTTIME_USERNAME="user", CARBONWATCH_WATTTIME_PASSWORD="pw")
        spin = "import time\nt = time.time()\nwhile time.time() - t < 0.6: pass\n"
        out = _cli(env, "run", "--json", "--", sys.executable, "-c", spin)
        assert out.returncode == 0, out.stderr
        run = json.loads(out.stdout)
    assert run["energy_j"] > 0
    assert run["provenance"]["carbon"]["intensity"] == "electricitymaps"
    assert run["co2e_g"] == pytest.approx(run["energy_j"] / 3.6e6 * AVERAGE_G_PER_KWH)
    # `carbonwatch run` itself says both.
    assert run["co2e_g_marginal"] == pytest.approx(run["energy_j"] / 3.6e6 * MOER_G_PER_KWH)

    with sqlite3.connect(tmp_path / "cw.db") as conn:
        signals = dict(conn.execute(
            "SELECT provider, signal FROM intensity_points GROUP BY provider").fetchall())
    assert signals == {"electricitymaps": "average", "watttime": "marginal"}

    report = _cli(env, "report", "--json", "--job", run["job_id"])
    assert report.returncode == 0, report.stderr
    job = json.loads(report.stdout)["jobs"][0]
    assert job["co2e_g"] == pytest.approx(run["energy_j"] / 3.6e6 * AVERAGE_G_PER_KWH)
    assert job["co2e_g_marginal"] == pytest.approx(run["energy_j"] / 3.6e6 * MOER_G_PER_KWH)
    assert job["footprint_provenance"]["marginal"] == {"coverage": pytest.approx(1.0),
                                                       "zones": [ZONE]}

    # Without marginal points over its minutes the figure is unknown, not the average's.
    with sqlite3.connect(tmp_path / "cw.db") as conn:
        conn.execute("DELETE FROM intensity_points WHERE signal = 'marginal'")
    job = json.loads(_cli(env, "report", "--json", "--job", run["job_id"]).stdout)["jobs"][0]
    assert job["co2e_g_marginal"] is None
    assert job["footprint_provenance"]["marginal"]["coverage"] == 0.0


def test_one_provider_giving_both_signals_gives_both_figures(tmp_path):
    """WattTime alone: its AOER (average) costs co2e_g, its MOER gives co2e_g_marginal."""
    now_s = time.time()
    hour_s = now_s - now_s % 3600
    with serving(wt_app(hour_s)) as (wt_url,):
        env = _env(tmp_path, CARBONWATCH_PROVIDER="watttime-aoer",
                   CARBONWATCH_PROVIDER_URL=wt_url, CARBONWATCH_MARGINAL_PROVIDER="watttime",
                   CARBONWATCH_MARGINAL_PROVIDER_URL=wt_url,
                   CARBONWATCH_WATTTIME_USERNAME="user", CARBONWATCH_WATTTIME_PASSWORD="pw")
        spin = "import time\nt = time.time()\nwhile time.time() - t < 0.6: pass\n"
        out = _cli(env, "run", "--json", "--", sys.executable, "-c", spin)
        assert out.returncode == 0, out.stderr
        run = json.loads(out.stdout)
        job = json.loads(_cli(env, "report", "--json", "--job", run["job_id"]).stdout)["jobs"][0]
    kwh = run["energy_j"] / 3.6e6
    assert run["provenance"]["carbon"]["intensity"] == "watttime-aoer"
    assert job["co2e_g"] == pytest.approx(kwh * AOER_LB_PER_MWH * 0.453592)
    assert job["co2e_g_marginal"] == pytest.approx(kwh * MOER_G_PER_KWH)
    with sqlite3.connect(tmp_path / "cw.db") as conn:
        signals = dict(conn.execute(
            "SELECT provider, signal FROM intensity_points GROUP BY provider").fetchall())
    assert signals == {"watttime-aoer": "average", "watttime": "marginal"}


def test_only_a_marginal_provider_can_be_the_marginal_provider(tmp_path):
    assert signal_of("watttime") == "marginal" and signal_of("electricitymaps") == "average"
    assert signal_of("watttime-aoer") == "average"
    with pytest.raises(ConfigError, match="gives no marginal signal"):
        marginal_recorder(Settings(marginal_provider="electricitymaps", zone=ZONE))
    with pytest.raises(ConfigError, match="needs a zone"):
        marginal_recorder(Settings(marginal_provider="watttime"))
