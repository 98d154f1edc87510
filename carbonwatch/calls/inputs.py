"""What the CallLedger reads from its inputs: each span's work measures, and a GPU interval's
power shape aligned with the time its readings stand for."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from itertools import repeat
from operator import attrgetter, methodcaller
from typing import TYPE_CHECKING

import numpy as np

from carbonwatch.model import IDLE, EnergyInterval

if TYPE_CHECKING:
    from carbonwatch.calls.ledger import CallSpan

_TAGS = attrgetter("tags")
_GET_BATCH = methodcaller("get", "batch")
_FIELDS = (attrgetter("weight"), attrgetter("tokens_in"), attrgetter("tokens_out"))


def work_measures(spans: Sequence[CallSpan]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per span: the weight the fit uses, tokens_in and tokens_out (NaN where not reported).

    The weight is the span's ``weight``, else its ``batch`` tag (what the H200 trace's server and
    many batch servers report), else 1: one call's worth of work. Not tokens: a call's tokens enter
    the fit as rates (tokens / duration), never as a weight that its duration would multiply."""
    n = len(spans)
    # One C-level pass per field; a column nobody reported (the common case) costs nothing more.
    columns = []
    for get in _FIELDS:
        values = list(map(get, spans))
        if values.count(None) == n:
            columns.append(np.full(n, np.nan))
        else:  # None becomes NaN in a float array
            columns.append(np.array(values, dtype=np.float64).reshape(n))
    weight, tokens_in, tokens_out = columns
    missing = ~(np.isfinite(weight) & (weight >= 0))
    if missing.any():
        idx = np.flatnonzero(missing)
        tags = list(map(_TAGS, spans)) if len(idx) == n else [spans[i].tags for i in idx.tolist()]
        try:  # plain dicts (what the daemon decodes): dict.get without a Python call per span
            values = list(map(dict.get, tags, repeat("batch", len(tags))))
        except TypeError:
            values = list(map(_GET_BATCH, tags))
        try:  # numbers and numeric strings convert in one C pass; None becomes NaN
            batch = np.array(values, dtype=np.float64).reshape(len(values))
        except (TypeError, ValueError):
            batch = np.array([_number(v) for v in values], dtype=np.float64)
        batch[~(np.isfinite(batch) & (batch >= 0))] = 1.0
        weight[idx] = batch
    for tokens in (tokens_in, tokens_out):
        tokens[~(tokens >= 0) | ~np.isfinite(tokens)] = np.nan
    return weight, tokens_in, tokens_out


def advance_shape(
    lo: np.ndarray, hi: np.ndarray, seg_e: np.ndarray, lag_s: float
) -> np.ndarray:
    """The segments' energy as if each reading stood ``lag_s`` earlier: segment [a, b) gets the
    shape's energy over [a + lag, b + lag). The interval's own bounds stay (the counter measured
    them); past its end the last reading's power holds, the best guess until the next interval.
    Only the shape moves: the caller scales it to the interval's energy."""
    edges = np.concatenate(([lo[0]], hi))
    cum = np.concatenate(([0.0], np.cumsum(seg_e)))
    width = hi[-1] - lo[-1]
    tail_w = seg_e[-1] / width if width > 0 else 0.0
    q = edges + lag_s
    shifted = np.interp(q, edges, cum) + np.maximum(q - edges[-1], 0.0) * tail_w
    out = np.diff(shifted)
    return out if np.all(np.isfinite(out)) and np.all(out >= 0) else seg_e


def _number(value: object) -> float:
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return math.nan


def consumer_shape(
    iv: EnergyInterval, parts: Mapping[str, float], energy_j: float, lag_s: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """The consumer's part of ``iv`` as segments (starts, ends, energies summing to
    ``energy_j``), shaped by the interval's power above the idle line where the idle energy is
    its own line, advanced by ``lag_s`` (see :func:`advance_shape`); and the consumer's share of
    that shape's energy (1 where the shape is its own alone)."""
    start_s, end_s = float(iv.start_s), float(iv.end_s)
    if iv.segments:
        hi = np.array([s[0] for s in iv.segments], dtype=np.float64)
        seg_e = np.array([s[1] for s in iv.segments], dtype=np.float64)
    else:
        hi = np.array([end_s], dtype=np.float64)
        seg_e = np.array([energy_j], dtype=np.float64)
    # Malformed segments (unsorted, before start_s) become zero-width, never negative-width.
    hi = np.maximum.accumulate(np.maximum(hi, start_s))
    lo = np.concatenate(([start_s], hi[:-1]))
    if parts.get(IDLE, 0.0) > 0 and iv.idle_energy_j > 0 and end_s > start_s:
        # The consumer's part is active energy: shape it by the power above the idle line.
        active = seg_e - (hi - lo) * (iv.idle_energy_j / (end_s - start_s))
        if np.all(np.isfinite(active)) and float(np.maximum(active, 0.0).sum()) > 0:
            seg_e = np.maximum(active, 0.0)
    if lag_s and len(seg_e) > 1:
        seg_e = advance_shape(lo, hi, seg_e, lag_s)
    total = math.fsum(seg_e.tolist())
    share = 1.0  # the consumer's part of the shape's energy
    if total > 0 and math.isfinite(total) and np.all(seg_e >= 0):
        seg_e = seg_e / total * energy_j  # the segments shape the consumer part (no overflow)
        share = energy_j / total
    else:  # no usable shape: spread evenly over the interval
        lo = np.array([start_s])
        hi = np.array([max(end_s, start_s)])
        seg_e = np.array([energy_j], dtype=np.float64)
    return lo, hi, seg_e, share if math.isfinite(share) and share > 0 else 1.0
