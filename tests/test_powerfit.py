"""The power-on-activity fit recovers known marginal powers and refuses to guess."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from carbonwatch.powerfit import ActivityFit, nnls


def test_recovers_known_marginal_watts_of_two_consumers_with_noise():
    rng = np.random.default_rng(7)
    fit: ActivityFit[str] = ActivityFit(max_rows=400, min_rows=50)
    for _ in range(400):
        train = rng.uniform(0.7, 1.0)  # a steady trainer: always busy, little movement
        infer = float(rng.random() < 0.4) * rng.uniform(0.2, 1.0)  # bursty
        power = 90.0 + 450.0 * train + 120.0 * infer + rng.normal(0, 5.0)
        fit.add({"train": train, "infer": infer}, power)
    result = fit.solve()
    assert result is not None
    assert result.coef_w["train"] == pytest.approx(450.0, rel=0.05)
    assert result.coef_w["infer"] == pytest.approx(120.0, rel=0.05)
    assert result.base_w == pytest.approx(90.0, abs=15.0)
    assert result.r2 > 0.95


def test_coefficients_never_go_negative_on_collinear_activity():
    fit: ActivityFit[str] = ActivityFit(min_rows=10)
    for i in range(100):
        a = (i % 10) / 10
        # b is almost a copy of a, and power follows a alone: plain least squares splits it
        # into a large positive and a large negative coefficient.
        fit.add({"a": a, "b": a + 1e-4 * ((i * 7) % 3)}, 100.0 + 300.0 * a)
    result = fit.solve()
    assert result is not None
    assert all(c >= 0 for c in result.coef_w.values())
    assert result.power_w({"a": 0.5, "b": 0.5}) == pytest.approx(250.0, rel=0.01)


def test_no_fit_until_enough_rows_and_none_when_activity_explains_nothing():
    fit: ActivityFit[str] = ActivityFit(min_rows=30, min_r2=0.3)
    rng = np.random.default_rng(1)
    for _ in range(29):
        fit.add({"a": rng.random()}, 100.0 + rng.normal(0, 50))
    assert fit.solve() is None  # too few rows
    for _ in range(200):
        fit.add({"a": rng.random()}, 100.0 + rng.normal(0, 50))  # power ignores the activity
    assert fit.solve() is None


def test_fixed_base_pins_the_intercept():
    fit: ActivityFit[str] = ActivityFit(min_rows=5, fixed_base_w=80.0)
    for i in range(50):
        x = (i % 5) / 4
        fit.add({"svc": x}, 80.0 + 200.0 * x)
    result = fit.solve()
    assert result is not None and result.base_w == 80.0
    assert result.coef_w["svc"] == pytest.approx(200.0, rel=1e-6)


def test_garbage_readings_are_refused_not_fitted():
    fit: ActivityFit[str] = ActivityFit(min_rows=1)
    fit.add({"a": 1.0}, float("nan"))
    fit.add({"a": 1.0}, 100.0, weight=-1.0)
    fit.add({"a": float("inf")}, 100.0)
    assert len(fit) == 1  # only the last row, whose bad regressor was dropped


def test_the_window_forgets_old_behaviour():
    fit: ActivityFit[str] = ActivityFit(max_rows=100, min_rows=20)
    for i in range(300):
        x = (i % 10) / 10
        watts = 500.0 if i < 200 else 100.0  # the service got lighter
        fit.add({"svc": x}, 50.0 + watts * x)
    result = fit.solve()
    assert result is not None
    assert result.coef_w["svc"] == pytest.approx(100.0, rel=1e-6)


@settings(max_examples=60, deadline=None)
@given(
    st.integers(min_value=1, max_value=5),
    st.integers(min_value=0, max_value=2**31 - 1),
)
def test_nnls_is_feasible_and_no_worse_than_any_clipped_solution(n: int, seed: int):
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(20, n))
    b = rng.normal(size=20)
    x = nnls(a, b)
    assert (x >= 0).all()
    clipped = np.clip(np.linalg.lstsq(a, b, rcond=None)[0], 0, None)
    assert np.linalg.norm(a @ x - b) <= np.linalg.norm(a @ clipped - b) + 1e-9


def test_a_regressor_with_too_little_support_is_left_out_with_its_rows():
    fit: ActivityFit[str] = ActivityFit(min_rows=10, fixed_base_w=80.0)
    for i in range(60):
        fit.add({"train": 0.9 + 0.01 * (i % 5)}, 80.0 + 300.0 * (0.9 + 0.01 * (i % 5)))
    # Three rows where a barely seen consumer coincides with a power spike.
    for _ in range(3):
        fit.add({"train": 0.5, "rare": 0.5}, 80.0 + 600.0)
    loose = fit.solve()
    assert loose is not None and loose.coef_w["rare"] > 500.0  # priced on three rows
    strict = fit.solve(min_support=8)
    assert strict is not None and "rare" not in strict.coef_w
    assert strict.coef_w["train"] == pytest.approx(300.0, rel=0.01)
    assert strict.rows == 60


def test_signed_rows_fit_deviations_within_groups_through_the_origin():
    """Deviations from a group's mean (a per-group offset cancelled) are negative half the time:
    ``signed=True`` keeps them, the default refuses them."""
    rng = np.random.default_rng(4)
    signed: ActivityFit[str] = ActivityFit(min_rows=20, fixed_base_w=0.0, signed=True)
    plain: ActivityFit[str] = ActivityFit(min_rows=20, fixed_base_w=0.0)
    for _ in range(30):
        offset = rng.uniform(50, 300)  # another process's steady power, different per group
        a = rng.uniform(0, 1, size=8)
        power = offset + 120.0 * a
        for da, dp in zip(a - a.mean(), power - power.mean(), strict=True):
            signed.add({"svc": float(da)}, float(dp))
            plain.add({"svc": float(da)}, float(dp))
    result = signed.solve()
    assert result is not None and result.coef_w["svc"] == pytest.approx(120.0, rel=1e-6)
    assert all(min(act.values(), default=0) >= 0 for act, _, _ in plain._rows)
