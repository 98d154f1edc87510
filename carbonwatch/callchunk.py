"""Open inference spans held by the call ledger as parallel numpy arrays (one row per span), and
the settled calls it emits in the same form (:class:`Emitted`), rolled up per minute and model
by :func:`minute_rollup` without a Python object per call."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from carbonwatch.calls import CallSpan

NO_TAG = -1  # the tag of spans added without one (see CallLedger.add_spans)


class Chunk:
    """Open spans ingested together, as parallel arrays (one row per span).

    Spans arrive roughly in time order, so a chunk covers a short stretch of time: a settle only
    touches the chunks that overlap the intervals it splits or that hold finished calls, and the
    work per settle stays proportional to the calls of that stretch, not to all open calls."""

    __slots__ = ("spans", "start_s", "end_s", "model_id", "weight", "tokens_in", "tokens_out",
                 "tag", "energy_j", "co2e_g", "fit_j", "min_start_s", "min_end_s", "max_end_s")

    def __init__(
        self,
        spans: np.ndarray | None,
        start_s: np.ndarray,
        end_s: np.ndarray,
        model_id: np.ndarray,
        weight: np.ndarray,
        tokens_in: np.ndarray,
        tokens_out: np.ndarray,
        tag: np.ndarray | None = None,
    ) -> None:
        self.spans = spans  # object array of CallSpan; None when no per-call output is wanted
        self.start_s = start_s
        self.end_s = end_s  # clamped to >= start_s
        self.model_id = model_id
        self.weight = weight  # the work measure the fit uses: weight, else batch tag, else 1
        self.tokens_in = tokens_in  # NaN where not reported
        self.tokens_out = tokens_out
        # The caller's tag of each span (the daemon: its batch id), NO_TAG where none was given.
        self.tag = np.full(len(start_s), NO_TAG, dtype=np.int64) if tag is None else tag
        self.energy_j = np.zeros(len(start_s))
        self.co2e_g = np.zeros(len(start_s))
        self.fit_j = np.zeros(len(start_s))  # the part of energy_j apportioned by the power fit
        self._restat()

    def __len__(self) -> int:
        return len(self.start_s)

    def _restat(self) -> None:
        if len(self.start_s):
            self.min_start_s = float(self.start_s.min())
            self.min_end_s = float(self.end_s.min())
            self.max_end_s = float(self.end_s.max())

    def keep(self, mask: np.ndarray) -> None:
        for name in COLUMNS:
            setattr(self, name, getattr(self, name)[mask])
        if self.spans is not None:
            self.spans = self.spans[mask]
        self._restat()

    @classmethod
    def merge(cls, chunks: list[Chunk]) -> Chunk:
        out = cls.__new__(cls)
        for name in COLUMNS:
            setattr(out, name, np.concatenate([getattr(c, name) for c in chunks]))
        spans = [c.spans for c in chunks if c.spans is not None]
        out.spans = np.concatenate(spans) if len(spans) == len(chunks) else None
        out._restat()
        return out


COLUMNS = ("start_s", "end_s", "model_id", "weight", "tokens_in", "tokens_out", "tag",
           "energy_j", "co2e_g", "fit_j")


class Emitted:
    """Settled calls of one consumer, as parallel arrays: what a settle emits, one per chunk.

    ``models`` names each ``model_id``. ``spans`` (the CallSpan objects, for a per-call output
    or a raw log) may be None. No Python object per call is made unless a caller asks for one
    (``CallSettlement.per_call``)."""

    __slots__ = ("consumer", "models", "spans", "start_s", "end_s", "model_id", "tokens_in",
                 "tokens_out", "tag", "energy_j", "co2e_g", "cost", "fitted")

    def __init__(self, consumer: str, models: Sequence[str], spans: np.ndarray | None,
                 **columns: np.ndarray) -> None:
        self.consumer, self.models, self.spans = consumer, models, spans
        for name in EMITTED_COLUMNS:
            setattr(self, name, columns[name])

    def __len__(self) -> int:
        return len(self.energy_j)

    def take(self, index: np.ndarray | slice) -> Emitted:
        return Emitted(self.consumer, self.models,
                       None if self.spans is None else self.spans[index],
                       **{name: getattr(self, name)[index] for name in EMITTED_COLUMNS})

    def by_tag(self) -> list[tuple[int, Emitted]]:
        """This emission split by tag, in order of tag (one piece, not copied, when all share
        one: the daemon's chunks mostly hold one batch)."""
        tag = self.tag
        if not len(tag):
            return []
        first = int(tag[0])
        if first == int(tag[-1]) and bool((tag == first).all()):
            return [(first, self)]
        order = np.argsort(tag, kind="stable")
        tags, starts = np.unique(tag[order], return_index=True)
        bounds = [*starts.tolist(), len(order)]
        return [(t, self.take(order[bounds[k]:bounds[k + 1]])) for k, t in enumerate(tags.tolist())]

    @classmethod
    def unsettled(cls, consumer: str, spans: Sequence[CallSpan], tag: int) -> Emitted:
        """Spans settled with no energy (refused by the ledger's memory bound)."""
        models = sorted({s.model for s in spans})
        ids = {m: i for i, m in enumerate(models)}
        n = len(spans)
        objs = np.empty(n, dtype=object)
        objs[:] = list(spans)
        zeros = np.zeros(n)

        def measure(name: str) -> np.ndarray:
            values = [getattr(s, name) for s in spans]
            return np.array([np.nan if v is None else v for v in values], dtype=np.float64)

        return cls(consumer, models, objs,
                   start_s=np.array([s.start_s for s in spans], dtype=np.float64),
                   end_s=np.array([s.end_s for s in spans], dtype=np.float64),
                   model_id=np.array([ids[s.model] for s in spans], dtype=np.int64),
                   tokens_in=measure("tokens_in"), tokens_out=measure("tokens_out"),
                   tag=np.full(n, tag, dtype=np.int64), energy_j=zeros, co2e_g=zeros.copy(),
                   cost=zeros.copy(), fitted=np.zeros(n, dtype=bool))


EMITTED_COLUMNS = ("start_s", "end_s", "model_id", "tokens_in", "tokens_out", "tag", "energy_j",
                   "co2e_g", "cost", "fitted")


def minute_rollup(parts: Sequence[Emitted]) -> list[dict[str, Any]]:
    """Rows for table ``call_minute``: the calls of ``parts`` summed by (start minute, model) in
    one numpy pass. ``busy_s`` sums call durations; ``fitted_calls`` counts calls apportioned by
    the power fit; tokens sum what was reported (a call without adds 0); ``token_calls`` and
    ``token_energy_j`` cover the calls that reported ``tokens_out``."""
    parts = [p for p in parts if len(p)]
    if not parts:
        return []
    names: dict[str, int] = {}
    gids = []
    for p in parts:  # each part's model ids -> one numbering over all parts
        table = np.array([names.setdefault(m, len(names)) for m in p.models] or [0],
                         dtype=np.int64)
        gids.append(table[p.model_id])
    by_id = list(names)

    def cat(name: str) -> np.ndarray:
        return np.concatenate([getattr(p, name) for p in parts])

    start_s, energy_j, tokens_out = cat("start_s"), cat("energy_j"), cat("tokens_out")
    minute = (np.floor_divide(start_s, 60.0) * 60.0).astype(np.int64)
    n_models = max(len(by_id), 1)
    key = minute * n_models + np.concatenate(gids)
    lo = int(key.min())
    span = int(key.max()) - lo + 1
    if span <= max(4 * len(key), 1 << 16):
        # Calls of a few minutes and models: keys lie in a short range, so they are grouped by
        # counting, without np.unique's sort (which was most of this function's time).
        present = np.flatnonzero(np.bincount(key - lo, minlength=span))
        slot = np.zeros(span, dtype=np.int64)
        slot[present] = np.arange(len(present))
        keys, inverse = present + lo, slot[key - lo]
    else:
        keys, inverse = np.unique(key, return_inverse=True)
        inverse = inverse.reshape(-1)
    m = len(keys)
    has_out = ~np.isnan(tokens_out)

    def total(weights: np.ndarray) -> list[float]:
        return np.bincount(inverse, weights=weights, minlength=m).tolist()

    calls = np.bincount(inverse, minlength=m).tolist()
    busy_s = total(cat("end_s") - start_s)
    sums_j, sums_g, sums_cost = total(energy_j), total(cat("co2e_g")), total(cat("cost"))
    fitted = total(cat("fitted").astype(np.float64))
    t_in, t_out = total(np.nan_to_num(cat("tokens_in"))), total(np.nan_to_num(tokens_out))
    token_calls, token_j = total(has_out.astype(np.float64)), total(energy_j * has_out)
    return [
        {"minute_s": key // n_models, "model": by_id[key % n_models], "calls": calls[i],
         "busy_s": busy_s[i], "energy_j": sums_j[i], "co2e_g": sums_g[i], "cost": sums_cost[i],
         "fitted_calls": int(fitted[i]), "tokens_in": int(t_in[i]), "tokens_out": int(t_out[i]),
         "token_calls": int(token_calls[i]), "token_energy_j": token_j[i]}
        for i, key in enumerate(keys.tolist())
    ]
