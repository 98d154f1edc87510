"""Per-call attribution: split a serving process's energy over the inference calls it served.

Rule (DESIGN.md): the consumer's energy in each device interval is split over the calls that overlap
it by overlap time, so concurrent calls share; energy between calls stays with the service. The
interval's ``segments`` shape its energy in time, so a call in a high-power stretch gets more than
an equally long call in a quiet one. Within each segment, power is taken as constant; a stretch of
time covered by k calls gives each 1/k of its energy (a sweep over the span boundaries).

Timing. Intervals are split when they are settled, ``settle_s`` after they ended, so that spans
reported a little late (client batching) are there to receive their energy. A call is emitted once
every interval it overlaps is settled: when it ends before the settled frontier. A span that
arrives after an interval it overlaps was settled (a *late* span) only gets the energy of the
intervals still pending: that settled energy already went to other calls or to between-call energy,
and taking it back would change totals already written. Late spans are counted (``late_spans``);
the settle delay exists to make them rare. Likewise an interval that arrives after the calls it
overlaps were emitted gives its energy to the calls still pending, or to between-call energy.
Either way nothing is lost: Σ per-call energy + between-call energy = Σ the consumer energy given
to ``add_interval``, exactly up to float rounding (a property test holds it). Every span accepted
by ``add_spans`` appears exactly once in the ``per_call`` of some settlement (when enabled).

Cost. Each settle is vectorised with numpy over the spans it touches: one sort of the boundaries
(O(n log n)), then prefix sums, so the only Python object per call is the span itself and its
output tuple.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from operator import attrgetter

import numpy as np

from carbonwatch.model import J_PER_KWH
from carbonwatch.pricing import co2e_g
from carbonwatch.sampler import AttributedInterval


class _EmptyTags(Mapping[str, str]):
    """A shared, hashable, empty mapping: spans without tags need no dict of their own."""

    def __getitem__(self, key: str) -> str:
        raise KeyError(key)

    def __iter__(self) -> Iterator[str]:
        return iter(())

    def __len__(self) -> int:
        return 0

    def __hash__(self) -> int:
        return 0

    def __repr__(self) -> str:
        return "{}"


NO_TAGS: Mapping[str, str] = _EmptyTags()


@dataclass(frozen=True, slots=True)
class CallSpan:
    """One inference call as the serving process reported it. Times are Unix seconds (UTC)."""

    model: str
    start_s: float
    end_s: float
    pid: int | None = None
    # Not part of the hash: tags are usually a plain dict; equality still compares them.
    tags: Mapping[str, str] = field(default=NO_TAGS, hash=False)
    # Optional work measures, each finite and >= 0 when given: ``weight`` is any measure of how
    # much work the call did (batch size, FLOPs); tokens are what LLM serving counts. They shape
    # how the service's energy is split over its calls; None means "not reported".
    weight: float | None = None
    tokens_in: int | None = None
    tokens_out: int | None = None


@dataclass
class CallSettlement:
    """What one ``settle``/``flush`` produced."""

    # (span, energy_j, co2e_g, cost): calls whose every overlapping interval is settled.
    per_call: list[tuple[CallSpan, float, float, float]] = field(default_factory=list)
    # consumer -> energy of the settled intervals that no call covered (stays with the service).
    between_calls_j: dict[str, float] = field(default_factory=dict)
    # Rows for table call_minute, keyed by each call's start minute; additive (add, don't replace).
    # busy_s is the sum of call durations, so concurrent calls each count. tokens_in/tokens_out
    # sum the calls' reported tokens (a call without them adds 0); token_calls counts the calls
    # that reported tokens_out and token_energy_j is their energy, so a per-token figure can say
    # how much of the energy it covers.
    minute_rows: list[dict] = field(default_factory=list)


@dataclass
class _PendingInterval:
    start_s: float
    end_s: float
    seg_lo_s: np.ndarray  # segment starts
    seg_hi_s: np.ndarray  # segment ends, non-decreasing
    seg_energy_j: np.ndarray  # the consumer's energy in each segment
    co2e_g_per_j: float  # this interval's intensity × PUE, per joule


_EMPTY = np.empty(0, dtype=np.float64)
_START, _END, _MODEL = attrgetter("start_s"), attrgetter("end_s"), attrgetter("model")
_TOKENS_IN, _TOKENS_OUT = attrgetter("tokens_in"), attrgetter("tokens_out")


class _Chunk:
    """Open spans ingested together, as parallel arrays (one row per span).

    Spans arrive roughly in time order, so a chunk covers a short stretch of time: a settle only
    touches the chunks that overlap the intervals it splits or that hold finished calls, and the
    work per settle stays proportional to the calls of that stretch, not to all open calls."""

    __slots__ = ("spans", "start_s", "end_s", "model_id", "energy_j", "co2e_g",
                 "min_start_s", "min_end_s", "max_end_s")

    def __init__(
        self,
        spans: np.ndarray | None,
        start_s: np.ndarray,
        end_s: np.ndarray,
        model_id: np.ndarray,
    ) -> None:
        self.spans = spans  # object array of CallSpan; None when no per-call output is wanted
        self.start_s = start_s
        self.end_s = end_s  # clamped to >= start_s
        self.model_id = model_id
        self.energy_j = np.zeros(len(start_s))
        self.co2e_g = np.zeros(len(start_s))
        self._restat()

    def __len__(self) -> int:
        return len(self.start_s)

    def _restat(self) -> None:
        if len(self.start_s):
            self.min_start_s = float(self.start_s.min())
            self.min_end_s = float(self.end_s.min())
            self.max_end_s = float(self.end_s.max())

    def keep(self, mask: np.ndarray) -> None:
        for name in _COLUMNS:
            setattr(self, name, getattr(self, name)[mask])
        if self.spans is not None:
            self.spans = self.spans[mask]
        self._restat()

    @classmethod
    def merge(cls, chunks: list[_Chunk]) -> _Chunk:
        out = cls.__new__(cls)
        for name in _COLUMNS:
            setattr(out, name, np.concatenate([getattr(c, name) for c in chunks]))
        spans = [c.spans for c in chunks if c.spans is not None]
        out.spans = np.concatenate(spans) if len(spans) == len(chunks) else None
        out._restat()
        return out


_COLUMNS = ("start_s", "end_s", "model_id", "energy_j", "co2e_g")
# Small leftover chunks (long calls still open) are merged once there are this many.
_MAX_CHUNKS = 32


class _ConsumerCalls:
    """One consumer's pending intervals and open spans."""

    def __init__(self) -> None:
        self.incoming: list[CallSpan] = []  # added since the last settle, not yet in a chunk
        self.chunks: list[_Chunk] = []
        self.intervals: list[_PendingInterval] = []
        # Calls ending at or before the frontier were emitted: no pending interval can reach them.
        self.frontier_s = -math.inf


class CallLedger:
    """Accumulates call spans and the serving processes' interval energy; ``settle`` splits it.

    ``horizon_s`` and ``max_pending_spans`` bound memory: a span still open ``horizon_s`` after it
    started (a runaway call or a client clock far ahead) is emitted early with the energy it has
    (``expired_spans``; later energy goes to between-call energy, so nothing is lost); spans beyond
    ``max_pending_spans`` are refused (``dropped_spans``). Spans with non-finite times are refused
    too (``invalid_spans``). ``emit_per_call=False`` keeps only the minute rollups (no raw call
    log). Not thread-safe: the daemon calls it from one task.
    """

    def __init__(
        self,
        settle_s: float = 5.0,
        pue: float = 1.0,
        price_per_kwh: float | None = None,
        *,
        horizon_s: float = 600.0,
        max_pending_spans: int = 5_000_000,
        emit_per_call: bool = True,
    ) -> None:
        self.settle_s = settle_s
        self.pue = pue
        self.price_per_kwh = price_per_kwh
        self.horizon_s = horizon_s
        self.max_pending_spans = max_pending_spans
        # Off: per_call stays empty and span objects are not kept (minute rows only). Building
        # one output tuple per call is about a third of a settle's cost.
        self.emit_per_call = emit_per_call
        self._consumers: dict[str, _ConsumerCalls] = {}
        self._model_ids: dict[str, int] = {}
        self._models: list[str] = []
        self._pending_spans = 0
        self.late_spans = 0
        self.expired_spans = 0
        self.dropped_spans = 0
        self.invalid_spans = 0

    @property
    def pending_spans(self) -> int:
        """Spans accepted and not yet emitted (the memory bound applies to this)."""
        return self._pending_spans

    def _state(self, consumer: str) -> _ConsumerCalls:
        st = self._consumers.get(consumer)
        if st is None:
            st = self._consumers[consumer] = _ConsumerCalls()
        return st

    def add_spans(self, consumer: str, spans: list[CallSpan]) -> None:
        """Queue calls served by ``consumer``. O(1) per span: conversion happens at settle."""
        room = self.max_pending_spans - self._pending_spans
        if len(spans) > room:
            room = max(room, 0)
            self.dropped_spans += len(spans) - room
            spans = spans[:room]
        self._state(consumer).incoming.extend(spans)
        self._pending_spans += len(spans)

    def add_interval(self, consumer: str, item: AttributedInterval, energy_j: float) -> None:
        """Queue ``consumer``'s part (``energy_j``) of one attributed device interval."""
        if energy_j == 0:
            return
        iv = item.interval
        start_s, end_s = float(iv.start_s), float(iv.end_s)
        if not (math.isfinite(start_s) and math.isfinite(end_s) and math.isfinite(energy_j)):
            raise ValueError(f"interval times and energy must be finite, got {iv!r}, {energy_j!r}")
        if iv.segments:
            hi = np.array([s[0] for s in iv.segments], dtype=np.float64)
            seg_e = np.array([s[1] for s in iv.segments], dtype=np.float64)
        else:
            hi = np.array([end_s], dtype=np.float64)
            seg_e = np.array([energy_j], dtype=np.float64)
        # Malformed segments (unsorted, before start_s) become zero-width, never negative-width.
        hi = np.maximum.accumulate(np.maximum(hi, start_s))
        lo = np.concatenate(([start_s], hi[:-1]))
        total = math.fsum(seg_e.tolist())
        if total > 0 and math.isfinite(total) and np.all(seg_e >= 0):
            seg_e = seg_e / total * energy_j  # the segments shape the consumer part (no overflow)
        else:  # no usable shape: spread evenly over the interval
            lo = np.array([start_s])
            hi = np.array([max(end_s, start_s)])
            seg_e = np.array([energy_j], dtype=np.float64)
        factor = co2e_g(1.0, item.intensity.intensity_g_per_kwh, self.pue)
        self._state(consumer).intervals.append(
            _PendingInterval(start_s, max(end_s, float(hi[-1])), lo, hi, seg_e, factor)
        )

    def settle(self, now_s: float) -> CallSettlement:
        """Split the intervals that ended before ``now_s - settle_s``; emit the finished calls."""
        return self._settle(now_s - self.settle_s, expire_before_s=now_s - self.horizon_s)

    def flush(self) -> CallSettlement:
        """Split everything pending and emit every call (at shutdown)."""
        return self._settle(math.inf, expire_before_s=-math.inf)

    # -- internals -------------------------------------------------------------------------

    def _settle(self, cutoff_s: float, expire_before_s: float) -> CallSettlement:
        out = CallSettlement()
        rows: dict[tuple[int, str], dict] = {}
        for consumer, st in list(self._consumers.items()):
            self._ingest(st)
            due = [iv for iv in st.intervals if iv.end_s < cutoff_s]
            if due:
                st.intervals = [iv for iv in st.intervals if iv.end_s >= cutoff_s]
                out.between_calls_j[consumer] = self._split(st, due)
            frontier_s = min([cutoff_s] + [iv.start_s for iv in st.intervals])
            st.frontier_s = max(st.frontier_s, frontier_s)
            for chunk in st.chunks:
                if chunk.min_end_s > frontier_s and chunk.min_start_s >= expire_before_s:
                    continue  # nothing in it is finished or expired: don't even look
                done = chunk.end_s <= frontier_s
                expired = ~done & (chunk.start_s < expire_before_s)
                if expired.any():
                    self.expired_spans += int(np.count_nonzero(expired))
                    done |= expired
                if done.all():
                    self._emit(chunk, slice(None), out.per_call, rows)
                    chunk.keep(np.zeros(len(chunk), dtype=bool))
                elif done.any():
                    self._emit(chunk, done, out.per_call, rows)
                    chunk.keep(~done)
            st.chunks = [c for c in st.chunks if len(c)]
            if len(st.chunks) > _MAX_CHUNKS:
                st.chunks = [_Chunk.merge(st.chunks)]
            if not st.intervals and not st.chunks:
                del self._consumers[consumer]  # a consumer that went away costs nothing
        out.minute_rows = list(rows.values())
        return out

    def _ingest(self, st: _ConsumerCalls) -> None:
        """Turn the spans added since the last settle into one chunk (one pass per span, ever)."""
        new = st.incoming
        if not new:
            return
        st.incoming = []
        n = len(new)
        # map/attrgetter run in C: the cheapest way to read a field of many objects.
        start = np.fromiter(map(_START, new), dtype=np.float64, count=n)
        end = np.fromiter(map(_END, new), dtype=np.float64, count=n)
        ids = self._model_ids
        try:
            mid = np.fromiter(map(ids.__getitem__, map(_MODEL, new)), dtype=np.int64, count=n)
        except KeyError:
            for model in set(map(_MODEL, new)) - ids.keys():
                ids[model] = len(self._models)
                self._models.append(model)
            mid = np.fromiter(map(ids.__getitem__, map(_MODEL, new)), dtype=np.int64, count=n)
        objs = None
        if self.emit_per_call:
            objs = np.empty(n, dtype=object)
            objs[:] = new
        ok = np.isfinite(start) & np.isfinite(end)
        if not ok.all():
            bad = n - int(np.count_nonzero(ok))
            self.invalid_spans += bad
            self._pending_spans -= bad
            start, end, mid = start[ok], end[ok], mid[ok]
            objs = objs[ok] if objs is not None else None
            if not len(start):
                return
        # A span before the frontier overlapped intervals that are already split.
        self.late_spans += int(np.count_nonzero(start < st.frontier_s))
        st.chunks.append(_Chunk(objs, start, np.maximum(end, start), mid))

    def _split(self, st: _ConsumerCalls, due: list[_PendingInterval]) -> float:
        """Give the due intervals' energy to the open spans; return the between-call energy."""
        lo_s = min(float(iv.seg_lo_s[0]) for iv in due)
        hi_s = max(float(iv.seg_hi_s[-1]) for iv in due)
        hits: list[tuple[_Chunk, np.ndarray]] = []
        for ch in st.chunks:
            if ch.min_start_s <= hi_s and ch.max_end_s > lo_s:
                idx = np.flatnonzero((ch.start_s <= hi_s) & (ch.end_s > lo_s))
                if len(idx):
                    hits.append((ch, idx))
        span_lo = np.concatenate([_EMPTY] + [ch.start_s[i] for ch, i in hits])
        span_hi = np.concatenate([_EMPTY] + [ch.end_s[i] for ch, i in hits])
        r = len(span_lo)
        # Spans reaching outside the due intervals only matter inside them: clip, fewer pieces.
        # One sort of every boundary; the inverse gives each boundary's piece index, no bisect.
        x, pos = np.unique(
            np.concatenate([np.clip(span_lo, lo_s, hi_s), np.clip(span_hi, lo_s, hi_s)]
                           + [b for iv in due for b in (iv.seg_lo_s, iv.seg_hi_s)]),
            return_inverse=True,
        )
        width_s = np.diff(x)
        n = len(width_s)
        piece_j = np.zeros(n)
        piece_g = np.zeros(n)
        points: list[tuple[float, float, float]] = []  # zero-width segments: (t_s, energy_j, g/J)
        at = 2 * r
        for iv in due:
            m = len(iv.seg_lo_s)
            lo_i, hi_i = pos[at:at + m], pos[at + m:at + 2 * m]
            at += 2 * m
            seg_w = iv.seg_hi_s - iv.seg_lo_s
            wide = seg_w > 0
            # Segments are contiguous, so segment q owns pieces lo_i[q] .. hi_i[q] - 1; a piece
            # gets its segment's energy × its share of the segment's width (a fraction, never a
            # power: a segment a few ulps wide would overflow one).
            counts = hi_i - lo_i
            pj = np.repeat(iv.seg_energy_j, counts) * (
                width_s[lo_i[0]:hi_i[-1]] / np.repeat(seg_w, counts)
            )
            piece_j[lo_i[0]:hi_i[-1]] += pj
            piece_g[lo_i[0]:hi_i[-1]] += pj * iv.co2e_g_per_j
            for q in np.flatnonzero(~wide & (iv.seg_energy_j != 0)).tolist():
                points.append((float(iv.seg_lo_s[q]), float(iv.seg_energy_j[q]), iv.co2e_g_per_j))
        # Coverage: how many calls cover each piece (+1 at a span start, -1 at its end).
        i_s, i_e = pos[:r], pos[r:2 * r]
        cover = np.cumsum(
            np.bincount(i_s, minlength=n + 1) - np.bincount(i_e, minlength=n + 1)
        )[:n]
        covered = cover > 0
        between_j = math.fsum(piece_j[~covered].tolist())
        k = np.maximum(cover, 1)
        # Prefix sums of each piece's per-call share: a call's energy is one difference.
        cum_j = np.concatenate(([0.0], np.cumsum(np.where(covered, piece_j / k, 0.0))))
        cum_g = np.concatenate(([0.0], np.cumsum(np.where(covered, piece_g / k, 0.0))))
        add_j = cum_j[i_e] - cum_j[i_s]
        add_g = cum_g[i_e] - cum_g[i_s]
        # Instantaneous energy (a zero-width segment) goes to the calls running at that instant.
        for t_s, energy_j, g_per_j in points:
            running = (span_lo <= t_s) & (span_hi > t_s)
            calls = int(np.count_nonzero(running))
            if calls == 0:
                between_j += energy_j
            else:
                add_j = add_j + running * (energy_j / calls)
                add_g = add_g + running * (energy_j * g_per_j / calls)
        off = 0
        for ch, idx in hits:
            ch.energy_j[idx] += add_j[off:off + len(idx)]
            ch.co2e_g[idx] += add_g[off:off + len(idx)]
            off += len(idx)
        return between_j

    def _emit(
        self,
        ch: _Chunk,
        done: np.ndarray | slice,
        per_call: list[tuple[CallSpan, float, float, float]],
        rows: dict[tuple[int, str], dict],
    ) -> None:
        energy_j = ch.energy_j[done]
        carbon_g = ch.co2e_g[done]
        self._pending_spans -= len(energy_j)
        # As Pricing.energy_cost: facility energy (PUE included); 0 while the price is unknown.
        cost = energy_j * (self.pue * (self.price_per_kwh or 0.0) / J_PER_KWH)
        start_s = ch.start_s[done]
        if self.emit_per_call and ch.spans is not None:
            per_call.extend(
                zip(ch.spans[done].tolist(), energy_j.tolist(), carbon_g.tolist(), cost.tolist(),
                    strict=True)
            )
        # Minute rollup: group by (start minute, model) in one numpy pass.
        minute = (np.floor(start_s / 60.0) * 60.0).astype(np.int64)
        n_models = max(len(self._models), 1)
        keys, inverse = np.unique(minute * n_models + ch.model_id[done], return_inverse=True)
        m = len(keys)
        sums = [
            np.bincount(inverse, weights=w, minlength=m)
            for w in (ch.end_s[done] - start_s, energy_j, carbon_g, cost)
        ]
        calls = np.bincount(inverse, minlength=m)
        tokens = self._token_sums(ch, done, inverse, energy_j, m)
        for i, key in enumerate(keys.tolist()):
            minute_s, model = key // n_models, self._models[key % n_models]
            row = rows.get((minute_s, model))
            if row is None:
                row = rows[(minute_s, model)] = {
                    "minute_s": minute_s, "model": model, "calls": 0, "busy_s": 0.0,
                    "energy_j": 0.0, "co2e_g": 0.0, "cost": 0.0,
                    "tokens_in": 0, "tokens_out": 0, "token_calls": 0, "token_energy_j": 0.0,
                }
            row["calls"] += int(calls[i])
            row["busy_s"] += float(sums[0][i])
            row["energy_j"] += float(sums[1][i])
            row["co2e_g"] += float(sums[2][i])
            row["cost"] += float(sums[3][i])
            if tokens is not None:
                row["tokens_in"] += tokens[0][i]
                row["tokens_out"] += tokens[1][i]
                row["token_calls"] += tokens[2][i]
                row["token_energy_j"] += float(tokens[3][i])

    @staticmethod
    def _token_sums(
        ch: _Chunk, done: np.ndarray | slice, inverse: np.ndarray, energy_j: np.ndarray, m: int
    ) -> tuple[list[int], list[int], list[int], np.ndarray] | None:
        """Per minute row: tokens in, tokens out, calls reporting tokens_out, their energy.

        None when no span object is kept (``emit_per_call=False``) or no call in ``done``
        reported tokens. Counts are summed in int64: each is at most 10^9 (the API's bound) and
        the ledger holds at most ``max_pending_spans`` calls, so no sum can overflow."""
        if ch.spans is None:
            return None
        spans = ch.spans[done].tolist()
        n = len(spans)
        t_in = list(map(_TOKENS_IN, spans))  # attribute reads in C, not a Python loop
        t_out = list(map(_TOKENS_OUT, spans))
        none_in, none_out = t_in.count(None), t_out.count(None)
        if none_in == n and none_out == n:
            return None
        has_out = np.array([t is not None for t in t_out], dtype=bool) if none_out else \
            np.ones(n, dtype=bool)
        sums = []
        for values, missing in ((t_in, none_in), (t_out, none_out)):
            if missing:
                values = [0 if t is None else t for t in values]
            acc = np.zeros(m, dtype=np.int64)
            np.add.at(acc, inverse, np.array(values, dtype=np.int64))
            sums.append(acc.tolist())
        calls = np.bincount(inverse, weights=has_out, minlength=m).astype(np.int64).tolist()
        return sums[0], sums[1], calls, np.bincount(
            inverse, weights=energy_j * has_out, minlength=m)
