"""Open inference spans held by the call ledger as parallel numpy arrays (one row per span), and
the settled calls it emits in the same form (:class:`Emitted`), rolled up per minute and model
by :func:`minute_rollup` without a Python object per call."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from carbonwatch.calls.ledger import CallSpan

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


_SUMS = ("calls", "busy_s", "energy_j", "co2e_g", "cost", "fitted_calls", "tokens_in",
         "tokens_out", "token_calls", "token_energy_j")
_INTS = frozenset({"calls", "fitted_calls", "tokens_in", "tokens_out", "token_calls"})


def minute_rollup(parts: Sequence[Emitted]) -> list[dict[str, Any]]:
    """Rows for table ``call_minute``: the calls of ``parts`` summed by (start minute, model),
    with array sums per part (no Python object per call). ``busy_s`` sums call durations;
    ``fitted_calls`` counts calls apportioned by the power fit; tokens sum what was reported (a
    call without adds 0); ``token_calls`` and ``token_energy_j`` cover the calls that reported
    ``tokens_out``."""
    rows: dict[tuple[int, str], list[float]] = {}
    for p in parts:
        if not len(p):
            continue
        start_s = p.start_s
        minute = np.floor(start_s / 60.0)
        minute -= minute * 60.0 > start_s  # as Python's //, should the division round up
        # One key per (minute, model) of this part: a batch covers a minute or two of one model.
        n_models = max(len(p.models), 1)
        key = minute.astype(np.int64) * n_models + p.model_id
        lo, hi = int(key.min()), int(key.max())
        energy_j, tokens_out = p.energy_j, p.tokens_out
        has_out = ~np.isnan(tokens_out)
        columns = (p.end_s - start_s, energy_j, p.co2e_g, p.cost, p.fitted,
                   np.nan_to_num(p.tokens_in), np.where(has_out, tokens_out, 0.0), has_out,
                   np.where(has_out, energy_j, 0.0))
        if lo == hi:
            sums = [[float(c.sum())] for c in columns]
            counts, present = [len(p)], [lo]
        else:  # keys in a short range: grouped by counting, no sort
            local = key - lo
            count = np.bincount(local)
            where = np.flatnonzero(count)
            sums = [np.bincount(local, weights=c, minlength=len(count))[where].tolist()
                    for c in columns]
            counts, present = count[where].tolist(), (where + lo).tolist()
        for i, k in enumerate(present):
            group = (k // n_models * 60, p.models[k % n_models] if p.models else "")
            acc = rows.get(group)
            if acc is None:
                acc = rows[group] = [0.0] * len(_SUMS)
            acc[0] += counts[i]
            for j, column in enumerate(sums, start=1):
                acc[j] += column[i]
    return [
        {"minute_s": minute_s, "model": model,
         **{name: int(v) if name in _INTS else v for name, v in zip(_SUMS, acc, strict=True)}}
        for (minute_s, model), acc in rows.items()
    ]
