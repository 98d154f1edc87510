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
from collections import deque
from dataclasses import dataclass

import numpy as np

from carbonwatch.powerfit import ActivityFit, Fit, nnls

METHOD_FIT = "power-fit"
METHOD_OVERLAP = "overlap-time"
# Regressors of the per-consumer fit, in the column order of the demand matrix.
FIT_KEYS = ("calls", "weight", "tokens_in", "tokens_out")
# A power reading is the mean over ~100 ms and moves every ~100 ms, so the power a segment shows
# comes from a window half an update period wider on each side than the segment.
READING_SPREAD_S = 0.05
# The lag actually applied is a typical one; the true one depends on the phase between polls and
# the device's updates. The fit tries these offsets from it and keeps the one that explains most.
LAG_OFFSETS_S = (-0.05, 0.0, 0.05)
# The fit: a minute of 10 Hz readings at most, 20 to try, trusted from r2 0.5 (below that the
# calls explain too little of the service's power for their demands to beat overlap time).
FIT_MAX_ROWS = 600
FIT_MIN_ROWS = 20
FIT_MIN_R2 = 0.5
SCALE_ROUNDS = 4
# A counter interval's calls get at most this many times the energy the fit predicts for them.
MAX_OVER_FIT = 2.0
# New readings before a trusted fit is solved again (5 s at 10 Hz), and an untrusted one.
RESOLVE_ROWS = 50
RETRY_ROWS = 8
_EMPTY = np.empty(0)
# Rows without any call that pin the fit's intercept (fewer: the intercept is fitted), and how
# many recent ones are kept.
MIN_IDLE_ROWS = 5
IDLE_ROWS_KEPT = 200
# An idle row must have had no call this much beyond its window either: a reading whose phase
# differs from the assumed one would otherwise bring a call's energy into "no call" rows.
IDLE_GUARD_S = 0.1
# Activity is needed this far beyond the due intervals to fill those windows.
MARGIN_S = READING_SPREAD_S + max(abs(o) for o in LAG_OFFSETS_S) + IDLE_GUARD_S


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
    learned: bool = False  # its rows are in the fit already (learned while the fit warmed up)
    # The consumer's energy over the device's (active) energy in this interval: its readings
    # divided by it are the device's power shape.
    share: float = 1.0


@dataclass
class SplitResult:
    add_j: np.ndarray  # per span of the input, energy added
    add_g: np.ndarray  # per span, carbon added
    between_j: float
    fitted: bool  # True when the split used the fit (power-fit), False for overlap time


class CallPowerFit:
    """One consumer's fit of how its power follows its calls' activity, per candidate lag.

    Each power reading is one row: its power against its calls' mean activity over the window it
    averages. Two things spoil a plain fit of those rows. The collector scales each interval's
    readings to its counter energy, and the readings trail the counter, so all of an interval's
    readings carry one unknown factor (x0.4 .. x1.5 on a bursty service, from whatever activity
    sat at its edges); beside a trainer they also carry the trainer's steady power. So the fit
    is *within intervals*: deviations from the interval's means (which cancel the offset), with
    the interval's factor estimated and divided out in a few alternating rounds (a factor per
    interval, then the coefficients). The base (power with no call running) is measured
    directly: the mean power of readings alone on the device with no call anywhere near them.
    The final, rescaled rows go through :class:`ActivityFit` for the trusted solve (min rows,
    r2 gate)."""

    def __init__(self) -> None:
        # Per candidate: rows as arrays (activity per FIT_KEYS, power, width, interval serial).
        self._x = [np.zeros((0, len(FIT_KEYS))) for _ in LAG_OFFSETS_S]
        self._y = [_EMPTY for _ in LAG_OFFSETS_S]
        self._w = [_EMPTY for _ in LAG_OFFSETS_S]
        self._g = [np.zeros(0, dtype=np.int64) for _ in LAG_OFFSETS_S]
        self._own = [np.zeros(0, dtype=bool) for _ in LAG_OFFSETS_S]
        self._serial = 0
        # The last answer of solve() and how many rows came since: the fit moves slowly, and a
        # solve costs a few ms, so it is redone only every RESOLVE_ROWS new readings.
        self._cached: np.ndarray | None = None
        self._new_rows = 0
        # Per candidate, the (power, width) of recent readings, alone on the device, near which
        # no call ran: the consumer's power between calls.
        self.idle_rows: list[deque[tuple[float, float]]] = [
            deque(maxlen=IDLE_ROWS_KEPT) for _ in LAG_OFFSETS_S
        ]

    @property
    def warming_up(self) -> bool:
        """Too few rows yet for any fit to be tried."""
        return len(self._y[0]) < FIT_MIN_ROWS

    def add_rows(self, i: int, x: np.ndarray, y: np.ndarray, w: np.ndarray,
                 group: np.ndarray, own: np.ndarray) -> None:
        """Rows for candidate ``i``; ``group`` numbers their intervals from 0 within the call;
        ``own``: the row's interval had the device to itself (its scale is estimated)."""
        self._own[i] = np.concatenate([self._own[i], own])[-FIT_MAX_ROWS:]
        self._x[i] = np.concatenate([self._x[i], x])[-FIT_MAX_ROWS:]
        self._y[i] = np.concatenate([self._y[i], y])[-FIT_MAX_ROWS:]
        self._w[i] = np.concatenate([self._w[i], w])[-FIT_MAX_ROWS:]
        self._g[i] = np.concatenate([self._g[i], group + self._serial])[-FIT_MAX_ROWS:]
        if i == 0:
            self._new_rows += len(y)

    def next_serial(self, groups: int) -> None:
        self._serial += groups

    def _solve_one(self, i: int) -> Fit[str] | None:
        y, w = self._y[i], self._w[i]
        if len(y) < FIT_MIN_ROWS:
            return None
        x = self._x[i]
        _, g = np.unique(self._g[i], return_inverse=True)
        gw = np.bincount(g, weights=w)
        # Scales are estimated for intervals alone on the device (the collector's per-interval
        # factor, large on a bursty service); beside a steady neighbour the device's energy
        # hardly depends on the edges, and the share already came out.
        own_g = np.bincount(g, weights=self._own[i].astype(np.float64)) > 0

        def centred(v: np.ndarray) -> np.ndarray:
            return v - (np.bincount(g, weights=v * w) / gw)[g]

        dx = np.column_stack([centred(x[:, k]) for k in range(x.shape[1])])
        moving = np.ptp(dx, axis=0) > 1e-9
        if not moving.any():
            return None
        sw = np.sqrt(w)
        dyr = centred(y)
        scale = np.ones(len(gw))
        for _ in range(SCALE_ROUNDS):
            dy = centred(y / scale[g])
            coefs = nnls(dx[:, moving] * sw[:, None], dy * sw)
            pred = dx[:, moving] @ coefs
            # Per interval, the factor that best maps its predicted deviations onto the measured.
            num = np.bincount(g, weights=w * dyr * pred)
            den = np.bincount(g, weights=w * pred * pred)
            fitted = den > 1e-12 * max(float(den.max()), 1e-300)
            scale = np.where(fitted & own_g, num / np.where(fitted, den, 1.0), 1.0)
            scale = np.clip(scale, 0.2, 5.0)
            if own_g.any():
                scale[own_g] /= float(np.exp(np.average(np.log(scale[own_g]),
                                                        weights=gw[own_g])))
        dy = centred(y / scale[g])
        # ActivityFit below is the judge; skip building it when it would surely refuse (the
        # same weighted r2, from the last round's coefficients, well under the bar).
        resid = dy - dx[:, moving] @ coefs
        total = float(np.sum(w * dy * dy))
        if total <= 0 or 1.0 - float(np.sum(w * resid * resid)) / total < FIT_MIN_R2 - 0.1:
            return None
        fit: ActivityFit[str] = ActivityFit(max_rows=FIT_MAX_ROWS, min_rows=FIT_MIN_ROWS,
                                            min_r2=FIT_MIN_R2, fixed_base_w=0.0, signed=True)
        keys = [k for k, m in zip(FIT_KEYS, moving, strict=True) if m]
        cols = [dx[:, k].tolist() for k in np.flatnonzero(moving)]
        for r, (p, rw) in enumerate(zip(dy.tolist(), w.tolist(), strict=True)):
            fit.add({key: c[r] for key, c in zip(keys, cols, strict=True)}, p, rw)
        return fit.solve()

    def solve(self) -> np.ndarray | None:
        """[base_w, watts per unit of each FIT_KEYS regressor] of the best trusted fit, or None."""
        if self._new_rows < (RESOLVE_ROWS if self._cached is not None else RETRY_ROWS):
            return self._cached
        self._new_rows = 0
        self._cached = self._solve()
        return self._cached

    def _solve(self) -> np.ndarray | None:
        best, best_i = None, 0
        for i in range(len(LAG_OFFSETS_S)):
            solved = self._solve_one(i)
            if solved is not None and (best is None or solved.r2 > best.r2):
                best, best_i = solved, i
        if best is None:
            return None
        coefs = np.array([0.0] + [best.coef_w.get(k, 0.0) for k in FIT_KEYS])
        if not coefs[1:].sum() > 0:
            return None  # no activity adds power: nothing to split calls by
        idle = self.idle_rows[best_i]
        if len(idle) >= MIN_IDLE_ROWS:
            width = math.fsum(w for _, w in idle)
            coefs[0] = max(math.fsum(p * w for p, w in idle) / width, 0.0)
        # else: never seen idle alone on its device (always busy, or always beside another
        # process): what runs between its calls is taken as nothing while the fit holds.
        return coefs


@dataclass
class _Cut:
    """The due intervals and the spans cut into pieces at every boundary."""

    x: np.ndarray  # piece boundaries, ascending
    width_s: np.ndarray
    i_s: np.ndarray  # per span: index of its first piece
    i_e: np.ndarray  # per span: index of the piece after its last
    cover: np.ndarray  # per piece: calls running through it
    piece_j: np.ndarray
    piece_g: np.ndarray
    cell_edge: np.ndarray  # per boundary: a fit cell starts here
    iv_edge: np.ndarray  # per boundary: a due interval starts or ends here
    in_iv: np.ndarray  # per piece: inside a due interval
    own: np.ndarray  # per piece: inside an own-shape interval
    learned: np.ndarray  # per piece: inside an interval already learned from
    rim: np.ndarray  # per piece: in the first or last segment of an own-shape interval
    share: np.ndarray  # per piece: its interval's share (1 outside intervals)
    points: list[tuple[float, float, float]]  # zero-width segments: (t_s, energy_j, g/J)

    @property
    def n(self) -> int:
        return len(self.width_s)


def _cut(span_lo: np.ndarray, span_hi: np.ndarray, due: list[PendingInterval]) -> _Cut:
    lo_s = min(float(iv.seg_lo_s[0]) for iv in due) - MARGIN_S
    hi_s = max(float(iv.seg_hi_s[-1]) for iv in due) + MARGIN_S
    r = len(span_lo)
    # Spans reaching outside the due intervals only matter inside them (and the margin the fit
    # reads activity from): clip, fewer pieces. One sort of every boundary; the inverse gives
    # each boundary's piece index, no bisect.
    x, pos = np.unique(
        np.concatenate([np.clip(span_lo, lo_s, hi_s), np.clip(span_hi, lo_s, hi_s), [lo_s, hi_s]]
                       + [b for iv in due for b in (iv.seg_lo_s, iv.seg_hi_s)]),
        return_inverse=True,
    )
    pos = pos.reshape(-1)
    width_s = np.diff(x)
    n = len(width_s)
    piece_j = np.zeros(n)
    piece_g = np.zeros(n)
    cell_edge = np.zeros(n + 1, dtype=bool)
    iv_edge = np.zeros(n + 1, dtype=bool)
    cell_edge[0] = iv_edge[0] = True  # the margin before the first interval is a cell of its own
    inside, own, learned, rim = (np.zeros(n + 1) for _ in range(4))
    share = np.ones(n)
    points: list[tuple[float, float, float]] = []
    at = 2 * r + 2
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
        a, b = lo_i[0], hi_i[-1]
        share[a:b] = iv.share
        cell_edge[lo_i] = True  # one fit cell per reading
        # The first and last readings straddle the counter's bounds (the shape there is partly
        # the neighbour interval's, partly a guess): no fit rows from them.
        for q in (0, m - 1) if m > 1 else ():
            rim[lo_i[q]] += 1
            rim[hi_i[q]] -= 1
        if iv.own_shape:
            own[a] += 1
            own[b] -= 1
        if iv.learned:
            learned[a] += 1
            learned[b] -= 1
        cell_edge[a] = cell_edge[b] = iv_edge[a] = iv_edge[b] = True
        inside[a] += 1
        inside[b] -= 1
        for q in np.flatnonzero((seg_w <= 0) & (iv.seg_energy_j != 0)).tolist():
            points.append((float(iv.seg_lo_s[q]), float(iv.seg_energy_j[q]), iv.co2e_g_per_j))
    # Coverage: how many calls run through each piece (+1 at a span start, -1 at its end).
    i_s, i_e = pos[:r], pos[r:2 * r]
    cover = np.cumsum(np.bincount(i_s, minlength=n + 1) - np.bincount(i_e, minlength=n + 1))[:n]
    return _Cut(x, width_s, i_s, i_e, cover, piece_j, piece_g, cell_edge, iv_edge,
                np.cumsum(inside)[:n] > 0.5, np.cumsum(own)[:n] > 0.5,
                np.cumsum(learned)[:n] > 0.5, np.cumsum(rim)[:n] > 0.5, share, points)


def learn(
    span_lo: np.ndarray, span_hi: np.ndarray, demand_x: np.ndarray, due: list[PendingInterval],
    fit: CallPowerFit,
) -> None:
    """Only add the due intervals' rows to ``fit`` (while it warms up), marking them learned."""
    _learn(fit, demand_x, _cut(span_lo, span_hi, due))
    for iv in due:
        iv.learned = True


def split(
    span_lo: np.ndarray,
    span_hi: np.ndarray,
    demand_x: np.ndarray,
    due: list[PendingInterval],
    fit: CallPowerFit | None,
) -> SplitResult:
    """Split the due intervals over the spans [span_lo, span_hi) (one row of ``demand_x`` each,
    columns as FIT_KEYS; column 0 is all ones). ``fit`` learns from these intervals first, then
    shapes the split; None forces overlap time. Spans that only touch the margin get 0."""
    cut = _cut(span_lo, span_hi, due)
    coefs = None
    if fit is not None and len(span_lo):
        _learn(fit, demand_x, cut)
        coefs = fit.solve()
    if coefs is None:
        add_j, add_g, between_j = _overlap(cut)
    else:
        add_j, add_g, between_j = _fitted(coefs, demand_x, cut)
    # Instantaneous energy (a zero-width segment) goes to the calls running at that instant.
    for t_s, energy_j, g_per_j in cut.points:
        running = (span_lo <= t_s) & (span_hi > t_s)
        calls = int(np.count_nonzero(running))
        if calls == 0:
            between_j += energy_j
        else:
            add_j = add_j + running * (energy_j / calls)
            add_g = add_g + running * (energy_j * g_per_j / calls)
    return SplitResult(add_j, add_g, between_j, coefs is not None)


def _sweep(values: np.ndarray, cut: _Cut) -> np.ndarray:
    """Per piece, the sum of ``values`` over the spans running through it. The running sum is
    kept in extended precision: +w at each start and -w at each end must cancel to ~0 again."""
    n = cut.n
    delta = (np.bincount(cut.i_s, weights=values, minlength=n + 1)
             - np.bincount(cut.i_e, weights=values, minlength=n + 1))
    running = np.cumsum(delta.astype(np.longdouble))[:n].astype(np.float64)
    return np.where(cut.cover > 0, running, 0.0)


def _learn(fit: CallPowerFit, demand_x: np.ndarray, cut: _Cut) -> None:
    """Fit rows from the readings not learned before: each reading's power and its calls' mean
    activity over the window it averages, as deviations from its interval's means (see
    CallPowerFit), for each candidate lag; and idle rows for the base."""
    if not cut.n:
        return
    cells = np.cumsum(cut.cell_edge[:cut.n]) - 1
    n_cells = int(cells[-1]) + 1
    w = cut.width_s
    cell_w = np.bincount(cells, weights=w, minlength=n_cells)
    cell_j = np.bincount(cells, weights=cut.piece_j, minlength=n_cells)
    # A cell counts when due intervals cover all of it (not a gap, not the margin, not a rim).
    outside = np.bincount(cells, weights=np.where(cut.in_iv & ~cut.learned & ~cut.rim, 0.0, w),
                          minlength=n_cells)
    own_cell = np.bincount(cells, weights=cut.own * w, minlength=n_cells) > 0.5 * cell_w
    first = np.flatnonzero(cut.cell_edge[:cut.n])
    ok = np.flatnonzero((cell_w > 0) & (outside <= 1e-9 * cell_w))
    if len(ok) < 2:
        return
    # Activity as cumulative integrals over the piece boundaries (exact: piecewise linear), so
    # the mean over any window is two interpolations.
    integrals = []
    for k in range(demand_x.shape[1]):
        col = demand_x[:, k]
        if not col.any():  # no call reported this measure (tokens, mostly): skip the sweep
            integrals.append(None)
            continue
        per_piece = cut.cover.astype(np.float64) if k == 0 else _sweep(col, cut)
        integrals.append(np.concatenate(([0.0], np.cumsum(per_piece * w))))
    width = cell_w[ok]
    power_w = cell_j[ok] / width
    # Beside another process the readings are the device's, scaled by this consumer's share of
    # the interval: divided by it they are device power again, whose deviations within the
    # interval are this consumer's (plus the neighbour's fluctuations, noise), in the same
    # units as readings alone. Alone, the share is 1.
    power_w = power_w / cut.share[first[ok]]
    # Each cell's interval, and the width-weighted mean over its interval's usable cells.
    group = (np.cumsum(cut.iv_edge[:cut.n]) - 1)[first[ok]]
    _, group = np.unique(group, return_inverse=True)
    several = np.bincount(group)[group] >= 2  # a lone reading has no deviation to learn from
    lo = first[ok]
    cell_lo, cell_hi = cut.x[lo], cut.x[lo] + width
    use = np.flatnonzero(several)
    for i, (offset_s, idle) in enumerate(zip(LAG_OFFSETS_S, fit.idle_rows, strict=True)):
        a = cell_lo + offset_s - READING_SPREAD_S
        b = cell_hi + offset_s + READING_SPREAD_S
        x = np.column_stack([np.zeros(len(ok)) if cum is None else
                             (np.interp(b, cut.x, cum) - np.interp(a, cut.x, cum)) / (b - a)
                             for cum in integrals])
        fit.add_rows(i, x[use], power_w[use], width[use], group[use], own_cell[ok][use])
        count = integrals[0]
        if count is not None:
            ga, gb = a - IDLE_GUARD_S, b + IDLE_GUARD_S
            none = (np.interp(gb, cut.x, count) - np.interp(ga, cut.x, count) <= 0) & own_cell[ok]
            for j in np.flatnonzero(none).tolist():
                idle.append((float(power_w[j] * cut.share[first[ok][j]]), float(width[j])))
    fit.next_serial(int(group.max()) + 1)


def _overlap(cut: _Cut) -> tuple[np.ndarray, np.ndarray, float]:
    covered = cut.cover > 0
    between_j = math.fsum(cut.piece_j[~covered].tolist())
    k = np.maximum(cut.cover, 1)
    # Prefix sums of each piece's per-call share: a call's energy is one difference.
    cum_j = np.concatenate(([0.0], np.cumsum(np.where(covered, cut.piece_j / k, 0.0))))
    cum_g = np.concatenate(([0.0], np.cumsum(np.where(covered, cut.piece_g / k, 0.0))))
    i_s, i_e = cut.i_s, cut.i_e
    return cum_j[i_e] - cum_j[i_s], cum_g[i_e] - cum_g[i_s], between_j


def _fitted(
    coefs: np.ndarray, demand_x: np.ndarray, cut: _Cut
) -> tuple[np.ndarray, np.ndarray, float]:
    covered = cut.cover > 0
    base_w = float(coefs[0])
    demand_w = demand_x @ coefs[1:]
    # Every call that ran draws something: a call whose measures predict 0 W (weight 0 where
    # only weight matters) keeps a sliver rather than 0 J.
    floor_w = max(float(demand_w.max()), 1e-300) * 1e-6
    demand_w = np.maximum(demand_w, floor_w)
    pred_w = base_w + np.where(covered, np.maximum(_sweep(demand_w, cut), floor_w), 0.0)
    # The counter measures each interval's energy; the power readings inside it are averages
    # that trail and blur the power (a short call's energy shows partly in the next reading).
    # So with a trusted fit, the fit shapes each whole interval: its energy is spread over its
    # pieces by predicted power (by width where that is 0).
    cells = np.cumsum(cut.iv_edge[:cut.n]) - 1
    n_cells = int(cells[-1]) + 1
    w = cut.width_s
    mass = pred_w * w
    cell_mass = np.bincount(cells, weights=mass, minlength=n_cells)[cells]
    cell_w = np.bincount(cells, weights=w, minlength=n_cells)[cells]
    cell_j = np.bincount(cells, weights=cut.piece_j, minlength=n_cells)
    cell_g = np.bincount(cells, weights=cut.piece_g, minlength=n_cells)
    by_mass = cell_mass > 0
    frac = np.where(by_mass, mass / np.where(by_mass, cell_mass, 1.0),
                    w / np.where(cell_w > 0, cell_w, 1.0))
    # Beside another process, energy far beyond what the fit says the interval's calls (and
    # base) drew is not theirs: the attribution can hand a quiet service a slice of its
    # neighbour's energy, which its few calls must not absorb. It stays between calls. (Alone
    # on the device, the service owns all the active energy: nothing to hold back.)
    cell_mass_j = np.bincount(cells, weights=mass, minlength=n_cells)
    shared_cell = np.bincount(cells, weights=np.where(cut.own, 0.0, w), minlength=n_cells) > 0
    excess_j = np.where(shared_cell & (cell_mass_j > 0),
                        np.maximum(cell_j - MAX_OVER_FIT * cell_mass_j, 0.0), 0.0)
    keep = np.where(cell_j > 0, (cell_j - excess_j) / np.where(cell_j > 0, cell_j, 1.0), 0.0)
    new_j = cell_j[cells] * frac * keep[cells]
    g_per_j = np.where(cell_j > 0, cell_g / np.where(cell_j > 0, cell_j, 1.0), 0.0)
    new_g = new_j * g_per_j[cells]
    between_j = math.fsum(new_j[~covered].tolist()) + math.fsum(excess_j.tolist())
    # Covered piece p gives call i new_j[p] * (base_w / k + d_i) / pred_w[p].
    per_w = np.where(covered, 1.0 / np.where(covered, pred_w, 1.0), 0.0)
    base_share = np.where(covered, base_w / np.maximum(cut.cover, 1), 0.0) * per_w
    cum = [np.concatenate(([0.0], np.cumsum(v))) for v in
           (new_j * per_w, new_g * per_w, new_j * base_share, new_g * base_share)]
    i_s, i_e = cut.i_s, cut.i_e
    add_j = demand_w * (cum[0][i_e] - cum[0][i_s]) + (cum[2][i_e] - cum[2][i_s])
    add_g = demand_w * (cum[1][i_e] - cum[1][i_s]) + (cum[3][i_e] - cum[3][i_s])
    return add_j, add_g, between_j
