"""The fast solve (normal equations, sums kept in the ring) against the textbook one on the rows.

``ActivityFit.solve`` prices consumers from one weighted product of its stored columns and an
active set on the k x k gram (:func:`nnls_gram`); the reference here rebuilds the design matrix
from the row dicts the fit keeps and runs Lawson-Hanson with lstsq on the rows (:func:`nnls`),
r2 from the residuals themselves. Both must agree to float tolerance on random problems.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from carbonwatch.collectors.gpuactivity import activity_at, mean_activity, tail_uncovered
from carbonwatch.powerfit import ActivityFit, Fit, nnls, nnls_gram


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 6), st.integers(0, 2**31 - 1), st.booleans())
def test_nnls_gram_matches_nnls_on_the_rows(k: int, seed: int, intercept: bool) -> None:
    rng = np.random.default_rng(seed)
    a = rng.uniform(0, 1, size=(40, k)) if seed % 2 else rng.normal(size=(40, k))
    if intercept:
        a[:, 0] = 1.0
    b = a @ rng.normal(0, 100, size=k) + rng.normal(0, 5, size=40)
    fast = nnls_gram((a.T @ a).tolist(), (a.T @ b).tolist())
    ref = nnls(a, b)
    assert fast is not None  # random columns are far from collinear
    assert np.allclose(fast, ref, rtol=1e-7, atol=1e-7 * (1 + np.abs(ref).max()))


def test_nnls_gram_declines_nearly_collinear_columns_for_the_reference() -> None:
    """Two consumers whose activity moves together (to 1e-6): both end up in the passive set, the
    gram's pivot vanishes, and the fast path says None so that lstsq on the rows decides."""
    rng = np.random.default_rng(7)
    x = rng.uniform(0, 1, size=50)
    a = np.column_stack([x, x + 1e-6 * rng.normal(size=50)])
    b = 300.0 * a[:, 0] + 200.0 * a[:, 1]
    assert nnls_gram((a.T @ a).tolist(), (a.T @ b).tolist()) is None
    # The solve then falls back and still prices the pair as the rows say (500 W together).
    fit: ActivityFit[str] = ActivityFit(min_rows=10, fixed_base_w=0.0)
    for row, power in zip(a, b, strict=True):
        fit.add({"p": float(row[0]), "q": float(row[1])}, float(power))
    got = fit.solve()
    assert got is not None
    assert got.coef_w["p"] + got.coef_w["q"] == pytest.approx(500.0, rel=1e-6)


def _reference(fit: ActivityFit[str], min_support: int) -> Fit[str] | None:
    """The solve as it was: rows rebuilt from the fit's row dicts, nnls on the weighted rows."""
    rows = list(fit._rows)
    if len(rows) < fit.min_rows:
        return None
    keys = sorted({k for act, _, _ in rows for k in act}, key=repr)
    x = np.array([[act.get(k, 0.0) for k in keys] for act, _, _ in rows]).reshape(len(rows), -1)
    y = np.array([p for _, p, _ in rows])
    sw = np.sqrt([w for _, _, w in rows])
    if min_support > 0 and keys:
        clear = x > 0.1 * x.max(axis=0)
        thin = clear.sum(axis=0) < min_support
        if thin.any():
            keep = ~clear[:, thin].any(axis=1)
            keys = [k for k, t in zip(keys, thin, strict=True) if not t]
            x, y, sw = x[keep][:, ~thin], y[keep], sw[keep]
            if len(y) < fit.min_rows:
                return None
    fixed = fit.fixed_base_w
    moving = (x > 1e-9).any(axis=0) if fixed is not None else np.ptp(x, axis=0) > 1e-9
    used = [k for k, m in zip(keys, moving, strict=True) if m]
    if not used:
        return None
    xu = x[:, moving]
    if fixed is None:
        sol = nnls(np.column_stack([np.ones(len(y)), xu]) * sw[:, None], y * sw)
        base_w, coefs = float(sol[0]), sol[1:]
    else:
        base_w, coefs = fixed, nnls(xu * sw[:, None], (y - fixed) * sw)
    w = sw * sw
    pred = base_w + xu @ coefs
    mean = np.average(y, weights=w)
    ss_tot = float(np.sum(w * (y - mean) ** 2))
    r2 = 1.0 - float(np.sum(w * (y - pred) ** 2)) / ss_tot if ss_tot > 0 else 0.0
    if r2 < fit.min_r2:
        return None
    return Fit(base_w, {k: float(c) for k, c in zip(used, coefs, strict=True)}, r2, len(y))


@settings(max_examples=150, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    fixed=st.sampled_from([None, 0.0, 80.0]),
    extra_rows=st.integers(0, 80),
    min_support=st.sampled_from([0, 3]),
)
def test_solve_matches_the_textbook_solve_on_random_rows(
    seed: int, fixed: float | None, extra_rows: int, min_support: int
) -> None:
    rng = np.random.default_rng(seed)
    fit: ActivityFit[str] = ActivityFit(max_rows=60, min_rows=10, min_r2=0.0, fixed_base_w=fixed)
    marginal = {"a": 300.0, "b": 120.0, "c": 40.0, "d": 500.0}
    for i in range(20 + extra_rows):  # past 60 rows the ring wraps; "d" leaves early, "c" is rare
        act = {"a": float(rng.uniform(0, 1)), "b": float(rng.uniform(0, 1) * (i % 3 != 0))}
        if i % 17 == 5:
            act["c"] = float(rng.uniform(0.5, 1))
        if i < 12:
            act["d"] = float(rng.uniform(0, 1))
        power = (fixed or 90.0) + sum(marginal[k] * v for k, v in act.items())
        fit.add(act, power + float(rng.normal(0, 10)), weight=float(rng.choice([1.0, 5.0])))
    got, want = fit.solve(min_support), _reference(fit, min_support)
    assert (got is None) == (want is None)
    if got is not None and want is not None:
        assert got.rows == want.rows and set(got.coef_w) == set(want.coef_w)
        assert got.base_w == pytest.approx(want.base_w, rel=1e-7, abs=1e-6)
        for k, c in want.coef_w.items():
            assert got.coef_w[k] == pytest.approx(c, rel=1e-7, abs=1e-6)
        assert got.r2 == pytest.approx(want.r2, rel=1e-9, abs=1e-9)


sample_times = st.lists(st.floats(0.0, 20.0), min_size=1, max_size=30, unique=True).map(sorted)


@settings(max_examples=300, deadline=None)
@given(
    times=sample_times,
    start=st.floats(-2.0, 22.0),
    width=st.floats(0.01, 6.0),
    window_s=st.sampled_from([0.3, 1.0, 5.0]),
)
def test_mean_activity_is_activity_at_its_points(
    times: list[float], start: float, width: float, window_s: float
) -> None:
    """The walk over the points equals asking activity_at at each of them; a tail the samples do
    not reach is refused by the quick check only when the walk would refuse it too."""
    fracs = [(i % 7) / 7 for i in range(len(times))]
    end = start + width
    n = min(max(4, math.ceil((end - start) / 0.1)), 200)
    step = (end - start) / n
    at = [activity_at(times, fracs, window_s, start + (j + 0.5) * step) for j in range(n)]
    known = [f for f, _ in at if f is not None]
    want = (math.fsum(known) / n if known else None, sum(c for _, c in at) / n)
    assert mean_activity(times, fracs, window_s, start, end) == want
    if tail_uncovered(times[-1], start, end):
        assert want[1] < 0.95
