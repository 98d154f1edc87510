"""Carbon saved by planning on forecasts made from the past only, on the EIA-930 regions of 2022.

The realistic scenario (the headline): a job is released once every working day (Mon-Fri) at a
time drawn uniformly from 09:00-17:00 *local* time (seeded), and must finish by the next working
day's 09:00 local (the "Let's Wait Awhile" ML-job scenario) or within 24 h of release. Jobs of
1, 4 and 8 h, contiguous and interruptible. For each job, its carbon is counted on the actual
series for:

- release: run at once;
- oracle: the planner on the actual series (a perfect forecast): the upper bound;
- persistence: the forecast for each hour is the same hour's actual on the last day already
  past at release (what a site without a provider can do); planned error-blind ("blind") and
  error-aware ("aware": :func:`carbonwatch.scheduler.forecast_error.plan_with_error`, the
  forecast's error by horizon measured on the 28 days before release, ``--sigmas`` setting);
- week: the mean of the same hour over the last 7 past days, blind and aware.

Savings are 1 - sum(carbon) / sum(carbon at release) over all jobs (equal energy per job, so the
ratio of summed mean intensities). Jobs whose window touches a gap in the data are skipped.
WAAT is left out (its series equals BPAT's in 8,081 of 8,760 hours).

    .venv/bin/python benchmarks/bench_savings.py               # the realistic headline (~3 min)
    .venv/bin/python benchmarks/bench_savings.py --regions CISO,PJM --sigmas 0
"""

from __future__ import annotations

import argparse
import math
import random
import time
from concurrent.futures import ProcessPoolExecutor
from datetime import datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import numpy as np

from carbonwatch.grid.csvseries import read_intensity_csv
from carbonwatch.grid.types import IntensityPoint
from carbonwatch.scheduler.forecast_error import ErrorModel, plan_with_error
from carbonwatch.scheduler.planner import Forecast, Plan, plan_job

EIA = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "eia930"
# Balancing authorities' home time zones (EIA-930 reference table).
REGIONS = {
    "CISO": "America/Los_Angeles",
    "AZPS": "America/Phoenix",
    "BPAT": "America/Los_Angeles",
    "ERCO": "America/Chicago",
    "SOCO": "America/Chicago",
    "MISO": "America/Chicago",
    "NYIS": "America/New_York",
    "PJM": "America/New_York",
}
JOB_HOURS = (1, 4, 8)
DEADLINES = ("next-workday", "24h")
MODES = ("contiguous", "interruptible")
STRATEGIES = ("oracle", "persist-blind", "persist-aware", "week-blind", "week-aware")
H = 3600.0
HISTORY_DAYS = 28  # the error model is measured on this many days before each release
HORIZON_H = 72  # forecasts reach this far (Friday evening to Monday 09:00 is 64 h)


def hourly(region: str) -> tuple[float, np.ndarray]:
    """The year as an hourly array from its first hour (NaN where the data has a gap)."""
    points = read_intensity_csv((EIA / f"{region}_NG_avgCI.csv").read_text(), zone=region)
    t0 = points[0].start_s
    values = np.full(int((points[-1].start_s - t0) // H) + 1, np.nan)
    for p in points:
        values[int((p.start_s - t0) // H)] = p.intensity_g_per_kwh
    return t0, values


def persistence(values: np.ndarray, r: int, hours: int) -> np.ndarray:
    """Forecast made at hour index r for hours r..r+hours-1: the same hour on the last day
    already past (a slot h hours ahead looks back 24 * (h // 24 + 1) hours)."""
    h = np.arange(hours)
    return values[r + h - 24 * (h // 24 + 1)]


def week_mean(values: np.ndarray, r: int, hours: int) -> np.ndarray:
    h = np.arange(hours)
    back = 24 * (h // 24 + 1)
    stack = np.stack([values[r + h - back - 24 * d] for d in range(7)])
    with np.errstate(all="ignore"):
        return np.nanmean(stack, axis=0)


def error_model(values: np.ndarray, r: int, forecaster) -> ErrorModel:
    """The forecaster's error by horizon over the HISTORY_DAYS before hour r: forecasts issued
    every 6 h then, each scored on the actuals (all in the past at r)."""
    horizons, errors, issues = [], [], []
    for issue in range(r - HISTORY_DAYS * 24, r - HORIZON_H, 6):
        f = forecaster(values, issue, HORIZON_H)
        err = values[issue : issue + HORIZON_H] - f
        ok = np.isfinite(err)
        horizons.append(np.arange(HORIZON_H)[ok] * H)
        errors.append(err[ok])
        issues.append(np.full(int(ok.sum()), float(issue)))
    return ErrorModel.from_pairs(
        np.concatenate(horizons), np.concatenate(errors), np.concatenate(issues)
    )


def points_of(t0: float, r: int, values: np.ndarray, kind: str, made_s: float):
    return [
        IntensityPoint(t0 + (r + i) * H, t0 + (r + i + 1) * H, float(v), kind, "average", "b",
                       "z", made_s)
        for i, v in enumerate(values)
        if math.isfinite(v)
    ]


def next_workday_9(release: datetime) -> datetime:
    day = release.date() + timedelta(days=1)
    while day.weekday() >= 5:
        day += timedelta(days=1)
    return datetime(day.year, day.month, day.day, 9, tzinfo=release.tzinfo)


def realised(actual: Forecast, plan: Plan) -> float | None:
    total = 0.0
    for s, e in plan.windows:
        mean = actual.mean_intensity(s, e)
        if mean is None:
            return None
        total += mean * (e - s)
    return total / sum(e - s for s, e in plan.windows)


def region_savings(region: str, sigmas: float, seed: int) -> dict:
    tz = ZoneInfo(REGIONS[region])
    t0, values = hourly(region)
    actual = Forecast(points_of(t0, 0, values, "actual", t0))
    rng = random.Random(f"{region}/{seed}")
    sums = {(d, m, s): 0.0 for d in DEADLINES for m in MODES for s in ("release", *STRATEGIES)}
    losses = dict.fromkeys(((d, m, s) for d in DEADLINES for m in MODES for s in STRATEGIES), 0)
    jobs = dict.fromkeys(((d, m) for d in DEADLINES for m in MODES), 0)
    skipped = 0
    day = datetime(2022, 1, 1, tzinfo=tz) + timedelta(days=HISTORY_DAYS + 10)
    while day.year == 2022:
        if day.weekday() < 5:
            release = day + timedelta(minutes=rng.randrange(0, 8 * 60 + 1) + 9 * 60)
            release_s = release.timestamp()
            r = int((release_s - t0) // H)
            if r + HORIZON_H >= len(values):
                break
            forecasts = {"persist": persistence(values, r, HORIZON_H),
                         "week": week_mean(values, r, HORIZON_H)}
            models = {"persist": error_model(values, r, persistence),
                      "week": error_model(values, r, week_mean)}
            fpoints = {k: points_of(t0, r, v, "forecast", release_s) for k, v in forecasts.items()}
            for dl in DEADLINES:
                deadline_s = (next_workday_9(release).timestamp() if dl == "next-workday"
                              else release_s + 24 * H)
                if actual.mean_intensity(release_s, deadline_s) is None:
                    skipped += 1
                    continue
                for mode in MODES:
                    for hours in JOB_HOURS:
                        kw = {"duration_s": hours * H, "release_s": release_s,
                              "deadline_s": deadline_s, "interruptible": mode == "interruptible"}
                        got = {"oracle": plan_job(actual, **kw)}
                        for name, pts in fpoints.items():
                            got[f"{name}-blind"] = plan_job(pts, **kw)
                            got[f"{name}-aware"] = plan_with_error(
                                pts, models[name], now_s=release_s, sigmas=sigmas, **kw).plan
                        base = actual.mean_intensity(release_s, release_s + hours * H)
                        scores = {k: realised(actual, p) for k, p in got.items()}
                        if base is None or any(v is None for v in scores.values()):
                            skipped += 1
                            continue
                        sums[(dl, mode, "release")] += base
                        for k, v in scores.items():
                            sums[(dl, mode, k)] += v
                            losses[(dl, mode, k)] += v > base * (1 + 1e-9)
                        jobs[(dl, mode)] += 1
        day += timedelta(days=1)
    out: dict = {"skipped": skipped}
    for dl in DEADLINES:
        for mode in MODES:
            base = sums[(dl, mode, "release")]
            out[(dl, mode)] = {
                "jobs": jobs[(dl, mode)],
                "release_g_per_kwh": base / max(jobs[(dl, mode)], 1),
                **{s: 100.0 * (1.0 - sums[(dl, mode, s)] / base) for s in STRATEGIES},
                **{f"{s}-loss": 100.0 * losses[(dl, mode, s)] / max(jobs[(dl, mode)], 1)
                   for s in STRATEGIES},
            }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--regions", default=",".join(REGIONS))
    parser.add_argument("--sigmas", type=float, default=1.0,
                        help="defer only when the saving beats this many sigmas (setting "
                        "defer_error_sigmas)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the release times")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    regions = [r.strip().upper() for r in args.regions.split(",") if r.strip()]
    started = time.perf_counter()
    print(f"2022, one job per working day released 09:00-17:00 local (seed {args.seed}); "
          f"jobs of {'/'.join(map(str, JOB_HOURS))} h pooled; error-aware at "
          f"{args.sigmas:g} sigma; saving vs running at release (in brackets: the share of "
          "jobs that ended dirtier than at release)")
    with ProcessPoolExecutor(args.workers) as pool:
        results = dict(zip(regions, pool.map(region_savings, regions,
                                             [args.sigmas] * len(regions),
                                             [args.seed] * len(regions)), strict=True))
    header = " ".join(f"{s:>15}" for s in STRATEGIES)
    for dl in DEADLINES:
        for mode in MODES:
            print(f"\ndeadline {dl}, {mode}")
            print(f"{'region':<6} {'jobs':>5} {'at release':>10} {header}")
            for region in regions:
                r = results[region][(dl, mode)]
                cells = " ".join(f"{r[s]:>6.1f}% ({r[s + '-loss']:>3.0f}%)" for s in STRATEGIES)
                print(f"{region:<6} {r['jobs']:>5} {r['release_g_per_kwh']:>10.1f} {cells}")
    print(f"\n(skipped {sum(r['skipped'] for r in results.values())} jobs touching gaps; "
          f"{time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
