"""Carbon saved by planning, on the nine EIA-930 regions of 2022 (tests/fixtures/eia930).

Each day of 2022 a job of 1, 4 or 8 hours is released at a fixed time and must finish within
24 h of its release (``--slack``: within 24 h *after it could have ended*, i.e. deadline =
release + duration + 24 h). For each job:

- baseline: run at release;
- planned: the planner's choice on a forecast, its carbon counted on the actual series;
- oracle: the planner on the actual series itself (perfect forecast; the planner is exact, see
  tests/test_planner.py, so this is the best any schedule can do);
- noisy: forecast = actual x (1 + e), e ~ N(0, sigma) per hour, independent (sigma 5 % and
  10 %, averaged over ``--seeds`` seeds). Real forecast errors are autocorrelated, so this
  understates their harm; it shows how sensitive the choice is to small errors.

Savings are 1 - sum(carbon planned) / sum(carbon at release) over all days (energy per job is
the same in both, so this is the ratio of mean intensities). Days whose window touches a gap in
the data are skipped (counted in the output).

    .venv/bin/python benchmarks/bench_savings.py                 # 09:00 UTC release
    .venv/bin/python benchmarks/bench_savings.py --local         # 09:00 local time
    .venv/bin/python benchmarks/bench_savings.py --slack         # 24 h slack after the job
"""

from __future__ import annotations

import argparse
import bisect
import random
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

from carbonwatch.grid.csvseries import read_intensity_csv
from carbonwatch.grid.types import IntensityPoint
from carbonwatch.scheduler.planner import Forecast, Plan, plan_contiguous, plan_interruptible

EIA = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "eia930"
# Balancing authorities' home time zones (EIA-930 reference table).
REGIONS = {
    "AZPS": "America/Phoenix",
    "BPAT": "America/Los_Angeles",
    "CISO": "America/Los_Angeles",
    "ERCO": "America/Chicago",
    "MISO": "America/Chicago",
    "NYIS": "America/New_York",
    "PJM": "America/New_York",
    "SOCO": "America/Chicago",
    "WAAT": "America/Denver",
}
JOB_HOURS = (1, 4, 8)
H = 3600.0


def realised_g_per_kwh(actual: Forecast, plan: Plan) -> float:
    """The actual mean intensity over the plan's windows (time-weighted)."""
    total = 0.0
    for start_s, end_s in plan.windows:
        mean = actual.mean_intensity(start_s, end_s)
        assert mean is not None
        total += mean * (end_s - start_s)
    return total / sum(e - s for s, e in plan.windows)


def noisy(points: list[IntensityPoint], sigma: float, rng: random.Random) -> list[IntensityPoint]:
    return [
        IntensityPoint(
            p.start_s,
            p.end_s,
            max(0.0, p.intensity_g_per_kwh * (1 + rng.gauss(0, sigma))),
            "forecast",
            p.signal,
            "noisy",
            p.zone,
            p.fetched_at_s,
        )
        for p in points
    ]


def releases(tz: str | None, hour: int) -> list[datetime]:
    zone = ZoneInfo(tz) if tz else UTC
    first = datetime(2022, 1, 1, hour, tzinfo=zone)
    return [first + timedelta(days=d) for d in range(365)]


def region_savings(
    region: str, tz: str | None, hour: int, slack: bool, sigmas: list[float], seeds: int
) -> dict[tuple[str, int], dict[str, float]]:
    points = read_intensity_csv((EIA / f"{region}_NG_avgCI.csv").read_text(), zone=region)
    starts = [p.start_s for p in points]
    out: dict[tuple[str, int], dict[str, float]] = {}
    for mode, planner in (("contiguous", plan_contiguous), ("interruptible", plan_interruptible)):
        for hours in JOB_HOURS:
            d_s = hours * H
            sums = {"baseline": 0.0, "oracle": 0.0, **{f"noise{s}": 0.0 for s in sigmas}}
            days = skipped = 0
            for release in releases(tz, hour):
                release_s = release.timestamp()
                deadline_s = release_s + d_s + 24 * H if slack else release_s + 24 * H
                lo = bisect.bisect_right(starts, release_s) - 1
                hi = bisect.bisect_left(starts, deadline_s)
                window = [p for p in points[max(lo, 0) : hi] if p.end_s > release_s]
                actual = Forecast(window)
                if len(actual.runs) != 1 or actual.mean_intensity(release_s, deadline_s) is None:
                    skipped += 1
                    continue
                days += 1
                oracle = planner(actual, duration_s=d_s, release_s=release_s, deadline_s=deadline_s)
                sums["baseline"] += oracle.baseline_intensity_g_per_kwh or 0.0
                sums["oracle"] += realised_g_per_kwh(actual, oracle)
                for sigma in sigmas:
                    for seed in range(seeds):
                        rng = random.Random(f"{region}/{release_s}/{hours}/{sigma}/{seed}")
                        plan = planner(
                            noisy(window, sigma, rng),
                            duration_s=d_s,
                            release_s=release_s,
                            deadline_s=deadline_s,
                        )
                        sums[f"noise{sigma}"] += realised_g_per_kwh(actual, plan) / seeds
            base = sums["baseline"]
            out[(mode, hours)] = {
                "days": days,
                "skipped": skipped,
                "baseline_g_per_kwh": base / days,
                "oracle_pct": 100 * (1 - sums["oracle"] / base),
                **{f"noise{s}_pct": 100 * (1 - sums[f"noise{s}"] / base) for s in sigmas},
            }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--hour", type=int, default=9, help="release hour (default 9)")
    parser.add_argument("--local", action="store_true", help="release hour in local time")
    parser.add_argument("--slack", action="store_true", help="deadline = release + job + 24 h")
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args()
    sigmas = [0.05, 0.10]
    started = time.perf_counter()
    when = "local time" if args.local else "UTC"
    deadline = "release + job + 24 h" if args.slack else "release + 24 h"
    print(
        f"release daily at {args.hour:02d}:00 {when}, deadline {deadline}, 2022, "
        f"noise averaged over {args.seeds} seeds"
    )
    print(
        f"{'region':<6} {'mode':<13} {'job':>4} {'days':>4} {'at release':>10} {'oracle':>7} "
        f"{'5% noise':>9} {'kept':>5} {'10% noise':>9} {'kept':>5}"
    )
    for region, tz in REGIONS.items():
        results = region_savings(
            region, tz if args.local else None, args.hour, args.slack, sigmas, args.seeds
        )
        for (mode, hours), r in results.items():
            kept5 = 100 * r["noise0.05_pct"] / r["oracle_pct"] if r["oracle_pct"] > 0 else 0.0
            kept10 = 100 * r["noise0.1_pct"] / r["oracle_pct"] if r["oracle_pct"] > 0 else 0.0
            print(
                f"{region:<6} {mode:<13} {hours:>3}h {r['days']:>4} "
                f"{r['baseline_g_per_kwh']:>10.1f} {r['oracle_pct']:>6.1f}% "
                f"{r['noise0.05_pct']:>8.1f}% {kept5:>4.0f}% {r['noise0.1_pct']:>8.1f}% "
                f"{kept10:>4.0f}%"
            )
    print(f"({time.perf_counter() - started:.1f} s)")


if __name__ == "__main__":
    main()
