"""The power shape of a GPU counter interval: power samples integrated into pieces, scaled so they
sum exactly to the counter's energy (used by :class:`carbonwatch.collectors.gpu.GpuCollector`)."""

from __future__ import annotations

from collections.abc import Sequence


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
