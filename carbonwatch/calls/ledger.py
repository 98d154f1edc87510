"""Per-call attribution: split a serving process's energy over the inference calls it served.

Rule (docs/architecture.md): the consumer's energy in each device interval is split over the
calls that ran in it by the power each call causes, fitted per consumer from how its power
follows its calls' work (``power-fit``), with overlap time as the fallback while the fit is not
trusted (``overlap-time``); energy between calls stays with the service. The arithmetic lives in
:mod:`carbonwatch.calls.split`; this module keeps the books. Each emitted call says which method
gave it most of its energy (``CallSettlement.per_call_method``, ``fitted_calls`` in the minute
rows): a call's energy is an apportionment, never a measurement.

Alignment. NVML's power reading is the average over the last ~100 ms and changes every ~100 ms, so a
reading stands on average ``power_lag_s`` (0.1 s) after the power it reports: a GPU interval's
segments are shifted back by that much before deciding which calls they cover, or a short call's
energy would land in the gap after it. Where the idle energy is its own line, the segments' shape
has the idle power taken out first (the consumer's part is active energy only; idle power, flat,
would smear it into the gaps between calls).

Device misses. Under a trusted fit, a gap of up to ``MAX_BRIDGE_S`` before a consumer's interval
(the device gave it nothing there: the second of its launch before its first SM sample, a quiet
second under the idle baseline's error) is bridged, so calls that ran there share the interval's
energy by demand instead of getting 0 J; and beside another process an interval's calls get at
most ``MAX_OVER_FIT`` times what the fit predicts for them, the rest staying between calls (the
attribution can hand a quiet service a slice of its neighbour's energy).

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
(O(n log n)), then prefix sums, so the only Python objects per call are the span itself and its
output tuple; the fit adds one row per power reading, not per call.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from operator import attrgetter

import msgspec
import numpy as np

from carbonwatch.calls.chunk import NO_TAG, Chunk, Emitted, minute_rollup
from carbonwatch.calls.inputs import consumer_shape, work_measures
from carbonwatch.calls.split import (
    MARGIN_S,
    METHOD_FIT,
    METHOD_OVERLAP,
    CallPowerFit,
    PendingInterval,
    learn,
    split,
)
from carbonwatch.model import IDLE, J_PER_KWH, DeviceClass
from carbonwatch.pricing import co2e_g
from carbonwatch.sampler import AttributedInterval

# NVML's power reading averages the last ~100 ms and moves every ~100 ms: on average it reports
# the power of ~0.1 s earlier (half the window plus half the update period).
NVML_POWER_LAG_S = 0.1


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

    def get(self, key: str, default: object = None) -> object:  # type: ignore[override]
        return default  # fast: Mapping.get would raise and catch a KeyError per call

    def __repr__(self) -> str:
        return "{}"


NO_TAGS: Mapping[str, str] = _EmptyTags()


# A msgspec Struct, not a dataclass: the daemon builds one per call it ingests, and a Struct's
# C-level __init__ costs ~0.1 us against a slotted dataclass's ~0.3 us (a frozen dataclass: 1.7).
# Not frozen, though never changed after it is built (treat it as immutable; to change a field,
# ``msgspec.structs.replace``). gc=False: a span holds only strings, numbers and its tags
# mapping, never a reference back, so it cannot be part of a cycle for the collector to find.
class CallSpan(msgspec.Struct, gc=False):
    """One inference call as the serving process reported it. Times are Unix seconds (UTC)."""

    model: str
    start_s: float
    end_s: float
    pid: int | None = None
    tags: Mapping[str, str] = NO_TAGS
    # Optional work measures, each finite and >= 0 when given: ``weight`` is any measure of how
    # much work the call did (batch size, FLOPs); tokens are what LLM serving counts. They shape
    # how the service's energy is split over its calls; None means "not reported".
    weight: float | None = None
    tokens_in: int | None = None
    tokens_out: int | None = None

    def __hash__(self) -> int:
        # Not the tags: they are usually a plain dict (unhashable); equality still compares them.
        return hash((self.model, self.start_s, self.end_s, self.pid, self.weight,
                     self.tokens_in, self.tokens_out))


class CallSettlement:
    """What one ``settle``/``flush`` produced.

    The settled calls are held as arrays (``emitted``, one :class:`Emitted` per chunk settled);
    ``per_call``, ``per_call_method`` and ``minute_rows`` are made from them on first use, so a
    caller that reads the arrays (the daemon) makes no Python object per call."""

    def __init__(self) -> None:
        self.emitted: list[Emitted] = []
        # consumer -> energy of the settled intervals that no call covered (stays with the service).
        self.between_calls_j: dict[str, float] = {}
        self._per_call: list[tuple[CallSpan, float, float, float]] | None = None
        self._minute_rows: list[dict] | None = None

    @property
    def per_call(self) -> list[tuple[CallSpan, float, float, float]]:
        """(span, energy_j, co2e_g, cost) of each call whose every overlapping interval is settled
        (empty when the ledger keeps no span objects: ``emit_per_call=False``)."""
        if self._per_call is None:
            self._per_call = [
                item for e in self.emitted if e.spans is not None
                for item in zip(e.spans.tolist(), e.energy_j.tolist(), e.co2e_g.tolist(),
                                e.cost.tolist(), strict=True)
            ]
        return self._per_call

    @property
    def per_call_method(self) -> list[str]:
        """Parallel to ``per_call``: how each call was apportioned (METHOD_FIT or
        METHOD_OVERLAP)."""
        method = (METHOD_OVERLAP, METHOD_FIT)
        return [method[f] for e in self.emitted if e.spans is not None
                for f in e.fitted.tolist()]

    @property
    def minute_rows(self) -> list[dict]:
        """Rows for table call_minute, keyed by each call's start minute; additive (add, don't
        replace). See :func:`~carbonwatch.calls.chunk.minute_rollup`."""
        if self._minute_rows is None:
            self._minute_rows = minute_rollup(self.emitted)
        return self._minute_rows


_EMPTY = np.empty(0, dtype=np.float64)
_START, _END, _MODEL = attrgetter("start_s"), attrgetter("end_s"), attrgetter("model")


# How many recent consumers' power fits are kept once the consumer has nothing pending.
_MAX_FITS = 1024
# A gap this long or shorter between a consumer's intervals is bridged (see add_interval).
MAX_BRIDGE_S = 2.5
# Small leftover chunks (long calls still open) are merged once there are this many.
_MAX_CHUNKS = 32


class _ConsumerCalls:
    """One consumer's pending intervals and open spans."""

    def __init__(self) -> None:
        self.incoming: list[CallSpan] = []  # added since the last settle, not yet in a chunk
        self.incoming_tags: list[tuple[int, int]] = []  # (tag, how many) runs over ``incoming``
        self.chunks: list[Chunk] = []
        self.intervals: list[PendingInterval] = []
        # Calls ending at or before the frontier were emitted: no pending interval can reach them.
        self.frontier_s = -math.inf


class CallLedger:
    """Accumulates call spans and the serving processes' interval energy; ``settle`` splits it.

    ``horizon_s`` and ``max_pending_spans`` bound memory: a span still open ``horizon_s`` after it
    started (a runaway call or a client clock far ahead) is emitted early with the energy it has
    (``expired_spans``; later energy goes to between-call energy, so nothing is lost); spans beyond
    ``max_pending_spans`` are refused (``dropped_spans``). Spans with non-finite times are refused
    too (``invalid_spans``). ``emit_per_call=False`` keeps only the minute rollups (no raw call
    log). ``power_lag_s`` shifts GPU intervals' segments back to the time their power readings
    average (:data:`NVML_POWER_LAG_S` for NVML; 0 takes the segments as given). ``fit=False``
    always splits by overlap time; while a consumer's fit has too few rows to be tried, its due
    intervals are held back (learned from, not split) for up to ``warmup_s``, so its first calls
    need not fall back. ``fitted_calls`` / ``overlap_calls`` count the emitted calls
    by how they were apportioned. Not thread-safe: the daemon calls it from one task.
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
        power_lag_s: float = 0.0,
        fit: bool = True,
        warmup_s: float = 0.0,
    ) -> None:
        self.settle_s = settle_s
        self.pue = pue
        self.price_per_kwh = price_per_kwh
        self.horizon_s = horizon_s
        self.max_pending_spans = max_pending_spans
        # Off: per_call stays empty and span objects are not kept (minute rows only). Building
        # one output tuple per call is about a third of a settle's cost.
        self.emit_per_call = emit_per_call
        self.power_lag_s = power_lag_s
        self.use_fit = fit
        self.warmup_s = warmup_s
        self._consumers: dict[str, _ConsumerCalls] = {}
        # Per consumer: how its power follows its calls. Outlives the consumer's pending work
        # (a service idle for a while keeps what it learned), bounded by _MAX_FITS.
        self._fits: dict[str, CallPowerFit] = {}
        self._last_end_s: dict[str, float] = {}  # where each consumer's last interval ended
        self._model_ids: dict[str, int] = {}
        self._models: list[str] = []
        self._pending_spans = 0
        self.late_spans = 0
        self.expired_spans = 0
        self.dropped_spans = 0
        self.invalid_spans = 0
        self.fitted_calls = 0
        self.overlap_calls = 0

    @property
    def pending_spans(self) -> int:
        """Spans accepted and not yet emitted (the memory bound applies to this)."""
        return self._pending_spans

    def _state(self, consumer: str) -> _ConsumerCalls:
        st = self._consumers.get(consumer)
        if st is None:
            st = self._consumers[consumer] = _ConsumerCalls()
        return st

    def add_spans(self, consumer: str, spans: list[CallSpan], tag: int = NO_TAG) -> None:
        """Queue calls served by ``consumer``. O(1) per span: conversion happens at settle.
        ``tag`` (an int >= 0, e.g. the daemon's batch id) comes back with each of these calls in
        ``CallSettlement.emitted``. Spans beyond ``max_pending_spans`` are refused: the last
        ones, counted in ``dropped_spans``."""
        room = self.max_pending_spans - self._pending_spans
        if len(spans) > room:
            room = max(room, 0)
            self.dropped_spans += len(spans) - room
            spans = spans[:room]
        if not spans:
            return
        st = self._state(consumer)
        st.incoming.extend(spans)
        st.incoming_tags.append((tag, len(spans)))
        self._pending_spans += len(spans)

    def add_interval(self, consumer: str, item: AttributedInterval, energy_j: float) -> None:
        """Queue ``consumer``'s part (``energy_j``) of one attributed device interval."""
        if energy_j == 0:
            return
        iv = item.interval
        start_s, end_s = float(iv.start_s), float(iv.end_s)
        if not (math.isfinite(start_s) and math.isfinite(end_s) and math.isfinite(energy_j)):
            raise ValueError(f"interval times and energy must be finite, got {iv!r}, {energy_j!r}")
        lag_s = self.power_lag_s if iv.device_class is DeviceClass.GPU else 0.0
        lo, hi, seg_e, share = consumer_shape(iv, item.parts, energy_j, lag_s)
        parts = item.parts
        last_end_s = self._last_end_s.get(consumer)
        if last_end_s is None:  # its first interval: bridge back to its first call, if close
            st = self._state(consumer)
            starts = [c.min_start_s for c in st.chunks if len(c)]
            starts += [sp.start_s for sp in st.incoming if math.isfinite(sp.start_s)]
            last_end_s = min(starts, default=-math.inf)
        self._last_end_s[consumer] = max(last_end_s, float(hi[-1]))
        if self.use_fit and 0 < start_s - last_end_s <= MAX_BRIDGE_S:
            # The device gave this consumer nothing in the interval(s) just before (the one it
            # started in, with no activity sample yet; a quiet one whose few calls' energy fell
            # under the idle baseline's error), yet
            # calls may have run there. Stretch this interval back over the gap with no energy
            # of its own: under a trusted fit its energy then spreads over the calls of both by
            # their demand, so no call of a service that drew energy gets 0 J for the device's
            # miss. Overlap time leaves the gap's calls at 0 J, as before.
            lo = np.concatenate(([last_end_s], lo))
            hi = np.concatenate(([start_s], hi))
            seg_e = np.concatenate(([0.0], seg_e))
            start_s = last_end_s
        factor = co2e_g(1.0, item.intensity.intensity_g_per_kwh, self.pue)
        # Alone on the device, the segments are the consumer's own power shape.
        alone = not any(v > 0 for k, v in parts.items() if k != consumer and k != IDLE)
        self._state(consumer).intervals.append(
            PendingInterval(start_s, max(end_s, float(hi[-1])), lo, hi, seg_e, factor, alone,
                            share=share)
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
        for consumer, st in list(self._consumers.items()):
            self._ingest(st)
            due = [iv for iv in st.intervals if iv.end_s < cutoff_s]
            fit = self._fit(consumer) if self.use_fit else None
            if (due and fit is not None and fit.warming_up
                    and due[0].end_s > cutoff_s - self.warmup_s
                    and any(len(iv.seg_lo_s) >= 3 for iv in due)):
                # Too few readings to fit yet: learn from the due intervals but hold them (and
                # their calls) back a little, rather than split the first seconds by time alone.
                # (Only intervals with readings inside can teach the fit: a one-segment interval,
                # from a CPU counter, is never held.)
                self._split(st, [iv for iv in due if not iv.learned], fit, learn_only=True)
                due = []
            if due:
                st.intervals = [iv for iv in st.intervals if iv.end_s >= cutoff_s]
                out.between_calls_j[consumer] = self._split(st, due, fit)
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
                    self._emit(consumer, chunk, slice(None), out)
                    chunk.keep(np.zeros(len(chunk), dtype=bool))
                elif done.any():
                    self._emit(consumer, chunk, done, out)
                    chunk.keep(~done)
            st.chunks = [c for c in st.chunks if len(c)]
            if len(st.chunks) > _MAX_CHUNKS:
                st.chunks = [Chunk.merge(st.chunks)]
            if not st.intervals and not st.chunks:
                del self._consumers[consumer]  # a consumer that went away costs (almost) nothing
                if len(self._fits) > _MAX_FITS:
                    self._fits.pop(next(iter(self._fits)))
                if len(self._last_end_s) > _MAX_FITS:
                    self._last_end_s.pop(next(iter(self._last_end_s)))
        return out

    def _ingest(self, st: _ConsumerCalls) -> None:
        """Turn the spans added since the last settle into one chunk (one pass per span, ever)."""
        new = st.incoming
        if not new:
            return
        runs, st.incoming, st.incoming_tags = st.incoming_tags, [], []
        n = len(new)
        tag = (np.full(n, runs[0][0], dtype=np.int64) if len(runs) == 1 else
               np.repeat(np.array([t for t, _ in runs], dtype=np.int64), [k for _, k in runs]))
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
        weight, tokens_in, tokens_out = work_measures(new)
        objs = None
        if self.emit_per_call:
            objs = np.fromiter(new, dtype=object, count=n)  # 10x faster than objs[:] = new
        ok = np.isfinite(start) & np.isfinite(end)
        if not ok.all():
            bad = n - int(np.count_nonzero(ok))
            self.invalid_spans += bad
            self._pending_spans -= bad
            start, end, mid, tag = start[ok], end[ok], mid[ok], tag[ok]
            weight, tokens_in, tokens_out = weight[ok], tokens_in[ok], tokens_out[ok]
            objs = objs[ok] if objs is not None else None
            if not len(start):
                return
        # A span before the frontier overlapped intervals that are already split.
        self.late_spans += int(np.count_nonzero(start < st.frontier_s))
        st.chunks.append(Chunk(objs, start, np.maximum(end, start), mid, weight, tokens_in,
                                tokens_out, tag))

    def _fit(self, consumer: str) -> CallPowerFit:
        fit = self._fits.pop(consumer, None) or CallPowerFit()
        self._fits[consumer] = fit  # most recently used last
        return fit

    def _split(
        self, st: _ConsumerCalls, due: list[PendingInterval], fit: CallPowerFit | None,
        learn_only: bool = False,
    ) -> float:
        """Give the due intervals' energy to the open spans; return the between-call energy.
        ``learn_only``: only add their rows to ``fit``."""
        if not due:
            return 0.0
        # The fit reads activity a little beyond the intervals (the power readings' windows).
        lo_s = min(float(iv.seg_lo_s[0]) for iv in due) - MARGIN_S
        hi_s = max(float(iv.seg_hi_s[-1]) for iv in due) + MARGIN_S
        hits: list[tuple[Chunk, np.ndarray]] = []
        for ch in st.chunks:
            if ch.min_start_s <= hi_s and ch.max_end_s > lo_s:
                idx = np.flatnonzero((ch.start_s <= hi_s) & (ch.end_s > lo_s))
                if len(idx):
                    hits.append((ch, idx))
        span_lo = np.concatenate([_EMPTY] + [ch.start_s[i] for ch, i in hits])
        span_hi = np.concatenate([_EMPTY] + [ch.end_s[i] for ch, i in hits])
        demand_x = _EMPTY.reshape(0, 4)
        if fit is not None and hits:
            duration_s = span_hi - span_lo
            per_s = np.divide(1.0, duration_s, out=np.zeros_like(duration_s),
                              where=duration_s > 0)
            tin = np.concatenate([ch.tokens_in[i] for ch, i in hits])
            tout = np.concatenate([ch.tokens_out[i] for ch, i in hits])
            demand_x = np.column_stack([
                np.ones(len(span_lo)),
                np.concatenate([ch.weight[i] for ch, i in hits]),
                np.nan_to_num(tin) * per_s,
                np.nan_to_num(tout) * per_s,
            ])
        if learn_only:
            assert fit is not None
            learn(span_lo, span_hi, demand_x, due, fit)
            return 0.0
        res = split(span_lo, span_hi, demand_x, due, fit)
        off = 0
        for ch, idx in hits:
            part = slice(off, off + len(idx))
            ch.energy_j[idx] += res.add_j[part]
            ch.co2e_g[idx] += res.add_g[part]
            if res.fitted:
                ch.fit_j[idx] += res.add_j[part]
            off += len(idx)
        return res.between_j

    def _emit(self, consumer: str, ch: Chunk, done: np.ndarray | slice,
              out: CallSettlement) -> None:
        energy_j = ch.energy_j[done]
        self._pending_spans -= len(energy_j)
        # A call is "power-fit" when the fit gave it most of its energy.
        fitted = (ch.fit_j[done] > 0.5 * energy_j) & (energy_j > 0)
        n_fitted = int(np.count_nonzero(fitted))
        self.fitted_calls += n_fitted
        self.overlap_calls += len(energy_j) - n_fitted
        # As Pricing.energy_cost: facility energy (PUE included); 0 while the price is unknown.
        cost = energy_j * (self.pue * (self.price_per_kwh or 0.0) / J_PER_KWH)
        spans = ch.spans[done] if self.emit_per_call and ch.spans is not None else None
        out.emitted.append(Emitted(
            consumer, self._models, spans, start_s=ch.start_s[done], end_s=ch.end_s[done],
            model_id=ch.model_id[done], tokens_in=ch.tokens_in[done],
            tokens_out=ch.tokens_out[done], tag=ch.tag[done], energy_j=energy_j,
            co2e_g=ch.co2e_g[done], cost=cost, fitted=fitted))
