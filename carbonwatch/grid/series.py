"""A series-backed IntensitySource: fetched points first, the static average where none cover.

Overlapping points are resolved once, up front: an actual beats a forecast, a newer fetch beats an
older one. What is left is a sorted, non-overlapping list that ``intensity_at`` bisects."""

from __future__ import annotations

import bisect
from collections.abc import Iterable

from carbonwatch.grid.types import IntensityPoint, IntensitySource

_KIND_RANK = {"actual": 0, "forecast": 1, "static": 2}


def _priority(point: IntensityPoint) -> tuple[int, float]:
    return (_KIND_RANK.get(point.kind, 3), -(point.fetched_at_s or 0.0))


def normalise(points: Iterable[IntensityPoint]) -> list[IntensityPoint]:
    """Sorted, non-overlapping points; where two overlap, the better one (see module doc) wins
    and the other is dropped whole (points from one provider share a grid, so trimming is rare
    enough not to be worth the partial points it would create)."""
    kept: list[IntensityPoint] = []
    starts: list[float] = []
    for point in sorted(points, key=_priority):
        if not point.end_s > point.start_s:
            continue
        i = bisect.bisect_right(starts, point.start_s)
        overlaps_left = i > 0 and kept[i - 1].end_s > point.start_s
        overlaps_right = i < len(kept) and kept[i].start_s < point.end_s
        if overlaps_left or overlaps_right:
            continue
        kept.insert(i, point)
        starts.insert(i, point.start_s)
    return kept


class SeriesSource:
    """IntensitySource over fetched points, answering ``fallback`` where no point covers t."""

    def __init__(self, points: Iterable[IntensityPoint], fallback: IntensitySource) -> None:
        self.points = normalise(points)
        self._starts = [p.start_s for p in self.points]
        self.fallback = fallback

    def intensity_at(self, t_s: float) -> IntensityPoint:
        i = bisect.bisect_right(self._starts, t_s) - 1
        if i >= 0 and t_s < self.points[i].end_s:
            return self.points[i]
        return self.fallback.intensity_at(t_s)


# A series covers a stretch when its points leave less than this unexplained (float rounding).
COVER_EPS_S = 1e-6


def mean_over(points: list[IntensityPoint], start_s: float, end_s: float) -> float | None:
    """Time-weighted mean over [start_s, end_s) if the points cover all of it, else None."""
    covered_s = weighted = 0.0
    for p in points:
        lo, hi = max(p.start_s, start_s), min(p.end_s, end_s)
        if hi > lo:
            covered_s += hi - lo
            weighted += (hi - lo) * p.intensity_g_per_kwh
    if covered_s < (end_s - start_s) - COVER_EPS_S:
        return None
    return weighted / covered_s
