"""The power shape of a GPU counter interval: power samples integrated into pieces, scaled so they
sum exactly to the counter's energy (used by :class:`carbonwatch.collectors.gpu.GpuCollector`), and
how far the power reading lags the counter (:func:`estimate_power_lag`, used by gpushare)."""

from __future__ import annotations

import functools
from collections import deque
from collections.abc import Sequence
from typing import Any

# Shifts of the power reading tried by estimate_power_lag: 0 to 2 s.
LAG_SHIFTS_S = tuple(round(0.05 * i, 2) for i in range(41))


def power_pieces(
    carry: tuple[float, float] | None,
    samples: Sequence[tuple[float, float]],
    start_s: float,
    end_s: float,
) -> list[tuple[float, float]]:
    """Trapezoid integral of power over [start_s, end_s] as (piece_end_s, energy_j) pieces.

    The level at start_s is the last sample before it (else the first sample inside); after the last
    sample the level holds until end_s. One piece ends at each sample time, one at end_s.
    """
    inside = [(t, p) for t, p in samples if start_s < t <= end_s]
    if carry is not None:
        level0 = carry[1]
    elif inside:
        level0 = inside[0][1]
    else:
        return []
    points = [(start_s, level0), *inside]
    if points[-1][0] < end_s:
        points.append((end_s, points[-1][1]))
    return [
        (t1, (p0 + p1) / 2.0 * (t1 - t0))
        for (t0, p0), (t1, p1) in zip(points, points[1:], strict=False)
    ]


def scale_segments(
    pieces: Sequence[tuple[float, float]], energy_j: float, end_s: float
) -> tuple[tuple[float, float], ...]:
    """Scale the power shape so the segments sum exactly to the counter's energy."""
    shape_j = sum(e for _, e in pieces)
    if shape_j <= 0.0:
        return ((end_s, energy_j),)
    factor = energy_j / shape_j
    scaled = [(t, e * factor) for t, e in pieces]
    # Put the float rounding residue in the last segment so the sum is exact.
    residue = energy_j - sum(e for _, e in scaled)
    t_last, e_last = scaled[-1]
    scaled[-1] = (t_last, e_last + residue)
    return tuple(scaled)


class PowerReadings:
    """The last ``size`` (time, power) readings, as two deques of floats: the lag estimate turns
    them into arrays in C (``list`` then ``np.array``), not with a Python pass over tuples."""

    def __init__(self, size: int) -> None:
        self._t: deque[float] = deque(maxlen=size)
        self._p: deque[float] = deque(maxlen=size)

    def __len__(self) -> int:
        return len(self._t)

    def append(self, t_s: float, power_w: float) -> None:
        self._t.append(t_s)
        self._p.append(power_w)

    def arrays(self) -> tuple[Any, Any]:
        """(times, powers), oldest first: new arrays, the same numbers as appended."""
        import numpy as np

        return np.array(list(self._t), dtype=float), np.array(list(self._p), dtype=float)


@functools.cache
def _shifts_column() -> Any:
    """LAG_SHIFTS_S as a numpy column, made once, on first use (numpy loads late)."""
    import numpy as np

    return np.array(LAG_SHIFTS_S)[:, None]


def estimate_power_lag(
    readings: Sequence[tuple[float, float]] | PowerReadings,
    intervals: Sequence[tuple[float, float, float]],
    current_s: float,
) -> float:
    """How many seconds the power reading trails the energy it describes, found by the counter.

    Each counter interval's energy is exact; the readings, held from one to the next and shifted
    back by ``d``, integrate to a prediction of it. The ``d`` with the smallest squared error
    wins. Where power barely moved (every shift predicts alike) the current value stays."""
    if len(readings) < 20 or len(intervals) < 5:
        return current_s
    import numpy as np

    if isinstance(readings, PowerReadings):
        t, p = readings.arrays()
    else:
        t = np.array([r[0] for r in readings])
        p = np.array([r[1] for r in readings])
    cum = np.concatenate([[0.0], np.cumsum(p[:-1] * np.diff(t))])
    iv = np.array(intervals, dtype=float)  # (intervals, 3): start, end, energy
    k = len(iv)
    energy = iv[:, 2]
    # Both edges of every interval under every shift, integrated in one pass: (shifts, 2k).
    edges = iv[:, :2].T.reshape(1, 2 * k) + _shifts_column()
    inside = (edges[:, :k] >= t[0]) & (edges[:, k:] <= t[-1])
    # Index -1 (an edge before the first reading) wraps harmlessly: only edges inside are used.
    i = np.searchsorted(t, edges, side="right") - 1
    integral = cum[i] + p[i] * (edges - t[i])
    sq = np.where(inside, (integral[:, k:] - integral[:, :k] - energy) ** 2, 0.0)
    # The 41 per-shift figures in Python: a numpy call costs ~10 us on a cold cache.
    counts = inside.sum(axis=1).tolist()
    totals = sq.sum(axis=1).tolist()
    usable = [(d, total / c) for d, total, c in zip(LAG_SHIFTS_S, totals, counts, strict=True)
              if c >= 5]
    if not usable:
        return current_s
    errors = [e for _, e in usable]
    best_err = min(errors)
    best_s = usable[errors.index(best_err)][0]  # the first smallest, as np.argmin
    # Power too flat to tell the shifts apart (they differ by less than 0.1 % of an interval's
    # energy, or the best is barely better than the worst): keep the current value.
    floor = (1e-3 * float(energy.mean())) ** 2
    if not errors or max(errors) - best_err <= floor or best_err >= 0.9 * max(errors):
        return current_s
    return best_s
