"""Property tests: for any forecast, duration and deadline, no plan ends after its deadline or
starts before its release, and plans cover exactly the duration."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from carbonwatch.grid.types import IntensityPoint
from carbonwatch.scheduler.planner import plan_contiguous, plan_interruptible, plan_job

TOL_S = 1e-6


@st.composite
def jobs(draw: st.DrawFn) -> tuple[list[IntensityPoint], float, float, float, str]:
    step_s = draw(st.sampled_from([300.0, 900.0, 1800.0, 3600.0]))
    t0_s = draw(st.floats(1.7e9, 1.8e9, allow_nan=False))
    n = draw(st.integers(0, 48))
    values = draw(
        st.lists(
            st.one_of(st.floats(0, 1500, allow_nan=False), st.sampled_from([0.0, 100.0, 250.0])),
            min_size=n,
            max_size=n,
        )
    )
    keep = draw(st.lists(st.booleans(), min_size=n, max_size=n))  # False: a gap
    points = [
        IntensityPoint(
            t0_s + i * step_s, t0_s + (i + 1) * step_s, v, "forecast", "average", "h", "z", None
        )
        for i, (v, k) in enumerate(zip(values, keep, strict=True))
        if k or i % 7 == 0
    ]
    release_s = t0_s + draw(st.floats(-2 * step_s, (n + 1) * step_s))
    duration_s = draw(st.floats(1.0, max(2.0, n * step_s)))
    slack_s = draw(st.floats(0.0, (n + 2) * step_s))
    policy = draw(st.sampled_from(["latest", "now"]))
    return points, duration_s, release_s, release_s + duration_s + slack_s, policy


@settings(max_examples=300, deadline=None)
@given(jobs(), st.booleans())
def test_no_plan_ends_after_its_deadline_and_each_covers_the_duration(job, interruptible) -> None:
    points, duration_s, release_s, deadline_s, policy = job
    plan = plan_job(
        points,
        duration_s=duration_s,
        release_s=release_s,
        deadline_s=deadline_s,
        interruptible=interruptible,
        no_forecast_policy=policy,
    )
    assert plan.end_s <= deadline_s
    assert plan.start_s >= release_s
    for (s1, e1), (s2, _) in zip(plan.windows, plan.windows[1:], strict=False):
        assert s1 < e1 <= s2
    assert abs(sum(e - s for s, e in plan.windows) - duration_s) <= TOL_S * max(1.0, duration_s)
    if not interruptible:
        assert len(plan.windows) == 1


@settings(max_examples=150, deadline=None)
@given(jobs())
def test_interruptible_is_never_dirtier_than_contiguous(job) -> None:
    points, duration_s, release_s, deadline_s, _ = job
    whole = plan_contiguous(
        points, duration_s=duration_s, release_s=release_s, deadline_s=deadline_s
    )
    split = plan_interruptible(
        points, duration_s=duration_s, release_s=release_s, deadline_s=deadline_s
    )
    if whole.basis == "forecast":
        assert split.basis == "forecast"
        assert split.mean_intensity_g_per_kwh <= whole.mean_intensity_g_per_kwh * (1 + 1e-9) + 1e-9


@settings(max_examples=150, deadline=None)
@given(jobs())
def test_contiguous_beats_every_start_on_a_fine_grid(job) -> None:
    points, duration_s, release_s, deadline_s, _ = job
    plan = plan_contiguous(
        points, duration_s=duration_s, release_s=release_s, deadline_s=deadline_s
    )
    if plan.basis != "forecast":
        return
    latest_s = deadline_s - duration_s
    for k in range(41):
        s = release_s + (latest_s - release_s) * k / 40
        covered = sum(max(0.0, min(s + duration_s, p.end_s) - max(s, p.start_s)) for p in points)
        if covered < duration_s - 1e-6 * duration_s:
            continue
        carbon = sum(
            max(0.0, min(s + duration_s, p.end_s) - max(s, p.start_s)) * p.intensity_g_per_kwh
            for p in points
        )
        assert plan.mean_intensity_g_per_kwh <= carbon / duration_s * (1 + 1e-9) + 1e-6
