"""The cache in the store and the fallback chain provider -> cached forecast -> static, with
provenance on every point; and the series-backed IntensitySource accounting uses."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from carbonwatch.clock import ManualClock
from carbonwatch.errors import ProviderError
from carbonwatch.grid.cache import IntensityCache
from carbonwatch.grid.chain import resolve
from carbonwatch.grid.series import SeriesSource, normalise
from carbonwatch.grid.static import StaticSource
from carbonwatch.grid.types import IntensityPoint
from carbonwatch.store import open_store

NOW_S = 1_780_000_000.0
STATIC = IntensityPoint(
    0.0, float("inf"), 400.0, "static", "average", "codecarbon-static:t", "DEU", None
)


def point(
    start_s: float,
    value: float,
    kind: str = "forecast",
    fetched_s: float = NOW_S,
    provider: str = "fake",
) -> IntensityPoint:
    return IntensityPoint(
        start_s, start_s + 3600, value, kind, "average", provider, "DE", fetched_s
    )


class FakeProvider:
    """A provider at the seam: answers given points, or fails like a real one would."""

    name = "fake"

    def __init__(self, points: list[IntensityPoint] | None, error: str = "HTTP 500") -> None:
        self.points = points
        self.error = error

    async def latest(self, zone: str) -> IntensityPoint:
        return (await self.forecast(zone))[0]

    async def forecast(self, zone: str) -> list[IntensityPoint]:
        if self.points is None:
            raise ProviderError(f"fake: {self.error}")
        return self.points


@pytest.fixture
def cache(tmp_path: Path) -> IntensityCache:
    store = open_store(tmp_path / "cw.db")
    yield IntensityCache(store.db)
    store.close()


def test_fresh_provider_points_are_cached_with_provenance(cache: IntensityCache) -> None:
    fresh = [point(NOW_S, 300.0), point(NOW_S + 3600, 200.0)]
    got = asyncio.run(
        resolve(
            FakeProvider(fresh),
            "DE",
            static=lambda: STATIC,
            cache=cache,
            clock=ManualClock(NOW_S),
            forecast=True,
        )
    )
    assert got.via == "provider" and got.points == fresh and got.errors == []
    rows = list(cache.db["intensity_points"].rows)
    assert len(rows) == 2
    assert rows[0]["fetched_at_s"] == NOW_S and rows[0]["kind"] == "forecast"


def test_provider_down_falls_back_to_the_cached_forecast(cache: IntensityCache) -> None:
    cache.save(
        [
            point(NOW_S, 300.0, fetched_s=NOW_S - 600),
            point(NOW_S + 3600, 200.0, fetched_s=NOW_S - 600),
        ]
    )
    got = asyncio.run(
        resolve(
            FakeProvider(None),
            "DE",
            static=lambda: STATIC,
            cache=cache,
            clock=ManualClock(NOW_S + 10),
            forecast=True,
        )
    )
    assert got.via == "cache"
    assert [p.intensity_g_per_kwh for p in got.points] == [300.0, 200.0]
    assert got.points[0].fetched_at_s == NOW_S - 600  # provenance says how old it is
    assert "fake: HTTP 500" in got.errors[0]


def test_no_cache_either_falls_back_to_static(cache: IntensityCache) -> None:
    got = asyncio.run(
        resolve(
            FakeProvider(None, "timed out"),
            "DE",
            static=lambda: STATIC,
            cache=cache,
            clock=ManualClock(NOW_S),
        )
    )
    assert got.via == "static" and got.points == [STATIC]
    assert not got.is_forecast
    assert any("timed out" in e for e in got.errors)


def test_static_provider_goes_straight_to_static() -> None:
    got = asyncio.run(resolve(None, "", static=lambda: STATIC))
    assert got.via == "static" and got.errors == []


def test_cache_prefers_actuals_and_newer_fetches(cache: IntensityCache) -> None:
    cache.save(
        [
            point(NOW_S, 300.0, fetched_s=NOW_S - 7200),
            point(NOW_S, 310.0, fetched_s=NOW_S - 3600),
            point(NOW_S, 290.0, kind="actual", fetched_s=NOW_S - 7000),
            point(NOW_S + 3600, 250.0, fetched_s=NOW_S - 7200),
            point(NOW_S + 3600, 260.0, fetched_s=NOW_S - 3600),
            point(NOW_S, 999.0, provider="other"),
        ]
    )
    got = cache.points("DE", "fake", NOW_S, NOW_S + 7200)
    assert [(p.intensity_g_per_kwh, p.kind) for p in got] == [
        (290.0, "actual"),
        (260.0, "forecast"),
    ]
    # Saving the same fetch twice is harmless.
    assert cache.save([point(NOW_S, 300.0, fetched_s=NOW_S - 7200)]) == 1
    assert cache.db["intensity_points"].count == 6


def test_series_source_answers_points_then_static_outside_them() -> None:
    source = SeriesSource([point(NOW_S, 300.0), point(NOW_S + 3600, 200.0)], StaticSource(STATIC))
    assert source.intensity_at(NOW_S).intensity_g_per_kwh == 300.0
    assert source.intensity_at(NOW_S + 3599.9).intensity_g_per_kwh == 300.0
    assert source.intensity_at(NOW_S + 3600).intensity_g_per_kwh == 200.0
    assert source.intensity_at(NOW_S + 7200).kind == "static"
    assert source.intensity_at(NOW_S - 1).kind == "static"


def test_normalise_drops_overlaps_keeping_the_better_point() -> None:
    coarse = point(NOW_S, 300.0, fetched_s=NOW_S - 100)
    fine = IntensityPoint(NOW_S + 600, NOW_S + 900, 100.0, "actual", "average", "fake", "DE", NOW_S)
    assert normalise([coarse, fine]) == [fine]
