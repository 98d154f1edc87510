"""Window search speed: a 7-day forecast at 5-minute resolution (2016 slots). Target <= 1 ms.

.venv/bin/python benchmarks/bench_planner.py
"""

from __future__ import annotations

import math
import random
import statistics
import time

from carbonwatch.grid.types import IntensityPoint
from carbonwatch.scheduler.planner import Forecast, plan_contiguous, plan_interruptible

STEP_S = 300.0
DAYS = 7
T0_S = 1_780_000_000.0


def forecast(seed: int = 1) -> list[IntensityPoint]:
    """A daily cycle with a solar dip plus noise: a shape like CAISO's, not data."""
    rng = random.Random(seed)
    out = []
    for i in range(int(DAYS * 86400 / STEP_S)):
        t_s = T0_S + i * STEP_S
        hour = (t_s / 3600.0) % 24
        value = 300 - 150 * max(0.0, math.sin((hour - 6) / 12 * math.pi)) + rng.gauss(0, 10)
        out.append(
            IntensityPoint(
                t_s, t_s + STEP_S, max(0.0, value), "forecast", "average", "bench", "X", T0_S
            )
        )
    return out


def timed_ms(fn, repeat: int = 200) -> tuple[float, float]:
    samples = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - start) * 1000.0)
    samples.sort()
    return statistics.median(samples), samples[int(0.95 * len(samples)) - 1]


def main() -> None:
    slots = forecast()
    deadline_s = T0_S + DAYS * 86400.0
    prepared = Forecast(slots)
    print(f"forecast: {len(slots)} slots of {STEP_S / 60:.0f} min over {DAYS} days, release at its")
    print("start, deadline at its end. 'search': on a prepared Forecast; 'end-to-end': from")
    print("IntensityPoint objects (includes the conversion to arrays).")
    med, p95 = timed_ms(lambda: Forecast(slots))
    print(f"prepare Forecast: median {med:.3f} ms, p95 {p95:.3f} ms")
    print(
        f"{'planner':<14} {'job':>4} {'search ms':>10} {'p95':>7} {'end-to-end ms':>14} {'p95':>7}"
    )
    for hours in (1, 4, 8, 24):
        for name, planner in (
            ("contiguous", plan_contiguous),
            ("interruptible", plan_interruptible),
        ):
            row = []
            for source in (prepared, slots):
                row += timed_ms(
                    lambda planner=planner, source=source, hours=hours: planner(
                        source, duration_s=hours * 3600.0, release_s=T0_S, deadline_s=deadline_s
                    )
                )
            search = f"{row[0]:>10.3f} {row[1]:>7.3f}"
            print(f"{name:<14} {hours:>3}h {search} {row[2]:>14.3f} {row[3]:>7.3f}")


if __name__ == "__main__":
    main()
