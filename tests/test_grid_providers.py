"""Each grid provider against a real aiohttp server on 127.0.0.1 speaking its documented JSON,
and every way a provider can fail: timeouts, 401, 429 + Retry-After, 500, truncated JSON, NaN,
negative values. Failures must be ProviderError with a clear message, never a crash or a point."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from aiohttp import web

from carbonwatch.clock import ManualClock
from carbonwatch.errors import ProviderError
from carbonwatch.grid.carbonaware import CarbonAwareSdk
from carbonwatch.grid.csvseries import CsvProvider
from carbonwatch.grid.electricitymaps import ElectricityMaps
from carbonwatch.grid.http import HttpPolicy, fetch_json, retry_after_s
from carbonwatch.grid.ukgrid import UkGrid
from carbonwatch.grid.watttime import WattTime
from carbonwatch.times import parse_feed_time_s

NOW_S = parse_feed_time_s("2026-06-01T12:10:00Z", "test")
FAST = HttpPolicy(timeout_s=0.3, max_attempts=3, backoff_s=0.01, max_retry_after_s=5.0)
TOKEN = "sekrit-token-123"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@contextlib.asynccontextmanager
async def serve(routes: dict[str, Handler]) -> AsyncIterator[str]:
    app = web.Application()
    for path, handler in routes.items():
        app.router.add_get(path, handler)
    runner = web.AppRunner(
        app, shutdown_timeout=0.1, access_log=None
    )  # server-side log is not ours
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


def run(coro: Awaitable[Any]) -> Any:
    return asyncio.run(coro)  # type: ignore[arg-type]


def json_handler(body: Any, seen: list[web.Request] | None = None) -> Handler:
    async def handler(request: web.Request) -> web.Response:
        if seen is not None:
            seen.append(request)
        return web.json_response(body)

    return handler


class Sleeps:
    """Records the delays asked for, without waiting them out."""

    def __init__(self) -> None:
        self.asked_s: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.asked_s.append(seconds)


# --- Electricity Maps ---------------------------------------------------------------------------

EM_LATEST = {
    "zone": "DE",
    "carbonIntensity": 302,
    "datetime": "2026-06-01T12:00:00.000Z",
    "updatedAt": "2026-06-01T12:05:33.425Z",
    "createdAt": "2026-05-29T12:07:00.000Z",
    "emissionFactorType": "lifecycle",
    "isEstimated": True,
    "estimationMethod": "TIME_SLICER_AVERAGE",
}
EM_FORECAST = {
    "zone": "DE",
    "forecast": [
        {"carbonIntensity": 310, "datetime": "2026-06-01T13:00:00.000Z"},
        {"carbonIntensity": 280, "datetime": "2026-06-01T14:00:00.000Z"},
        {"carbonIntensity": 250, "datetime": "2026-06-01T15:00:00.000Z"},
    ],
    "updatedAt": "2026-06-01T12:00:00.000Z",
}
EM_HISTORY = {
    "zone": "DE",
    "history": [
        dict(EM_LATEST, datetime="2026-06-01T11:00:00.000Z"),
        dict(EM_LATEST, carbonIntensity=None),
        EM_LATEST,
    ],
}


def em(url: str, sleep: Sleeps | None = None) -> ElectricityMaps:
    return ElectricityMaps(
        TOKEN, base_url=url, policy=FAST, clock=ManualClock(NOW_S), sleep=sleep or Sleeps()
    )


def test_electricitymaps_latest_forecast_history_with_auth_token_header() -> None:
    seen: list[web.Request] = []

    async def main() -> None:
        routes = {
            "/v3/carbon-intensity/latest": json_handler(EM_LATEST, seen),
            "/v3/carbon-intensity/forecast": json_handler(EM_FORECAST, seen),
            "/v3/carbon-intensity/history": json_handler(EM_HISTORY, seen),
        }
        async with serve(routes) as url:
            latest = await em(url).latest("DE")
            forecast = await em(url).forecast("DE")
            history = await em(url).history("DE")
        assert latest.intensity_g_per_kwh == 302
        assert (latest.kind, latest.signal, latest.provider) == (
            "actual",
            "average",
            "electricitymaps",
        )
        assert latest.start_s == parse_feed_time_s("2026-06-01T12:00:00Z", "t")
        assert latest.end_s - latest.start_s == 3600
        assert latest.fetched_at_s == NOW_S
        assert [p.intensity_g_per_kwh for p in forecast] == [310, 280, 250]
        assert all(p.kind == "forecast" for p in forecast)
        assert forecast[0].end_s == forecast[1].start_s
        assert len(history) == 2  # the null hour is a gap, not a zero
        assert all(r.headers["auth-token"] == TOKEN for r in seen)
        assert all(r.query["zone"] == "DE" for r in seen)

    run(main())


def test_electricitymaps_without_token_fails_before_any_request() -> None:
    provider = ElectricityMaps("", base_url="http://127.0.0.1:9", policy=FAST)
    with pytest.raises(ProviderError, match="no API token"):
        run(provider.latest("DE"))


def failing(status: int, headers: dict[str, str] | None = None, body: str = "{}") -> Handler:
    async def handler(request: web.Request) -> web.Response:
        return web.Response(status=status, text=body, headers=headers)

    return handler


@pytest.mark.parametrize(
    ("handler", "message"),
    [
        (failing(401), "HTTP 401, credentials rejected"),
        (failing(500), "HTTP 500 after 3 attempt"),
        (failing(404), "HTTP 404"),
        (failing(200, body='{"zone": "DE", "carbonIntensity": 30'), "not valid JSON"),
        (
            failing(
                200,
                body='{"zone": "DE", "carbonIntensity": NaN, "datetime": "2026-06-01T12:00:00Z"}',
            ),
            "non-number NaN",
        ),
        (json_handler(dict(EM_LATEST, carbonIntensity=-5)), "negative"),
        (json_handler(dict(EM_LATEST, carbonIntensity="302")), "must be a number"),
        (json_handler({"zone": "DE"}), "lacks the field 'datetime'"),
        (json_handler(dict(EM_LATEST, datetime="yesterday")), "cannot parse time"),
    ],
)
def test_electricitymaps_failures_are_clear_provider_errors(handler: Handler, message: str) -> None:
    async def main() -> None:
        async with serve({"/v3/carbon-intensity/latest": handler}) as url:
            await em(url).latest("DE")

    with pytest.raises(ProviderError, match=message) as info:
        run(main())
    assert TOKEN not in str(info.value)
    assert "electricitymaps" in str(info.value)


def test_timeout_is_retried_then_reported() -> None:
    calls = 0

    async def slow(request: web.Request) -> web.Response:
        nonlocal calls
        calls += 1
        await asyncio.sleep(2)
        return web.json_response(EM_LATEST)

    async def main() -> None:
        async with serve({"/v3/carbon-intensity/latest": slow}) as url:
            await em(url).latest("DE")

    with pytest.raises(ProviderError, match=r"timed out after 0.3 s after 3 attempt"):
        run(main())
    assert calls == 3


def test_429_retry_after_is_honoured_then_succeeds() -> None:
    calls = 0

    async def limited(request: web.Request) -> web.Response:
        nonlocal calls
        calls += 1
        if calls == 1:
            return web.Response(status=429, headers={"Retry-After": "2"})
        return web.json_response(EM_LATEST)

    sleeps = Sleeps()

    async def main() -> float:
        async with serve({"/v3/carbon-intensity/latest": limited}) as url:
            return (await em(url, sleeps).latest("DE")).intensity_g_per_kwh

    assert run(main()) == 302
    assert sleeps.asked_s == [2.0]  # the server's delay, not our own backoff


def test_429_with_retry_after_beyond_the_bound_gives_up_at_once() -> None:
    sleeps = Sleeps()

    async def main() -> None:
        handler = failing(429, {"Retry-After": "3600"})
        async with serve({"/v3/carbon-intensity/latest": handler}) as url:
            await em(url, sleeps).latest("DE")

    with pytest.raises(ProviderError, match="retry after 3600 s"):
        run(main())
    assert sleeps.asked_s == []


def test_500_backs_off_exponentially() -> None:
    sleeps = Sleeps()

    async def main() -> None:
        async with serve({"/v3/carbon-intensity/latest": failing(503)}) as url:
            await em(url, sleeps).latest("DE")

    with pytest.raises(ProviderError, match="HTTP 503"):
        run(main())
    assert sleeps.asked_s == [0.01, 0.02]


def test_connection_refused_is_a_provider_error() -> None:
    with pytest.raises(ProviderError, match="connection failed"):
        run(em("http://127.0.0.1:9").latest("DE"))


def test_retry_after_http_date() -> None:
    assert retry_after_s("Wed, 21 Oct 2015 07:28:00 GMT", now_s=1445412470.0) == 10.0
    assert retry_after_s("soon") is None


def test_keys_never_reach_the_log(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)

    async def main() -> None:
        async with serve({"/v3/carbon-intensity/latest": failing(401)}) as url:
            with contextlib.suppress(ProviderError):
                await em(url).latest("DE")
            with contextlib.suppress(ProviderError):
                await fetch_json(
                    "x", f"{url}/v3/carbon-intensity/latest?token={TOKEN}", policy=FAST
                )

    run(main())
    assert TOKEN not in caplog.text


# --- WattTime ---------------------------------------------------------------------------------

WT_FORECAST = {
    "data": [
        {"point_time": "2026-06-01T12:10:00+00:00", "value": 1000.0, "version": "3.2"},
        {"point_time": "2026-06-01T12:15:00+00:00", "value": 900.0, "version": "3.2"},
        {"point_time": "2026-06-01T12:20:00+00:00", "value": 800.0, "version": "3.2"},
    ],
    "meta": {
        "data_point_period_seconds": 300,
        "region": "CAISO_NORTH",
        "warnings": [],
        "signal_type": "co2_moer",
        "model": {"date": "2026-03-01", "type": "binned_regression"},
        "units": "lbs_co2_per_mwh",
        "generated_at_period_seconds": 300,
        "generated_at": "2026-06-01T12:10:00+00:00",
    },
}


def watttime_routes(logins: list[web.Request], state: dict[str, Any]) -> dict[str, Handler]:
    """``state``: "issue" (tokens to hand out, in order) and "valid" (the one accepted now)."""

    async def login(request: web.Request) -> web.Response:
        logins.append(request)
        if request.headers.get("Authorization") != "Basic dXNlcjpwdw==":  # user:pw
            return web.Response(status=401)
        state["valid"] = state["issue"].pop(0)
        return web.json_response({"token": state["valid"]})

    async def forecast(request: web.Request) -> web.Response:
        if request.headers.get("Authorization") != f"Bearer {state['valid']}":
            return web.Response(status=401)
        assert request.query["region"] == "CAISO_NORTH"
        assert request.query["signal_type"] == "co2_moer"
        return web.json_response(WT_FORECAST)

    async def index(request: web.Request) -> web.Response:
        body = {
            "data": [{"point_time": "2026-06-01T12:10:00+00:00", "value": 42.0}],
            "meta": {"units": "percentile", "signal_type": "co2_moer"},
        }
        return web.json_response(body)

    return {"/login": login, "/v3/forecast": forecast, "/v3/signal-index": index}


def test_watttime_logs_in_converts_lbs_per_mwh_and_labels_marginal() -> None:
    logins: list[web.Request] = []

    async def main() -> None:
        async with serve(watttime_routes(logins, {"issue": ["t1"]})) as url:
            wt = WattTime("user", "pw", base_url=url, policy=FAST, clock=ManualClock(NOW_S))
            points = await wt.forecast("CAISO_NORTH")
            latest = await wt.latest("CAISO_NORTH")
            pct = await wt.signal_index_pct("CAISO_NORTH")
        assert len(logins) == 1  # the token is reused
        assert [p.intensity_g_per_kwh for p in points] == pytest.approx(
            [453.592, 408.2328, 362.8736]
        )
        assert all(p.signal == "marginal" and p.kind == "forecast" for p in points)
        assert points[0].end_s - points[0].start_s == 300
        assert latest.intensity_g_per_kwh == pytest.approx(453.592)
        assert pct == 42.0

    run(main())


def test_watttime_logs_in_again_when_a_cached_token_is_rejected() -> None:
    logins: list[web.Request] = []

    async def main() -> None:
        state: dict[str, Any] = {"issue": ["t1", "t2"]}
        async with serve(watttime_routes(logins, state)) as url:
            wt = WattTime("user", "pw", base_url=url, policy=FAST, clock=ManualClock(NOW_S))
            await wt.forecast("CAISO_NORTH")
            state["valid"] = "revoked"  # the server drops t1 before it expires
            points = await wt.forecast("CAISO_NORTH")
        assert len(points) == 3
        assert state["valid"] == "t2"

    run(main())
    assert len(logins) == 2


def test_watttime_bad_password_is_a_clear_error() -> None:
    async def main() -> None:
        async with serve(watttime_routes([], {"issue": ["t1"]})) as url:
            await WattTime("user", "wrong", base_url=url, policy=FAST).forecast("CAISO_NORTH")

    with pytest.raises(ProviderError, match="credentials rejected") as info:
        run(main())
    assert "wrong" not in str(info.value)


def test_watttime_rejects_unknown_units() -> None:
    body = {"data": WT_FORECAST["data"], "meta": {"units": "percentile"}}

    async def main() -> None:
        routes = {"/login": json_handler({"token": "t"}), "/v3/forecast": json_handler(body)}
        async with serve(routes) as url:
            await WattTime("u", "p", base_url=url, policy=FAST).forecast("CAISO_NORTH")

    with pytest.raises(ProviderError, match="unexpected units"):
        run(main())


# --- GB Carbon Intensity API --------------------------------------------------------------------

UK_PERIODS = [
    {
        "from": "2026-06-01T12:00Z",
        "to": "2026-06-01T12:30Z",
        "intensity": {"forecast": 180, "actual": 175, "index": "moderate"},
    },
    {
        "from": "2026-06-01T12:30Z",
        "to": "2026-06-01T13:00Z",
        "intensity": {"forecast": 170, "actual": None, "index": "moderate"},
    },
]
UK_REGIONAL = [
    {
        "from": "2026-06-01T12:00Z",
        "to": "2026-06-01T12:30Z",
        "intensity": {"forecast": 90, "index": "low"},
        "generationmix": [{"fuel": "wind", "perc": 50.0}, {"fuel": "gas", "perc": 50.0}],
    },
]


def test_ukgrid_national_and_regional_shapes() -> None:
    seen: list[web.Request] = []
    region = {"regionid": 13, "dnoregion": "UKPN London", "shortname": "London"}
    routes = {
        "/intensity": json_handler({"data": UK_PERIODS[:1]}),
        "/intensity/{start}/fw48h": json_handler({"data": UK_PERIODS}, seen),
        "/regional/regionid/13": json_handler({"data": [dict(region, data=UK_REGIONAL)]}),
        "/regional/intensity/{start}/fw48h/regionid/13": json_handler(
            {"data": dict(region, data=UK_REGIONAL)}, seen
        ),
    }

    async def main() -> None:
        async with serve(routes) as url:
            uk = UkGrid(base_url=url, policy=FAST, clock=ManualClock(NOW_S))
            latest = await uk.latest("GB")
            forecast = await uk.forecast("GB")
            regional = await uk.latest("GB-13")
            regional_forecast = await uk.forecast("GB-13")
        assert (latest.intensity_g_per_kwh, latest.kind) == (175, "actual")
        assert [(p.intensity_g_per_kwh, p.kind) for p in forecast] == [
            (175, "actual"),
            (170, "forecast"),
        ]
        assert forecast[1].end_s - forecast[1].start_s == 1800
        assert (regional.intensity_g_per_kwh, regional.zone) == (90, "GB-13")
        assert len(regional_forecast) == 1
        assert seen[0].match_info["start"] == "2026-06-01T12:10Z"

    run(main())


def test_ukgrid_unknown_region_is_an_error() -> None:
    with pytest.raises(ProviderError, match="unknown zone"):
        run(UkGrid(base_url="http://127.0.0.1:9").latest("GB-99"))


# --- Carbon Aware SDK WebAPI --------------------------------------------------------------------

CA_FORECAST = [
    {
        "generatedAt": "2026-06-01T12:05:00Z",
        "requestedAt": "2026-06-01T12:09:00Z",
        "location": "eastus",
        "dataStartAt": "2026-06-01T12:10:00Z",
        "dataEndAt": "2026-06-01T12:20:00Z",
        "windowSize": 5,
        "optimalDataPoints": [
            {
                "location": "eastus",
                "timestamp": "2026-06-01T12:15:00Z",
                "duration": 5,
                "value": 300.5,
            }
        ],
        "forecastData": [
            {
                "location": "eastus",
                "timestamp": "2026-06-01T12:10:00Z",
                "duration": 5,
                "value": 359.2,
            },
            {
                "location": "eastus",
                "timestamp": "2026-06-01T12:15:00Z",
                "duration": 5,
                "value": 300.5,
            },
        ],
    }
]


def test_carbon_aware_sdk_forecast() -> None:
    seen: list[web.Request] = []

    async def main() -> None:
        routes = {"/emissions/forecasts/current": json_handler(CA_FORECAST, seen)}
        async with serve(routes) as url:
            sdk = CarbonAwareSdk(base_url=url, policy=FAST, clock=ManualClock(NOW_S))
            points = await sdk.forecast("eastus")
            latest = await sdk.latest("eastus")
        assert [p.intensity_g_per_kwh for p in points] == [359.2, 300.5]
        assert points[0].end_s - points[0].start_s == 300
        assert latest.intensity_g_per_kwh == 359.2
        assert seen[0].query["location"] == "eastus"

    run(main())


def test_carbon_aware_sdk_empty_answer_is_an_error() -> None:
    async def main() -> None:
        async with serve({"/emissions/forecasts/current": json_handler([])}) as url:
            await CarbonAwareSdk(base_url=url, policy=FAST).forecast("eastus")

    with pytest.raises(ProviderError, match="non-empty list"):
        run(main())


# --- CSV ----------------------------------------------------------------------------------------

CSV_TEXT = (
    "timestamp,avg_CI\n2026-06-01T12:00:00Z,100\n2026-06-01T13:00:00Z,\n2026-06-01T14:00:00Z,80\n"
)


def test_csv_provider_over_http_and_file(tmp_path: Any) -> None:
    async def text(request: web.Request) -> web.Response:
        return web.Response(text=CSV_TEXT, content_type="text/csv")

    path = tmp_path / "ci.csv"
    path.write_text(CSV_TEXT)

    async def main() -> None:
        async with serve({"/ci.csv": text}) as url:
            over_http = CsvProvider(f"{url}/ci.csv", policy=FAST, clock=ManualClock(NOW_S))
            latest = await over_http.latest("X")
            forecast = await over_http.forecast("X")
        from_file = await CsvProvider(str(path), clock=ManualClock(NOW_S)).forecast("X")
        assert latest.intensity_g_per_kwh == 100
        assert [p.intensity_g_per_kwh for p in forecast] == [100, 80]
        assert forecast == from_file or [p.intensity_g_per_kwh for p in from_file] == [100, 80]

    run(main())


def test_csv_provider_bad_file_is_a_provider_error(tmp_path: Any) -> None:
    path = tmp_path / "bad.csv"
    path.write_text("timestamp,avg_CI\n2026-06-01T12:00:00Z,-3\n")
    with pytest.raises(ProviderError, match="line 2"):
        run(CsvProvider(str(path), clock=ManualClock(NOW_S)).forecast("X"))
    with pytest.raises(ProviderError, match="cannot read"):
        run(CsvProvider(str(tmp_path / "missing.csv")).forecast("X"))
