"""Series as they come: how long each point holds, and where the data has holes.

Published series are not clean: a file switches from 30-minute to 15-minute points part-way
through, a point is missing here and there, timestamps repeat or arrive out of order. A point
holds until the next point, but no longer than the *local* resolution: the median gap between
the points around it (``_WINDOW`` gaps either side). So a change of resolution is no gap (the
median follows the new step within a few points), while a missing point leaves a hole (one long
gap does not move the median). The global minimum gap, used before, turned every 30-minute point
of a mixed file into 15 minutes of data and 15 minutes of hole.

``describe_gaps`` names the holes between two times, for a plan that had to fall back: "no data
02:00-04:00 on 2026-03-25".
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

_WINDOW = 3  # gaps either side of a point that decide its local resolution
# A gap up to this much longer than the local resolution is jitter (a timestamp a second late),
# not a hole: the point still holds until the next one.
_JITTER = 1.1


def local_steps(ordered_s: Sequence[float], default_step_s: float) -> list[float]:
    """For strictly increasing starts, how long each point holds (see the module doc)."""
    n = len(ordered_s)
    if n == 0:
        return []
    if n == 1:
        return [default_step_s]
    gaps = [b - a for a, b in zip(ordered_s, ordered_s[1:], strict=False)]
    steps: list[float] = []
    for i in range(n):
        # Gaps around point i: gap i is the one after it, gap i-1 the one before.
        lo, hi = max(0, i - _WINDOW), min(len(gaps), i + _WINDOW)
        near = sorted(gaps[lo:hi])
        local_s = near[len(near) // 2]
        if i < len(gaps):
            steps.append(gaps[i] if gaps[i] <= local_s * _JITTER else local_s)
        else:
            steps.append(local_s)  # the last point: as long as its neighbours
    return steps


def spans(starts_s: Sequence[float], default_step_s: float) -> list[tuple[float, float]]:
    """Give each start (any order, repeats allowed) an end: its local step (module doc)."""
    ordered = sorted(set(starts_s))
    step_of = dict(zip(ordered, local_steps(ordered, default_step_s), strict=True))
    return [(s, s + step_of[s]) for s in starts_s]


def _hhmm(t_s: float) -> datetime:
    return datetime.fromtimestamp(t_s, UTC)


def gap_text(start_s: float, end_s: float) -> str:
    """``no data 02:00-04:00 on 2026-03-25`` (UTC); both dates when it spans midnight."""
    a, b = _hhmm(start_s), _hhmm(end_s)
    if a.date() == b.date():
        return f"no data {a:%H:%M}-{b:%H:%M} on {a:%Y-%m-%d}"
    if (b.date() - a.date()).days == 1 and b.strftime("%H:%M:%S") == "00:00:00":
        return f"no data {a:%H:%M}-24:00 on {a:%Y-%m-%d}"
    return f"no data {a:%Y-%m-%d %H:%M} - {b:%Y-%m-%d %H:%M}"


def describe_gaps(
    covered: Sequence[tuple[float, float]],
    start_s: float,
    end_s: float,
    *,
    limit: int = 3,
) -> list[str]:
    """The holes in ``covered`` (sorted, non-overlapping (start, end) runs) within
    [start_s, end_s), as :func:`gap_text` strings, the first ``limit`` of them (and how many
    more)."""
    holes: list[tuple[float, float]] = []
    cursor = start_s
    for lo, hi in covered:
        if hi <= cursor:
            continue
        if lo >= end_s:
            break
        if lo > cursor + 1e-6:
            holes.append((cursor, min(lo, end_s)))
        cursor = max(cursor, hi)
    if cursor < end_s - 1e-6:
        holes.append((cursor, end_s))
    texts = [gap_text(a, b) for a, b in holes[:limit]]
    if len(holes) > limit:
        texts.append(f"and {len(holes) - limit} more holes")
    return texts
