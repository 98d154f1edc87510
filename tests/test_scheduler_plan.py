"""The service's planning over fetched points, and the realised baseline. Pure, no daemon.

The planner's own properties are in test_planner_properties.py; here: what the service feeds it
(fetches that overlap, static points, forecasts that end too soon or lie in the past) never
yields a plan that ends after the deadline or starts before submit."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from carbonwatch.errors import InputError
from carbonwatch.grid.static import StaticSource
from carbonwatch.grid.types import IntensityPoint
from carbonwatch.scheduler.forecasts import plan_deferred
from carbonwatch.scheduler.realised import baseline_co2e_g, running_offset_s

NOW_S = 1_780_000_000.0
STATIC = IntensityPoint(0.0, math.inf, 400.0, "static", "average", "codecarbon-static:t", "X", None)


def _pt(
    start_s: float,
    value: float,
    kind: str = "forecast",
    fetched_s: float = NOW_S,
    step_s: float = 1800.0,
) -> IntensityPoint:
    return IntensityPoint(
        start_s, start_s + step_s, value, kind, "average", "csv", "CISO", fetched_s
    )


@st.composite
def _forecasts(draw: st.DrawFn) -> list[IntensityPoint]:
    """Forecasts a provider or the cache may hand over: none, in the past, partial, gappy,
    two fetches overlapping, actuals mixed in, and the static point."""
    points = []
    for _ in range(draw(st.integers(0, 3))):  # fetches
        offset_s = draw(st.floats(-3 * 86400, 2 * 86400))
        fetched_s = NOW_S - draw(st.floats(0, 86400))
        kind = draw(st.sampled_from(["forecast", "actual"]))
        for i in range(draw(st.integers(0, 40))):
            if draw(st.booleans()) and i % 5 == 0:
                continue  # a gap
            value = draw(st.floats(0, 900))
            points.append(_pt(NOW_S + offset_s + i * 1800.0, value, kind, fetched_s))
    if draw(st.booleans()):
        points.append(STATIC)
    return points


@settings(max_examples=300, deadline=None)
@given(
    points=_forecasts(),
    duration_s=st.floats(60, 12 * 3600),
    slack_s=st.floats(0, 36 * 3600),
    interruptible=st.booleans(),
    policy=st.sampled_from(["latest", "now"]),
)
def test_no_plan_ends_after_its_deadline_whatever_the_forecast(
    points, duration_s, slack_s, interruptible, policy
):
    deadline_s = NOW_S + duration_s + slack_s
    plan = plan_deferred(
        points,
        duration_s=duration_s,
        release_s=NOW_S,
        deadline_s=deadline_s,
        interruptible=interruptible,
        no_forecast_policy=policy,
    )
    assert plan.start_s >= NOW_S - 1e-6
    assert plan.end_s <= deadline_s + 1e-6
    ran_s = sum(e - s for s, e in plan.windows)
    assert ran_s == pytest.approx(duration_s, rel=1e-9, abs=1e-3)
    if plan.basis == "no_forecast":
        expected_start = deadline_s - duration_s if policy == "latest" else NOW_S
        assert plan.start_s == pytest.approx(expected_start, abs=1e-3)


def test_no_forecast_runs_at_the_latest_safe_start_or_now():
    for policy, start_s in (("latest", NOW_S + 3600), ("now", NOW_S)):
        plan = plan_deferred(
            [STATIC],
            duration_s=1800,
            release_s=NOW_S,
            deadline_s=NOW_S + 5400,
            interruptible=False,
            no_forecast_policy=policy,
        )
        assert (plan.basis, plan.windows) == ("no_forecast", ((start_s, start_s + 1800),))


def test_overlapping_fetches_plan_on_the_newest_and_actuals_win():
    old = [_pt(NOW_S + i * 1800, 100.0, fetched_s=NOW_S - 3600) for i in range(8)]
    new = [_pt(NOW_S + i * 1800, 500.0 if i != 5 else 50.0) for i in range(8)]
    plan = plan_deferred(
        old + new,
        duration_s=1800,
        release_s=NOW_S,
        deadline_s=NOW_S + 4 * 3600,
        interruptible=False,
        no_forecast_policy="latest",
    )
    assert plan.start_s == NOW_S + 5 * 1800
    assert plan.mean_intensity_g_per_kwh == 50.0


def test_a_job_that_cannot_fit_is_refused_not_planned_late():
    with pytest.raises(InputError, match="only"):
        plan_deferred(
            [],
            duration_s=3600,
            release_s=NOW_S,
            deadline_s=NOW_S + 60,
            interruptible=False,
            no_forecast_policy="latest",
        )


def test_running_offset_skips_pauses():
    runs = [(100.0, 110.0), (200.0, 205.0)]
    assert running_offset_s(105.0, runs) == 5.0
    assert running_offset_s(150.0, runs) == 10.0  # paused: the clock of running time stops
    assert running_offset_s(203.0, runs) == 13.0


def test_realised_baseline_costs_the_profile_at_submit_time():
    # Submitted at 0 (intensity 400 for the first 10 min, 100 after); ran later, where it was
    # 100. Its two minutes of energy, moved back to submit time, cost 400 g/kWh each.
    class Stepped:
        def intensity_at(self, t_s: float) -> IntensityPoint:
            value = 400.0 if t_s < 600 else 100.0
            return IntensityPoint(0, 1, value, "forecast", "average", "t", "X", 0.0)

    minutes = [(3600.0, 3.6e6), (3660.0, 1.8e6)]  # 1 kWh, then 0.5 kWh
    runs = [(3600.0, 3700.0)]
    assert baseline_co2e_g(minutes, runs, 0.0, Stepped(), pue=1.2) == pytest.approx(
        1.2 * 1.5 * 400.0
    )
    assert baseline_co2e_g(minutes, runs, 3600.0, StaticSource(STATIC)) == pytest.approx(600.0)
