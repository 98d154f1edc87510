"""Plans that know forecasts are wrong.

The store keeps every forecast a provider gave (``intensity_points``, kind ``forecast``, with the
time it was fetched) and the actuals that later replaced them. Pairing the two for the same slot
gives the provider's error for that zone at the horizon the forecast was made at (slot start
minus fetch time). :class:`ErrorModel` keeps, per horizon band, the mean error (``bias``: actual
minus forecast) and its spread (``sigma``: the standard deviation about the bias).

Planning with it (:func:`plan_with_error`):

- each forecast slot's *expected* intensity is the forecast plus the bias at its horizon (a
  provider that is optimistic a day ahead no longer pulls jobs to tomorrow); actual slots are
  known, with no error;
- the planner runs on the expected series, and the expected saving is the release window's
  expected mean minus the plan's;
- its band is sqrt(sigma_plan^2 + sigma_release^2 - 2 rho sigma_plan sigma_release), each sigma
  the time-weighted mean of its slots' sigmas: errors within one window are taken as fully
  correlated (they are, in practice: a forecast off in one hour is off in the next), and rho is
  the measured correlation between the errors of one forecast in the two windows' horizon bands
  (0 when unknown; never below 0, so a band is never widened on the strength of an estimate);
- the job is deferred only when the expected saving is at least ``sigmas`` times that band
  (setting ``defer_error_sigmas``); otherwise it runs at release. With no pairs in the store the
  error is unknown: the plan is the forecast's, and its band is reported as unknown.
"""

from __future__ import annotations

import bisect
import dataclasses
import math
import sqlite3
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from carbonwatch.grid.types import IntensityPoint
from carbonwatch.scheduler.planner import Forecast, Plan, plan_job

H_S = 3600.0
# Horizon bands (s): the error of a forecast grows with how far ahead it was made.
HORIZON_EDGES_S = (0.0, 1 * H_S, 3 * H_S, 6 * H_S, 12 * H_S, 24 * H_S, 48 * H_S, math.inf)
MIN_PAIRS = 8  # fewer forecast/actual pairs in a band than this: its error is unknown


@dataclass(frozen=True)
class HorizonError:
    lo_s: float
    hi_s: float
    pairs: int
    bias_g_per_kwh: float  # mean of actual - forecast
    sigma_g_per_kwh: float  # standard deviation of actual - forecast about the bias


@dataclass(frozen=True)
class ErrorModel:
    """Forecast error by horizon band; bands with too few pairs are left out."""

    bands: tuple[HorizonError, ...]
    # rho[a][b]: correlation of one forecast's errors in bands a and b (empty: unknown, 0).
    rho: tuple[tuple[float, ...], ...] = ()

    @classmethod
    def from_pairs(
        cls,
        horizons_s: Sequence[float] | np.ndarray,
        errors: Sequence[float] | np.ndarray,
        issues: Sequence[float] | np.ndarray | None = None,
    ) -> ErrorModel:
        """From (horizon, actual - forecast) pairs; a negative horizon (a forecast of a slot
        already under way) counts as 0. ``issues`` (when each forecast was made) groups the
        pairs by forecast, for the correlation between horizons."""
        h = np.maximum(np.asarray(horizons_s, float), 0.0)
        e = np.asarray(errors, float)
        bands = []
        z = np.full(len(e), np.nan)  # each error standardised by its band
        for lo, hi in zip(HORIZON_EDGES_S, HORIZON_EDGES_S[1:], strict=False):
            mask = (h >= lo) & (h < hi)
            sel = e[mask]
            if len(sel) >= MIN_PAIRS:
                band = HorizonError(lo, hi, len(sel), float(sel.mean()), float(sel.std()))
                bands.append(band)
                if band.sigma_g_per_kwh > 0:
                    z[mask] = (sel - band.bias_g_per_kwh) / band.sigma_g_per_kwh
        rho: tuple[tuple[float, ...], ...] = ()
        if issues is not None and bands:
            which = np.searchsorted([b.lo_s for b in bands], h, side="right") - 1
            rho = _band_correlation(np.asarray(issues, float), which, z, len(bands))
        return cls(tuple(bands), rho)

    def correlation(self, horizon_a_s: float, horizon_b_s: float) -> float:
        if not self.rho:
            return 0.0
        starts = [b.lo_s for b in self.bands]
        a = max(bisect.bisect_right(starts, max(horizon_a_s, 0.0)) - 1, 0)
        b = max(bisect.bisect_right(starts, max(horizon_b_s, 0.0)) - 1, 0)
        return self.rho[a][b]

    @property
    def pairs(self) -> int:
        return sum(b.pairs for b in self.bands)

    def at(self, horizon_s: float) -> HorizonError | None:
        """The band holding ``horizon_s``; past the last measured band, the last (errors do not
        shrink with horizon); before the first, the first."""
        if not self.bands:
            return None
        horizon_s = max(horizon_s, 0.0)
        i = bisect.bisect_right([b.lo_s for b in self.bands], horizon_s) - 1
        return self.bands[max(i, 0)]

    def as_json(self) -> list[dict[str, float | int | None]]:
        return [
            {
                "horizon_from_h": b.lo_s / H_S,
                "horizon_to_h": None if math.isinf(b.hi_s) else b.hi_s / H_S,
                "pairs": b.pairs,
                "bias_g_per_kwh": b.bias_g_per_kwh,
                "sigma_g_per_kwh": b.sigma_g_per_kwh,
            }
            for b in self.bands
        ]


def _band_correlation(
    issues: np.ndarray, which: np.ndarray, z: np.ndarray, bands: int
) -> tuple[tuple[float, ...], ...]:
    """rho[a][b]: the mean product of standardised errors over pairs of slots of one forecast,
    one slot in band a and one in band b (distinct slots), clamped to [0, 0.99]; 0 where fewer
    than MIN_PAIRS pairs exist."""
    ok = np.isfinite(z) & (which >= 0)
    if ok.sum() < 2:
        return ()
    keys, index = np.unique(issues[ok], return_inverse=True)
    cell = index * bands + which[ok]
    size = len(keys) * bands
    sums = np.bincount(cell, weights=z[ok], minlength=size).reshape(len(keys), bands)
    counts = np.bincount(cell, minlength=size).reshape(len(keys), bands).astype(float)
    squares = np.bincount(cell, weights=z[ok] ** 2, minlength=size).reshape(len(keys), bands)
    products = sums.T @ sums - np.diag(squares.sum(axis=0))  # distinct slots only
    pairs = counts.T @ counts - np.diag(counts.sum(axis=0))
    with np.errstate(invalid="ignore", divide="ignore"):
        rho = np.where(pairs >= MIN_PAIRS, products / pairs, 0.0)
    rho = np.clip(np.nan_to_num(rho), 0.0, 0.99)
    return tuple(tuple(float(x) for x in row) for row in rho)


def measure(
    conn: sqlite3.Connection, zone: str, provider: str, *, since_s: float | None = None
) -> ErrorModel:
    """The error of ``provider``'s forecasts for ``zone`` from the store: every stored forecast
    of a slot paired with the newest actual of the same slot (same start)."""
    rows = conn.execute(
        """
        SELECT f.start_s - f.fetched_at_s, a.intensity_g_per_kwh - f.intensity_g_per_kwh,
               f.fetched_at_s
        FROM intensity_points f
        JOIN intensity_points a
          ON a.zone = f.zone AND a.provider = f.provider AND a.start_s = f.start_s
         AND a.kind = 'actual'
         AND a.fetched_at_s = (SELECT MAX(fetched_at_s) FROM intensity_points
                               WHERE zone = f.zone AND provider = f.provider
                                 AND kind = 'actual' AND start_s = f.start_s)
        WHERE f.zone = ? AND f.provider = ? AND f.kind = 'forecast' AND f.start_s >= ?
        """,
        [zone, provider, -math.inf if since_s is None else since_s],
    ).fetchall()
    if not rows:
        return ErrorModel(())
    data = np.asarray(rows, float)
    return ErrorModel.from_pairs(data[:, 0], data[:, 1], data[:, 2])


@dataclass(frozen=True)
class ErrorPlan:
    """A plan made on expected intensity, with the expected saving's band.

    ``saving_g_per_kwh``: expected mean intensity at release minus the plan's; ``band_g_per_kwh``
    its one-sigma band (None: the error is unknown). ``held``: the forecast's best plan was
    dropped for running at release, its saving not beating the error."""

    plan: Plan
    saving_g_per_kwh: float | None
    band_g_per_kwh: float | None
    held: bool
    note: str | None

    def as_json(self) -> dict[str, float | bool | str | None]:
        base = self.plan.baseline_intensity_g_per_kwh

        def pct(g: float | None) -> float | None:
            return None if g is None or not base else 100.0 * g / base

        return {
            "expected_saving_g_per_kwh": self.saving_g_per_kwh,
            "saving_band_g_per_kwh": self.band_g_per_kwh,
            "expected_saving_pct": pct(self.saving_g_per_kwh),
            "saving_band_pct": pct(self.band_g_per_kwh),
            "held_at_release": self.held,
            "error_note": self.note,
        }


def expected_points(
    points: Iterable[IntensityPoint], model: ErrorModel, now_s: float
) -> tuple[list[IntensityPoint], list[float]]:
    """Forecast points moved by the bias at their horizon, and each point's sigma (0 for an
    actual; NaN where the error is unknown)."""
    out: list[IntensityPoint] = []
    sigmas: list[float] = []
    for p in points:
        if p.kind != "forecast":
            out.append(p)
            sigmas.append(0.0)
            continue
        band = model.at(p.start_s - (p.fetched_at_s if p.fetched_at_s is not None else now_s))
        if band is None:
            out.append(p)
            sigmas.append(math.nan)
            continue
        value = max(0.0, p.intensity_g_per_kwh + band.bias_g_per_kwh)
        out.append(dataclasses.replace(p, intensity_g_per_kwh=value))
        sigmas.append(band.sigma_g_per_kwh)
    return out, sigmas


def _window_sigma(
    starts: np.ndarray, ends: np.ndarray, sigmas: np.ndarray, windows: Iterable[tuple[float, float]]
) -> float:
    """Time-weighted mean sigma of the slots under ``windows`` (NaN if any is unknown)."""
    total = weight = 0.0
    for lo, hi in windows:
        overlap = np.clip(np.minimum(ends, hi) - np.maximum(starts, lo), 0.0, None)
        total += float(np.dot(overlap[overlap > 0], sigmas[overlap > 0]))
        weight += float(overlap.sum())
    return total / weight if weight > 0 else math.nan


def _mid(windows: Iterable[tuple[float, float]]) -> float:
    """The time-weighted middle of the windows."""
    pairs = list(windows)
    return sum((s + e) / 2 * (e - s) for s, e in pairs) / sum(e - s for s, e in pairs)


def plan_with_error(
    points: Sequence[IntensityPoint],
    model: ErrorModel,
    *,
    now_s: float,
    duration_s: float,
    release_s: float,
    deadline_s: float,
    interruptible: bool = False,
    no_forecast_policy: str = "latest",
    sigmas: float = 1.0,
) -> ErrorPlan:
    """See the module doc. ``points`` should already be normalised (non-overlapping)."""
    expected, point_sigmas = expected_points(points, model, now_s)
    forecast = Forecast(expected)
    kwargs = {"duration_s": duration_s, "release_s": release_s, "deadline_s": deadline_s}
    plan = plan_job(
        forecast, interruptible=interruptible, no_forecast_policy=no_forecast_policy, **kwargs
    )
    mean, base = plan.mean_intensity_g_per_kwh, plan.baseline_intensity_g_per_kwh
    if plan.basis != "forecast" or mean is None or base is None:
        return ErrorPlan(plan, None, None, False, None)
    saving = base - mean
    order = np.argsort([p.start_s for p in expected], kind="stable")
    starts = np.array([expected[i].start_s for i in order])
    ends = np.array([expected[i].end_s for i in order])
    sig = np.array([point_sigmas[i] for i in order])
    release_window = ((release_s, release_s + duration_s),)
    s_plan = _window_sigma(starts, ends, sig, plan.windows)
    s_base = _window_sigma(starts, ends, sig, release_window)
    if math.isnan(s_plan) or math.isnan(s_base):
        return ErrorPlan(
            plan,
            saving,
            None,
            False,
            "forecast error unknown (no past forecasts with actuals for this zone and provider)",
        )
    rho = model.correlation(_mid(plan.windows) - now_s, _mid(release_window) - now_s)
    band = math.sqrt(max(s_plan**2 + s_base**2 - 2 * rho * s_plan * s_base, 0.0))
    at_release = plan.windows == release_window
    if at_release or saving >= sigmas * band:
        return ErrorPlan(plan, saving, band, False, None)
    held = Plan(
        windows=release_window,
        mean_intensity_g_per_kwh=base,
        baseline_intensity_g_per_kwh=base,
        basis="forecast",
        interruptible=interruptible,
    )
    note = (
        f"expected saving {saving:.1f} ± {band:.1f} gCO2e/kWh does not beat the forecast error "
        f"({sigmas:g} sigma): running at release"
    )
    return ErrorPlan(held, 0.0, 0.0, True, note)
