"""Open inference spans held by the call ledger as parallel numpy arrays (one row per span)."""

from __future__ import annotations

import numpy as np


class Chunk:
    """Open spans ingested together, as parallel arrays (one row per span).

    Spans arrive roughly in time order, so a chunk covers a short stretch of time: a settle only
    touches the chunks that overlap the intervals it splits or that hold finished calls, and the
    work per settle stays proportional to the calls of that stretch, not to all open calls."""

    __slots__ = ("spans", "start_s", "end_s", "model_id", "weight", "tokens_in", "tokens_out",
                 "energy_j", "co2e_g", "fit_j", "min_start_s", "min_end_s", "max_end_s")

    def __init__(
        self,
        spans: np.ndarray | None,
        start_s: np.ndarray,
        end_s: np.ndarray,
        model_id: np.ndarray,
        weight: np.ndarray,
        tokens_in: np.ndarray,
        tokens_out: np.ndarray,
    ) -> None:
        self.spans = spans  # object array of CallSpan; None when no per-call output is wanted
        self.start_s = start_s
        self.end_s = end_s  # clamped to >= start_s
        self.model_id = model_id
        self.weight = weight  # the work measure the fit uses: weight, else batch tag, else 1
        self.tokens_in = tokens_in  # NaN where not reported
        self.tokens_out = tokens_out
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


COLUMNS = ("start_s", "end_s", "model_id", "weight", "tokens_in", "tokens_out", "energy_j",
           "co2e_g", "fit_j")
