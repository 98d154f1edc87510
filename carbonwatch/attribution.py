"""Pure attribution: split one device interval's energy over its consumers plus idle.

Rules (docs/architecture.md, "Measurement rules"): the interval's *active* energy (above the idle
baseline) is split by the consumers' weights (SM share on a GPU, CPU seconds on a CPU, RSS on
RAM). Idle energy is then handled by the idle policy:

- ``separate`` (default): idle stays its own line;
- ``proportional``: idle is shared in proportion to each consumer's active energy;
- ``even``: idle is shared evenly among the consumers present.

With no consumer, every joule stays idle (if below baseline) or unattributed (``OTHER``).
Conservation holds exactly up to float rounding: the heaviest consumer receives the remainder, so
the sum of the parts is the interval's energy computed in the same order.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from carbonwatch.model import OTHER

K = TypeVar("K", bound=Hashable)


@dataclass(frozen=True)
class Split(Generic[K]):
    """One interval's energy, split. ``by_consumer`` never contains the idle line."""

    energy_j: float
    idle_j: float
    by_consumer: dict[K | str, float] = field(default_factory=dict)

    def total_j(self) -> float:
        return self.idle_j + math.fsum(self.by_consumer.values())


def _weighted(amount_j: float, weights: Mapping[K, float]) -> dict[K, float]:
    """Split ``amount_j`` by weights; the parts sum to ``amount_j`` (fsum) exactly."""
    positive = {k: w for k, w in weights.items() if w > 0 and math.isfinite(w)}
    if not positive or amount_j == 0:
        return {}
    total_w = math.fsum(positive.values())
    # The remainder goes to the heaviest key so no joule is created or lost by rounding; given to
    # a key with a tiny weight it could come out a few nJ below zero.
    rest = max(positive, key=positive.__getitem__)
    parts = {k: amount_j * w / total_w for k, w in positive.items() if k != rest}
    parts[rest] = amount_j - math.fsum(parts.values())
    return parts


def split_interval(
    energy_j: float,
    idle_j: float,
    shares: Mapping[K, float],
    policy: str = "separate",
) -> Split[K]:
    """Split one device interval. ``idle_j`` is clamped to [0, energy_j]."""
    if not math.isfinite(energy_j) or energy_j < 0:
        raise ValueError(f"interval energy must be a finite non-negative number, got {energy_j!r}")
    idle_j = min(max(idle_j, 0.0), energy_j)
    active_j = energy_j - idle_j
    by_consumer: dict[K | str, float] = dict(_weighted(active_j, shares))
    if not by_consumer and active_j > 0:
        by_consumer[OTHER] = active_j
    if policy == "separate" or not by_consumer or idle_j == 0:
        return Split(energy_j, idle_j, by_consumer)
    if policy == "proportional":
        extra = _weighted(idle_j, {k: v for k, v in by_consumer.items()})
    elif policy == "even":
        extra = _weighted(idle_j, {k: 1.0 for k in by_consumer})
    else:
        raise ValueError(f"unknown idle policy {policy!r}")
    if not extra:  # consumers present but all with zero active energy
        return Split(energy_j, idle_j, by_consumer)
    merged = {k: by_consumer[k] + extra.get(k, 0.0) for k in by_consumer}
    return Split(energy_j, 0.0, merged)


def group_shares(shares: Mapping[K, float], owner: Mapping[K, str]) -> dict[str, float]:
    """Sum per-process weights into per-consumer weights; unowned processes become ``OTHER``.

    Ranks of one distributed job are several pids owned by one job: their shares add up into the
    one consumer, so a node's energy is never counted twice."""
    grouped: dict[str, float] = {}
    for key, weight in shares.items():
        consumer = owner.get(key, OTHER)
        grouped[consumer] = grouped.get(consumer, 0.0) + weight
    return grouped
