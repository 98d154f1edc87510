"""What one flush of the daemon's sampling loop writes, and flushes that failed to write folded
into one (``merge_flushes``) so memory grows with the minutes waiting, not with the failures."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from carbonwatch.daemon import storeops
from carbonwatch.daemon.metrics import EnergyKey, MetricTotals
from carbonwatch.store import Store


@dataclass
class Flush:
    """Everything one flush writes in one transaction; built under the lock, written outside it."""

    energy_rows: list[dict[str, Any]]
    batch_ids: list[int]
    call_rows: list[Any]  # raw log blocks (daemon/rawlog.RawBlock), written apart
    call_minutes: list[dict[str, Any]]
    job_calls: dict[str, tuple[int, float]]
    between_j: dict[str, float]
    metric_energy: list[tuple[EnergyKey, float, float, float]]
    sampled_until_s: float | None

    def empty(self) -> bool:
        return not (self.energy_rows or self.batch_ids or self.between_j or self.call_rows
                    or self.call_minutes or self.job_calls)

    def write(self, store: Store, resume_key: str) -> None:
        """The part that must commit together (the raw call log is written apart: see
        SamplingLoop.flush)."""
        conn = store.conn
        storeops.add_energy_minutes(store, self.energy_rows)
        storeops.settle_batches(
            conn, self.batch_ids, self.call_minutes, self.job_calls, self.between_j
        )
        if self.sampled_until_s is not None:
            storeops.set_meta(conn, resume_key, self.sampled_until_s)

    def published(self, totals: MetricTotals) -> None:
        """After commit: the counters grow by what the store now holds."""
        totals.add_energy(self.metric_energy)
        calls: dict[str, int] = defaultdict(int)  # a flush may hold several minutes of a model
        tokens: dict[tuple[str, str], int] = defaultdict(int)
        for r in self.call_minutes:
            calls[r["model"]] += r["calls"]
            if r.get("tokens_in"):
                tokens[(r["model"], "in")] += r["tokens_in"]
            if r.get("tokens_out"):
                tokens[(r["model"], "out")] += r["tokens_out"]
        totals.add_calls(calls)
        if tokens:
            totals.add_tokens(tokens)


def merge_flushes(flushes: Sequence[Flush], max_minutes: int) -> tuple[Flush, int]:
    """Flushes that failed to write, folded into one, and how many minute rows were dropped.

    Minute rows add up by (minute_s, device_id, consumer) exactly as the store's upsert adds
    them, so the merged flush holds one row per key: memory grows with the minutes waiting, not
    with the flushes that failed. Past ``max_minutes`` distinct minutes the oldest are dropped
    (rows and their metric energy together: the counters never count what the store lacks).
    ``metric_energy`` is parallel to ``energy_rows`` (see ``collect_flush``). The raw call log's
    rows are not kept: they are written apart, when the flush is made."""
    rows: dict[tuple[Any, ...], dict[str, Any]] = {}
    metrics: dict[tuple[Any, ...], list[Any]] = {}
    call_minutes: dict[tuple[Any, ...], dict[str, Any]] = {}
    job_calls: dict[str, tuple[int, float]] = {}
    between_j: dict[str, float] = defaultdict(float)
    batch_ids: list[int] = []
    sampled_until_s: float | None = None
    for flush in flushes:
        for row, (metric_key, *_) in zip(flush.energy_rows, flush.metric_energy, strict=True):
            key = (row["minute_s"], row["device_id"], row["consumer"])
            have = rows.get(key)
            if have is None:
                rows[key] = dict(row)
                metrics[key] = [metric_key, 0.0, 0.0, 0.0]
            else:
                _add_minute_row(have, row)
            acc = metrics[key]
            acc[1] += row["energy_j"]
            acc[2] += row["co2e_g"]
            acc[3] += row["cost"]
        for row in flush.call_minutes:
            key = (row["minute_s"], row["model"])
            have = call_minutes.setdefault(key, {**row, **dict.fromkeys(_CALL_SUMS, 0)})
            for name in _CALL_SUMS:
                have[name] += row.get(name, 0)  # rows without tokens reported none
        for consumer, (calls, energy_j) in flush.job_calls.items():
            old_calls, old_j = job_calls.get(consumer, (0, 0.0))
            job_calls[consumer] = (old_calls + calls, old_j + energy_j)
        for consumer, energy_j in flush.between_j.items():
            between_j[consumer] += energy_j
        batch_ids += flush.batch_ids
        if flush.sampled_until_s is not None:
            sampled_until_s = flush.sampled_until_s
    minutes = sorted({minute_s for minute_s, _, _ in rows})
    dropped = 0
    if len(minutes) > max_minutes:
        oldest_kept = minutes[-max_minutes] if max_minutes > 0 else float("inf")
        for key in [k for k in rows if k[0] < oldest_kept]:
            del rows[key], metrics[key]
            dropped += 1
    merged = Flush(
        energy_rows=list(rows.values()),
        batch_ids=batch_ids,
        call_rows=[],
        call_minutes=list(call_minutes.values()),
        job_calls=job_calls,
        between_j=dict(between_j),
        metric_energy=[(k, e, c, m) for k, e, c, m in metrics.values()],
        sampled_until_s=sampled_until_s,
    )
    return merged, dropped


_CALL_SUMS = ("calls", "busy_s", "energy_j", "co2e_g", "cost", "tokens_in", "tokens_out",
              "token_calls", "token_energy_j")


def _add_minute_row(have: dict[str, Any], row: Mapping[str, Any]) -> None:
    """``row`` added into ``have`` as Store.add_energy_minutes' upsert adds it."""
    total_j = have["energy_j"] + row["energy_j"]
    if total_j > 0:
        have["intensity_g_per_kwh"] = (
            have["intensity_g_per_kwh"] * have["energy_j"]
            + row["intensity_g_per_kwh"] * row["energy_j"]
        ) / total_j
    else:
        have["intensity_g_per_kwh"] = row["intensity_g_per_kwh"]
    have["energy_j"] = total_j
    have["co2e_g"] += row["co2e_g"]
    have["cost"] += row["cost"]
    if have["intensity_kind"] != row["intensity_kind"]:
        have["intensity_kind"] = "mixed"
    if "estimated" in (have["provenance"], row["provenance"]):
        have["provenance"] = "estimated"
