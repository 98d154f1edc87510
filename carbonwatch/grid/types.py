"""Shared grid types: one intensity point with provenance, and the source protocol."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class IntensityPoint:
    """Carbon intensity over [start_s, end_s) (unix seconds), with provenance.

    kind: "actual" | "forecast" | "static"; signal: "average" | "marginal".
    fetched_at_s is None for static values (no fetch happened).
    """

    start_s: float
    end_s: float
    intensity_g_per_kwh: float
    kind: str
    signal: str
    provider: str
    zone: str
    fetched_at_s: float | None


class IntensitySource(Protocol):
    """Synchronous lookup used once per accounting interval."""

    def intensity_at(self, t_s: float) -> IntensityPoint: ...
