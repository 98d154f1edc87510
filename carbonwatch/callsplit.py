"""The arithmetic of one per-call settle: cut the due intervals into pieces, fit, split.

``CallLedger`` (calls.py) keeps the books (pending spans and intervals, when to emit); this module
turns one batch of due intervals and the spans they touch into per-call energy. Everything here is
vectorised over spans: one sort of every boundary, then bincounts and prefix sums.

The split, in order:

1. **Pieces.** Every span boundary and segment boundary cuts time into pieces. A piece lies in one
   segment, so its energy is its segment's energy times its share of the segment's width, and the
   set of calls running through it is constant.
2. **Cells and the fit.** A *cell* is a stretch over which the consumer's own power is known: one
   segment (one power reading) when the consumer was alone on its device, the whole interval when
   it shared it (then the segments' shape is mostly the other process's, and only the interval's
   total says what the consumer drew). Each cell becomes one row of the consumer's
   :class:`~carbonwatch.powerfit.ActivityFit`: its power (energy / width) against the time-averaged
   activity of its calls: how many ran (``calls``), the sum of their weights (``weight``), and
   their prefill and decode token rates (tokens / the call's duration: a call's tokens are spread
   over its duration, so the rate, not the count, is what it adds to power at any instant).
3. **Split.** With a trusted fit (``power-fit``), call *i* demands ``d_i = c_calls + c_weight w_i +
   c_in r_in_i + c_out r_out_i`` watts while it runs and the consumer's base ``a`` is drawn
   regardless. Each cell's energy is spread over its pieces by the predicted power ``a + sum d_i``
   (so energy the power readings put just beside a call goes to it when the fit says the consumer
   draws nothing without calls), and each covered piece's energy goes to its calls in proportion to
   ``a / k + d_i``. A call's energy is then its demand times a prefix-sum difference: a batch-64
   call gets more than a batch-1 call of the same length, and more again for running longer,
   without ever multiplying a duration by a work count. Without a trusted fit (``overlap-time``) a
   piece's energy goes 1/k to each of its k calls, the previous rule. Either way uncovered pieces'
   energy is between-call energy, and Σ calls + between = the cells' energy, up to rounding.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from carbonwatch.powerfit import ActivityFit

METHOD_FIT = "power-fit"
METHOD_OVERLAP = "overlap-time"
# Regressors of the per-consumer fit, in the column order of the demand matrix.
FIT_KEYS = ("calls", "weight", "tokens_in", "tokens_out")


@dataclass
class PendingInterval:
    start_s: float
    end_s: float
    seg_lo_s: np.ndarray  # segment starts
    seg_hi_s: np.ndarray  # segment ends, non-decreasing
    seg_energy_j: np.ndarray  # the consumer's energy in each segment
    co2e_g_per_j: float  # this interval's intensity × PUE, per joule
    # True when the segments shape this consumer's own power (it was alone on the device): each
    # segment is then a cell of the fit; otherwise the whole interval is one cell.
    own_shape: bool = True


@dataclass
class SplitResult:
    add_j: np.ndarray  # per span of the input, energy added
    add_g: np.ndarray  # per span, carbon added
    between_j: float
    fitted: bool  # True when the split used the fit (power-fit), False for overlap time


def new_fit() -> ActivityFit[str]:
    # 600 rows: a minute of 10 Hz power readings for a service alone on its GPU, ten minutes of
    # 1 s intervals for one sharing it. r2 >= 0.5: below that the calls explain too little of the
    # service's power for their fitted demands to beat plain overlap time.
    return ActivityFit(max_rows=600, min_rows=20, min_r2=0.5)


def split(
    span_lo: np.ndarray,
    span_hi: np.ndarray,
    demand_x: np.ndarray,
    due: list[PendingInterval],
    fit: ActivityFit[str] | None,
) -> SplitResult:
    """Split the due intervals over the spans [span_lo, span_hi) (one row of ``demand_x`` each,
    columns as FIT_KEYS; column 0 is all ones). ``fit`` learns from these intervals first, then
    shapes the split; None forces overlap time."""
    lo_s = min(float(iv.seg_lo_s[0]) for iv in due)
    hi_s = max(float(iv.seg_hi_s[-1]) for iv in due)
    r = len(span_lo)
    # Spans reaching outside the due intervals only matter inside them: clip, fewer pieces.
    # One sort of every boundary; the inverse gives each boundary's piece index, no bisect.
    x, pos = np.unique(
        np.concatenate([np.clip(span_lo, lo_s, hi_s), np.clip(span_hi, lo_s, hi_s)]
                       + [b for iv in due for b in (iv.seg_lo_s, iv.seg_hi_s)]),
        return_inverse=True,
    )
    pos = pos.reshape(-1)
    width_s = np.diff(x)
    n = len(width_s)
    piece_j = np.zeros(n)
    piece_g = np.zeros(n)
    cell_edge = np.zeros(n + 1, dtype=bool)  # pieces where a cell starts
    inside = np.zeros(n + 1)  # +1 where a due interval starts, -1 where it ends
    points: list[tuple[float, float, float]] = []  # zero-width segments: (t_s, energy_j, g/J)
    at = 2 * r
    for iv in due:
        m = len(iv.seg_lo_s)
        lo_i, hi_i = pos[at:at + m], pos[at + m:at + 2 * m]
        at += 2 * m
        seg_w = iv.seg_hi_s - iv.seg_lo_s
        # Segments are contiguous, so segment q owns pieces lo_i[q] .. hi_i[q] - 1; a piece
        # gets its segment's energy × its share of the segment's width (a fraction, never a
        # power: a segment a few ulps wide would overflow one).
        counts = hi_i - lo_i
        pj = np.repeat(iv.seg_energy_j, counts) * (
            width_s[lo_i[0]:hi_i[-1]] / np.repeat(seg_w, counts)
        )
        piece_j[lo_i[0]:hi_i[-1]] += pj
        piece_g[lo_i[0]:hi_i[-1]] += pj * iv.co2e_g_per_j
        if iv.own_shape:
            cell_edge[lo_i] = True
        cell_edge[lo_i[0]] = cell_edge[hi_i[-1]] = True
        inside[lo_i[0]] += 1
        inside[hi_i[-1]] -= 1
        for q in np.flatnonzero((seg_w <= 0) & (iv.seg_energy_j != 0)).tolist():
            points.append((float(iv.seg_lo_s[q]), float(iv.seg_energy_j[q]), iv.co2e_g_per_j))
    # Coverage: how many calls run through each piece (+1 at a span start, -1 at its end).
    i_s, i_e = pos[:r], pos[r:2 * r]
    cover = np.cumsum(np.bincount(i_s, minlength=n + 1) - np.bincount(i_e, minlength=n + 1))[:n]
    covered = cover > 0
    cells = np.cumsum(cell_edge[:n]) - 1
    coefs = None
    if fit is not None and r:
        coefs = _learn(fit, demand_x, i_s, i_e, n, cover, covered, width_s, piece_j, cells,
                       np.cumsum(inside)[:n] > 0.5)
    if coefs is None:
        add_j, add_g, between_j = _overlap(i_s, i_e, cover, covered, piece_j, piece_g)
    else:
        add_j, add_g, between_j = _fitted(coefs, demand_x, i_s, i_e, n, cover, covered,
                                          width_s, piece_j, piece_g, cells)
    # Instantaneous energy (a zero-width segment) goes to the calls running at that instant.
    for t_s, energy_j, g_per_j in points:
        running = (span_lo <= t_s) & (span_hi > t_s)
        calls = int(np.count_nonzero(running))
        if calls == 0:
            between_j += energy_j
        else:
            add_j = add_j + running * (energy_j / calls)
            add_g = add_g + running * (energy_j * g_per_j / calls)
    return SplitResult(add_j, add_g, between_j, coefs is not None)


def _sweep(values: np.ndarray, i_s: np.ndarray, i_e: np.ndarray, n: int) -> np.ndarray:
    """Per piece, the sum of ``values`` over the spans running through it. The running sum is
    kept in extended precision: +w at each start and -w at each end must cancel to ~0 again."""
    delta = (np.bincount(i_s, weights=values, minlength=n + 1)
             - np.bincount(i_e, weights=values, minlength=n + 1))
    return np.cumsum(delta.astype(np.longdouble))[:n].astype(np.float64)


def _learn(
    fit: ActivityFit[str], demand_x: np.ndarray, i_s: np.ndarray, i_e: np.ndarray, n: int,
    cover: np.ndarray, covered: np.ndarray, width_s: np.ndarray, piece_j: np.ndarray,
    cells: np.ndarray, in_interval: np.ndarray,
) -> np.ndarray | None:
    """Add one fit row per cell, solve, and return the per-regressor watts (None: not trusted)."""
    n_cells = int(cells[-1]) + 1 if n else 0
    if n_cells == 0:
        return None
    cell_w = np.bincount(cells, weights=width_s, minlength=n_cells)
    cell_j = np.bincount(cells, weights=piece_j, minlength=n_cells)
    # A cell counts only when a due interval covers all of it (not a gap between intervals).
    gap_w = np.bincount(cells, weights=np.where(in_interval, 0.0, width_s), minlength=n_cells)
    ok = np.flatnonzero((cell_w > 0) & (gap_w <= 1e-12 * cell_w))[-fit.max_rows:]
    if len(ok):
        act = []
        running = None
        for k in range(demand_x.shape[1]):
            col = demand_x[:, k]
            if not col.any():  # no call reported this measure (tokens, mostly): skip the sweep
                act.append(np.zeros(len(ok)))
                continue
            if k == 0 or (running is not None and np.array_equal(col, demand_x[:, 0])):
                # The count of running calls (and a weight that is 1 for every call) is exact.
                per_piece = running = cover.astype(np.float64)
            else:
                per_piece = np.where(covered, _sweep(col, i_s, i_e, n), 0.0)
            act.append(np.bincount(cells, weights=per_piece * width_s, minlength=n_cells)[ok]
                       / cell_w[ok])
        power_w = (cell_j[ok] / cell_w[ok]).tolist()
        cols = [a.tolist() for a in act]
        for row, (p, w) in enumerate(zip(power_w, cell_w[ok].tolist(), strict=True)):
            fit.add({key: col[row] for key, col in zip(FIT_KEYS, cols, strict=False)}, p, w)
    solved = fit.solve()
    if solved is None:
        return None
    coefs = np.array([solved.base_w] + [solved.coef_w.get(k, 0.0) for k in FIT_KEYS])
    # A fit in which no activity adds power says nothing about how to split between calls.
    return coefs if coefs[1:].sum() > 0 else None


def _overlap(
    i_s: np.ndarray, i_e: np.ndarray, cover: np.ndarray, covered: np.ndarray,
    piece_j: np.ndarray, piece_g: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, float]:
    between_j = math.fsum(piece_j[~covered].tolist())
    k = np.maximum(cover, 1)
    # Prefix sums of each piece's per-call share: a call's energy is one difference.
    cum_j = np.concatenate(([0.0], np.cumsum(np.where(covered, piece_j / k, 0.0))))
    cum_g = np.concatenate(([0.0], np.cumsum(np.where(covered, piece_g / k, 0.0))))
    return cum_j[i_e] - cum_j[i_s], cum_g[i_e] - cum_g[i_s], between_j


def _fitted(
    coefs: np.ndarray, demand_x: np.ndarray, i_s: np.ndarray, i_e: np.ndarray, n: int,
    cover: np.ndarray, covered: np.ndarray, width_s: np.ndarray, piece_j: np.ndarray,
    piece_g: np.ndarray, cells: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, float]:
    base_w = float(coefs[0])
    demand_w = demand_x @ coefs[1:]
    # Every call that ran draws something: a call whose measures predict 0 W (weight 0 where
    # only weight matters) keeps a sliver rather than 0 J.
    floor_w = max(float(demand_w.max()), 1e-300) * 1e-6
    demand_w = np.maximum(demand_w, floor_w)
    running_w = np.where(covered, np.maximum(_sweep(demand_w, i_s, i_e, n), floor_w), 0.0)
    pred_w = base_w + running_w
    # Spread each cell's energy over its pieces by predicted power (by width where it is 0).
    n_cells = int(cells[-1]) + 1
    mass = pred_w * width_s
    cell_mass = np.bincount(cells, weights=mass, minlength=n_cells)
    cell_w = np.bincount(cells, weights=width_s, minlength=n_cells)
    cell_j = np.bincount(cells, weights=piece_j, minlength=n_cells)
    cell_g = np.bincount(cells, weights=piece_g, minlength=n_cells)
    by_mass = cell_mass[cells] > 0
    frac = np.where(by_mass, mass / np.where(by_mass, cell_mass[cells], 1.0),
                    width_s / np.where(cell_w[cells] > 0, cell_w[cells], 1.0))
    new_j = cell_j[cells] * frac
    g_per_j = np.where(cell_j > 0, cell_g / np.where(cell_j > 0, cell_j, 1.0), 0.0)
    new_g = new_j * g_per_j[cells]
    between_j = math.fsum(new_j[~covered].tolist())
    # Covered piece p gives call i new_j[p] * (base_w / k + d_i) / pred_w[p].
    per_w = np.where(covered, 1.0 / np.where(covered, pred_w, 1.0), 0.0)
    base_share = np.where(covered, base_w / np.maximum(cover, 1), 0.0) * per_w
    cum = [np.concatenate(([0.0], np.cumsum(v))) for v in
           (new_j * per_w, new_g * per_w, new_j * base_share, new_g * base_share)]
    add_j = demand_w * (cum[0][i_e] - cum[0][i_s]) + (cum[2][i_e] - cum[2][i_s])
    add_g = demand_w * (cum[1][i_e] - cum[1][i_s]) + (cum[3][i_e] - cum[3][i_s])
    return add_j, add_g, between_j
