"""A process's SM activity on a GPU from its sparse NVML samples (used by ``gpushare``).

A sample at time ``T`` with SM fraction ``f`` says the process was busy ``f`` over the sample
window ending at ``T``, which starts at the sample before (or ``FIRST_SAMPLE_WINDOW_S`` earlier
for the first one). A time inside a window is *covered* by it (only the last ``window_s`` of a
window longer than that: samples were lost); past the newest earlier sample, that sample is
*carried* for ``window_s``. ``times`` are a process's sample times, ascending, ``fracs`` their SM
fractions.

These run for every process on every shared GPU each second: plain Python, a bisect at most.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence

# NVML does not say when a process's first sample window began; it is taken as one sample period.
FIRST_SAMPLE_WINDOW_S = 0.5


def points(start_s: float, end_s: float) -> tuple[int, float]:
    """How many points an interval's mean activity is measured at (one per 100 ms, 4 to 200),
    and their spacing: point ``j`` is at ``start_s + (j + 0.5) * step``."""
    n = min(max(4, math.ceil((end_s - start_s) / 0.1)), 200)
    return n, (end_s - start_s) / n


def covering(times: Sequence[float], t_s: float, window_s: float) -> int:
    """Index of the sample whose window covers t_s, -1 if none; ``times`` not empty."""
    i = bisect.bisect_left(times, t_s)
    if i < len(times) and times[i] - t_s <= window_s \
            and t_s > (times[i - 1] if i else times[0] - FIRST_SAMPLE_WINDOW_S):
        return i
    return -1


def activity_at(
    times: Sequence[float], fracs: Sequence[float], window_s: float, t_s: float
) -> tuple[float | None, bool]:
    """(SM fraction at t_s, covered): the covering sample's, else the newest earlier sample's
    carried up to ``window_s`` (not covered), else None."""
    if not times:
        return None, False
    i = covering(times, t_s, window_s)
    if i >= 0:
        return fracs[i], True
    i = bisect.bisect_left(times, t_s)
    if i > 0 and t_s - times[i - 1] <= window_s:
        return fracs[i - 1], False
    return None, False


def tail_uncovered(last_s: float, start_s: float, end_s: float) -> bool:
    """Whether more than 5 % of the interval's points lie after ``last_s`` (a process's newest
    sample): none of those can be covered, so its coverage is surely under 0.95. A few float
    tests instead of the whole measure, for a counter row that waits on its samples."""
    n, step = points(start_s, end_s)
    for above, j in enumerate(reversed(range(n)), start=1):
        if start_s + (j + 0.5) * step <= last_s:
            return False
        if (n - above) / n < 0.95:
            return True
    return False


def mean_activity(
    times: Sequence[float], fracs: Sequence[float], window_s: float, start_s: float, end_s: float
) -> tuple[float | None, float]:
    """(mean SM fraction over the interval's points, None if nothing is known at any; the
    fraction of the points covered rather than carried): :func:`activity_at` at every point,
    inlined. (Counting the points per sample window instead, with exact boundaries, cost more
    than this walk for the ~10 points of a 1 s interval.)"""
    n, step = points(start_s, end_s)
    if not times:
        return None, 0.0
    count, first_start = len(times), times[0] - FIRST_SAMPLE_WINDOW_S
    known: list[float] = []
    covered = 0
    # The points ascend: one bisect, then walk (i is bisect_left(times, t_s) at each point).
    i = bisect.bisect_left(times, start_s + 0.5 * step)
    for j in range(n):
        t_s = start_s + (j + 0.5) * step
        while i < count and times[i] < t_s:
            i += 1
        if i == 0 and t_s <= first_start:
            continue
        if i < count and t_s > (times[i - 1] if i > 0 else first_start) \
                and times[i] - t_s <= window_s:
            known.append(fracs[i])
            covered += 1
        elif i > 0 and t_s - times[i - 1] <= window_s:
            known.append(fracs[i - 1])
    return (math.fsum(known) / n if known else None), covered / n
