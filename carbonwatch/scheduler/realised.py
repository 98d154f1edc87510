"""What deferring a job really saved: its measured carbon against the same energy profile run at
submit time. Pure.

The job's energy per minute (as measured, wherever it ran) is moved to the same *running-time*
offset after submit: a minute used 10 minutes into the job is costed at the intensity of
submit + 10 minutes. Running time skips the pauses of an interruptible job, so its profile is
costed as one contiguous run from submit, which is what running at once would have been."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

from carbonwatch.grid.types import IntensitySource
from carbonwatch.model import J_PER_KWH

_MINUTE_S = 60.0


def running_offset_s(t_s: float, runs: Sequence[tuple[float, float]]) -> float:
    """Running time before ``t_s`` within ``runs`` (sorted [start, end) windows)."""
    total = 0.0
    for start_s, end_s in runs:
        if t_s <= start_s:
            break
        total += min(t_s, end_s) - start_s
    return total


def _minute_time(minute_s: float, runs: Sequence[tuple[float, float]]) -> float:
    """A representative time of the job's use of a minute: the middle of the first run's part
    inside it (the middle of the minute clamped into the runs when none overlaps)."""
    lo, hi = minute_s, minute_s + _MINUTE_S
    for start_s, end_s in runs:
        a, b = max(lo, start_s), min(hi, end_s)
        if b > a:
            return (a + b) / 2
    mid = minute_s + _MINUTE_S / 2
    return min(max(mid, runs[0][0]), runs[-1][1])


def baseline_co2e_g(
    minutes: Iterable[tuple[float, float]],
    runs: Sequence[tuple[float, float]],
    submitted_s: float,
    intensity: IntensitySource,
    pue: float = 1.0,
) -> float:
    """gCO2e of ``minutes`` ((minute_s, energy_j) of the job) had the job run from submit."""
    if not runs:
        raise ValueError("a job that never ran has no realised baseline")
    runs = sorted(runs)
    parts = []
    for minute_s, energy_j in minutes:
        offset_s = running_offset_s(_minute_time(minute_s, runs), runs)
        point = intensity.intensity_at(submitted_s + offset_s)
        parts.append(energy_j / J_PER_KWH * pue * point.intensity_g_per_kwh)
    return math.fsum(parts)
