"""The planner: hand-made cases, the EIA-930 traces against a brute-force oracle, and the
duration/time parser."""

from __future__ import annotations

import math
from functools import cache
from pathlib import Path

import pytest

from carbonwatch.errors import InputError
from carbonwatch.grid.csvseries import read_intensity_csv
from carbonwatch.grid.types import IntensityPoint
from carbonwatch.scheduler.planner import plan_contiguous, plan_interruptible, plan_job
from carbonwatch.times import parse_duration_s, parse_feed_time_s, parse_user_time_s

EIA = Path(__file__).parent / "fixtures" / "eia930"
REGIONS = ("AZPS", "BPAT", "CISO", "ERCO", "MISO", "NYIS", "PJM", "SOCO", "WAAT")
H = 3600.0


def slots(values: list[float], step_s: float = H, t0_s: float = 0.0) -> list[IntensityPoint]:
    return [
        IntensityPoint(
            t0_s + i * step_s, t0_s + (i + 1) * step_s, v, "forecast", "average", "t", "z", 0.0
        )
        for i, v in enumerate(values)
    ]


# --- hand-made cases ---------------------------------------------------------------------------


def test_contiguous_picks_the_cleanest_window() -> None:
    plan = plan_contiguous(
        slots([500, 400, 100, 120, 600]), duration_s=2 * H, release_s=0, deadline_s=5 * H
    )
    assert plan.windows == ((2 * H, 4 * H),)
    assert plan.mean_intensity_g_per_kwh == pytest.approx(110)
    assert plan.baseline_intensity_g_per_kwh == pytest.approx(450)
    assert plan.saving_fraction == pytest.approx(1 - 110 / 450)
    assert plan.basis == "forecast"


def test_contiguous_weighs_partial_slots_and_can_end_on_a_boundary() -> None:
    # 90 min job: best is to end exactly when the dirty slot begins (start 0.5 h), a start
    # that is a boundary minus the duration, not a boundary itself.
    plan = plan_contiguous(
        slots([300, 100, 900]), duration_s=1.5 * H, release_s=0, deadline_s=3 * H
    )
    assert plan.windows == ((0.5 * H, 2 * H),)
    assert plan.mean_intensity_g_per_kwh == pytest.approx((0.5 * 300 + 100) / 1.5)


def test_contiguous_respects_an_off_grid_release_and_latest_start() -> None:
    plan = plan_contiguous(
        slots([100, 900, 900, 50]), duration_s=H, release_s=0.25 * H, deadline_s=3.5 * H
    )
    # Candidates: release (0.25 h), boundaries, latest start (2.5 h). 50 is only half reachable.
    assert plan.start_s == pytest.approx(0.25 * H)
    assert plan.end_s <= 3.5 * H


def test_ties_go_to_the_earliest_start() -> None:
    plan = plan_contiguous(slots([100, 100, 100]), duration_s=H, release_s=0, deadline_s=3 * H)
    assert plan.windows == ((0.0, H),)


def test_interruptible_takes_cheapest_slots_and_a_partial_last_one() -> None:
    plan = plan_interruptible(
        slots([500, 100, 400, 200, 600]), duration_s=2.5 * H, release_s=0, deadline_s=5 * H
    )
    assert plan.windows == ((H, 2.5 * H), (3 * H, 4 * H))
    assert sum(e - s for s, e in plan.windows) == pytest.approx(2.5 * H)
    assert plan.mean_intensity_g_per_kwh == pytest.approx((100 + 200 + 0.5 * 400) / 2.5)
    assert plan.interruptible


def test_interruptible_merges_adjacent_slots() -> None:
    plan = plan_interruptible(
        slots([100, 100, 900]), duration_s=2 * H, release_s=0, deadline_s=3 * H
    )
    assert plan.windows == ((0.0, 2 * H),)


@pytest.mark.parametrize(("policy", "window"), [("latest", (8 * H, 10 * H)), ("now", (0, 2 * H))])
def test_no_forecast_runs_at_latest_safe_start_or_now(policy: str, window: tuple) -> None:
    for interruptible in (False, True):
        plan = plan_job(
            [],
            duration_s=2 * H,
            release_s=0,
            deadline_s=10 * H,
            interruptible=interruptible,
            no_forecast_policy=policy,
        )
        assert plan.windows == (window,)
        assert plan.basis == "no_forecast"
        assert plan.mean_intensity_g_per_kwh is None


def test_forecast_too_short_for_the_job_counts_as_no_forecast() -> None:
    plan = plan_contiguous(slots([100, 100]), duration_s=3 * H, release_s=0, deadline_s=10 * H)
    assert plan.basis == "no_forecast" and plan.windows == ((7 * H, 10 * H),)


def test_gaps_in_the_forecast_are_not_bridged() -> None:
    # A cheap slot on each side of a gap: a 2 h run across the gap has no forecast.
    forecast = slots([900, 10]) + slots([10, 900], t0_s=3 * H)
    plan = plan_contiguous(forecast, duration_s=2 * H, release_s=0, deadline_s=5 * H)
    assert plan.windows in (((0.0, 2 * H),), ((3 * H, 5 * H),))
    interrupted = plan_interruptible(forecast, duration_s=2 * H, release_s=0, deadline_s=5 * H)
    assert interrupted.windows == ((H, 2 * H), (3 * H, 4 * H))


@pytest.mark.parametrize(
    ("duration_s", "release_s", "deadline_s", "message"),
    [(2 * H, 0, H, "only 3600 s"), (0, 0, H, "> 0"), (H, math.nan, 2 * H, "finite")],
)
def test_impossible_jobs_are_input_errors(
    duration_s: float, release_s: float, deadline_s: float, message: str
) -> None:
    with pytest.raises(InputError, match=message):
        plan_contiguous(
            slots([1]), duration_s=duration_s, release_s=release_s, deadline_s=deadline_s
        )


def test_overlapping_or_nan_slots_are_refused() -> None:
    with pytest.raises(InputError, match="overlap"):
        plan_contiguous(
            slots([1, 2]) + slots([3], t0_s=0.5 * H), duration_s=H, release_s=0, deadline_s=3 * H
        )
    with pytest.raises(InputError, match="intensity"):
        plan_contiguous(slots([math.nan]), duration_s=H, release_s=0, deadline_s=H)


# --- EIA-930 traces against a brute-force oracle ------------------------------------------------


@cache
def eia(region: str) -> list[IntensityPoint]:
    return read_intensity_csv((EIA / f"{region}_NG_avgCI.csv").read_text(), zone=region)


def window_slots(points: list[IntensityPoint], lo_s: float, hi_s: float) -> list[IntensityPoint]:
    return [p for p in points if p.end_s > lo_s and p.start_s < hi_s]


def oracle_contiguous(
    forecast: list[IntensityPoint], d_s: float, lo_s: float, hi_s: float, step_s: float = 900.0
) -> tuple[float, float] | None:
    """Every start on a 15-minute grid, mean by direct overlap sums; earliest of the best."""
    best: tuple[float, float] | None = None
    s = lo_s
    while s <= hi_s - d_s + 1e-9:
        covered = carbon = 0.0
        for p in forecast:
            overlap = max(0.0, min(s + d_s, p.end_s) - max(s, p.start_s))
            covered += overlap
            carbon += overlap * p.intensity_g_per_kwh
        if covered >= d_s - 1e-6:
            mean = carbon / d_s
            if best is None or mean < best[0] - 1e-9 * best[0]:
                best = (mean, s)
        s += step_s
    return best


def oracle_interruptible(forecast: list[IntensityPoint], hours: int) -> set[float]:
    """For whole-hour slots and jobs: the set of cheapest hours."""
    ranked = sorted(forecast, key=lambda p: (p.intensity_g_per_kwh, p.start_s))
    return {p.start_s for p in ranked[:hours]}


@pytest.mark.parametrize("region", REGIONS)
def test_eia930_daily_release_matches_brute_force_oracle(region: str) -> None:
    points = eia(region)
    day0_s = parse_feed_time_s("2022-01-01T09:00:00Z", "t")
    checked = 0
    for day in range(0, 360, 9):  # 40 days spread over the year, each released at 09:00 UTC
        release_s = day0_s + day * 86400.0
        deadline_s = release_s + 86400.0
        forecast = window_slots(points, release_s, deadline_s)
        for hours in (1, 4, 8):
            d_s = hours * H
            plan = plan_contiguous(
                forecast, duration_s=d_s, release_s=release_s, deadline_s=deadline_s
            )
            expected = oracle_contiguous(forecast, d_s, release_s, deadline_s)
            if expected is None:
                assert plan.basis == "no_forecast"
                continue
            assert plan.windows == ((expected[1], expected[1] + d_s),)
            assert plan.mean_intensity_g_per_kwh == pytest.approx(expected[0], rel=1e-9)
            if len(forecast) == 24:
                split = plan_interruptible(
                    forecast, duration_s=d_s, release_s=release_s, deadline_s=deadline_s
                )
                hours_run = {s for w in split.windows for s in range(int(w[0]), int(w[1]), 3600)}
                assert hours_run == oracle_interruptible(forecast, hours)
                assert split.mean_intensity_g_per_kwh <= plan.mean_intensity_g_per_kwh + 1e-9
            checked += 1
    assert checked >= 100


# --- durations and times ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("45m", 2700),
        ("2h", 7200),
        ("1h30m", 5400),
        ("1d", 86400),
        ("90s", 90),
        ("1.5h", 5400),
        ("PT1H30M", 5400),
        ("P1D", 86400),
        (" 2H ", 7200),
    ],
)
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration_s(text) == seconds


@pytest.mark.parametrize("text", ["", "h", "30m1h", "2h2h", "0m", "PT", "10", "-1h", "soon"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(InputError):
        parse_duration_s(text)


def test_times() -> None:
    at = "2026-12-01T06:00:00Z"
    assert parse_user_time_s(at, 0) == parse_feed_time_s(at, "")
    assert parse_user_time_s("2026-12-01T07:00:00+01:00", 0) == parse_user_time_s(
        "2026-12-01T06:00:00Z", 0
    )
    assert parse_user_time_s("+12h", 100.0) == 100.0 + 12 * H
    assert parse_user_time_s("now", 5.0) == 5.0
    with pytest.raises(InputError, match="no zone"):
        parse_user_time_s("2026-12-01T06:00:00", 0)
    with pytest.raises(InputError, match="cannot parse time"):
        parse_user_time_s("tomorrow", 0)
