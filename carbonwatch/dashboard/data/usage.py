"""Overview and models: training against inference, cumulative curves, per-1,000-call figures."""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from carbonwatch.dashboard.data.common import (
    METRICS,
    PHASES,
    Window,
    choose_bucket,
    require_span,
    resolve_window,
    zone_filter,
)
from carbonwatch.dashboard.data.jobs import job_rows
from carbonwatch.dashboard.reader import HOUR_S, TOKEN_SUMS, read_snapshot, rollup
from carbonwatch.tokens import per_token


# --- overview -----------------------------------------------------------------------------
@dataclass
class Crossover:
    t_s: float
    value: float  # the metric's cumulative value where the curves met


@dataclass
class ModelCurve:
    model: str
    t_s: list[int]  # bucket ends
    training: list[float]  # cumulative
    inference: list[float]
    crossover: Crossover | None


@dataclass
class Overview:
    window: Window
    zone: str | None
    totals: dict[str, dict[str, float]]  # phase -> metric -> value
    calls: int
    cost_known: bool
    energy_by_provenance: dict[str, float]
    energy_by_intensity_kind: dict[str, float]
    energy_by_class: dict[tuple[str, str], float]  # (device class, provenance) -> J
    metric: str
    curves: list[ModelCurve] = field(default_factory=list)  # the largest models, largest first
    models: int = 0  # models with training or inference in the range

    @property
    def total_energy_j(self) -> float:
        return math.fsum(t["energy_j"] for t in self.totals.values())

    @property
    def idle_share(self) -> float | None:
        total = self.total_energy_j
        return self.totals["idle"]["energy_j"] / total if total > 0 else None


def overview(path: Path | None, range_key: str, zone: str | None, metric: str = "co2e_g",
             curves: int = 8) -> Overview:
    """Totals by phase and provenance, and cumulative curves of the ``curves`` largest models."""
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}")
    with read_snapshot(path) as (conn, schema):
        window = resolve_window(require_span(conn), range_key)
        where = zone_filter(zone)
        # Two narrow groupings: one wide GROUP BY (time x model x provenance ...) costs more
        # than both, its sort being most of a query's time.
        rows = rollup(conn, schema, "energy", window.start_s, window.end_s,
                      ("phase", "provenance", "intensity_kind", "device_class"), None, where)
        bucket = choose_bucket(window.end_s - window.start_s, points=150)
        per_model = rollup(conn, schema, "energy", window.start_s, window.end_s,
                           ("phase", "model"), bucket,
                           {**where, "phase": ("training", "inference")})
        calls = rollup(conn, schema, "call", window.start_s, window.end_s)
    totals = {p: dict.fromkeys(METRICS, 0.0) for p in PHASES}
    by_prov: dict[str, float] = defaultdict(float)
    by_kind: dict[str, float] = defaultdict(float)
    by_class: dict[tuple[str, str], float] = defaultdict(float)
    for r in rows:
        phase = str(r["phase"]) if r["phase"] in totals else "other"
        for m in METRICS:
            totals[phase][m] += float(r[m])
        energy = float(r["energy_j"])
        by_prov[str(r["provenance"])] += energy
        by_kind[str(r["intensity_kind"])] += energy
        by_class[(str(r["device_class"]), str(r["provenance"]))] += energy
    slots: dict[str, dict[int, list[float]]] = defaultdict(dict)  # model -> t -> [train, inf]
    size: dict[str, float] = defaultdict(float)
    for r in per_model:
        if r["model"]:
            slot = slots[str(r["model"])].setdefault(int(r["t_s"]), [0.0, 0.0])
            slot[0 if r["phase"] == "training" else 1] += float(r[metric])
            size[str(r["model"])] += float(r[metric])
    cost_known = any(t["cost"] for t in totals.values()) or not any(
        t["energy_j"] for t in totals.values())
    largest = sorted(size, key=lambda m: -size[m])[:curves]
    series = [_curve(m, slots[m], window.start_s, window.end_s, bucket) for m in largest]
    return Overview(
        window, zone, totals, int(calls[0]["calls"]) if calls else 0, cost_known,
        dict(by_prov), dict(by_kind), dict(by_class), metric, series, len(size),
    )


def _curve(model: str, slots: dict[int, list[float]], start_s: int, end_s: int, bucket_s: int
           ) -> ModelCurve:
    t_s, training, inference = [start_s], [0.0], [0.0]
    train = inf = 0.0
    for t in range(start_s - start_s % bucket_s, end_s, bucket_s):
        a, b = slots.get(t, (0.0, 0.0))
        train, inf = train + a, inf + b
        t_s.append(min(t + bucket_s, end_s))
        training.append(train)
        inference.append(inf)
    return ModelCurve(model, t_s, training, inference, crossover(t_s, training, inference))


def crossover(t_s: list[int], training: list[float], inference: list[float]) -> Crossover | None:
    """Where cumulative inference last rose from below training to meet it (interpolated), if it
    is still ahead at the end; None when training is nil in the range, inference never caught up,
    or a later training run put training back ahead."""
    if not t_s or inference[-1] < training[-1]:
        return None
    found = None
    for i in range(1, len(t_s)):
        before = inference[i - 1] - training[i - 1]
        after = inference[i] - training[i]
        if before < 0 <= after and training[i] > 0:
            frac = -before / (after - before)
            t = t_s[i - 1] + frac * (t_s[i] - t_s[i - 1])
            found = Crossover(t, training[i - 1] + frac * (training[i] - training[i - 1]))
    return found


# --- models ---------------------------------------------------------------------------------
@dataclass
class ModelRow:
    model: str
    training_runs: int
    training: dict[str, float]  # metric -> value in range
    inference: dict[str, float]  # serving energy attributed to the model's inference jobs
    calls: int
    # The calls' own energy and token sums (call rollups), for the per-token figures.
    calls_energy_j: float = 0.0
    tokens: dict[str, float] = field(default_factory=lambda: dict.fromkeys(TOKEN_SUMS, 0))

    def per_1000_calls(self, metric: str) -> float | None:
        """Serving cost of 1,000 calls: everything the serving jobs drew, between calls included."""
        return self.inference[metric] / self.calls * 1000 if self.calls else None

    def per_token(self) -> dict[str, Any]:
        """Tokens and per-token figures, as /v1/summary and the statement give them."""
        t = self.tokens
        return per_token(
            serving_energy_j=self.inference["energy_j"], serving_co2e_g=self.inference["co2e_g"],
            calls=self.calls, calls_energy_j=self.calls_energy_j,
            tokens_in=int(t["tokens_in"]), tokens_out=int(t["tokens_out"]),
            token_calls=int(t["token_calls"]), token_energy_j=float(t["token_energy_j"]))


@dataclass
class ModelsView:
    window: Window
    rows: list[ModelRow]
    cost_known: bool


def models(path: Path | None, range_key: str, zone: str | None) -> ModelsView:
    with read_snapshot(path) as (conn, schema):
        window = resolve_window(require_span(conn), range_key)
        energy = rollup(conn, schema, "energy", window.start_s, window.end_s, ("phase", "model"),
                        None, {**zone_filter(zone), "phase": ("training", "inference")})
        calls = rollup(conn, schema, "call", window.start_s, window.end_s, ("model",))
        runs = dict(conn.execute(
            "SELECT model, COUNT(*) FROM jobs WHERE kind = 'training' AND model IS NOT NULL "
            "AND started_s < ? AND (ended_s IS NULL OR ended_s > ?) GROUP BY model",
            [window.end_s, window.start_s]).fetchall())
    table: dict[str, ModelRow] = {}

    def row(model: str) -> ModelRow:
        if model not in table:
            table[model] = ModelRow(model, int(runs.get(model, 0)), dict.fromkeys(METRICS, 0.0),
                                    dict.fromkeys(METRICS, 0.0), 0)
        return table[model]

    for r in energy:
        if r["model"]:
            target = row(str(r["model"])).training if r["phase"] == "training" else \
                row(str(r["model"])).inference
            for m in METRICS:
                target[m] += float(r[m])
    for r in calls:
        target = row(str(r["model"]))
        target.calls += int(r["calls"])
        target.calls_energy_j += float(r["energy_j"])
        for name in TOKEN_SUMS:
            target.tokens[name] += r[name]
    for model in runs:
        if model:
            row(str(model))
    rows = sorted(table.values(), key=lambda r: -(r.training["co2e_g"] + r.inference["co2e_g"]))
    cost_known = any(r.training["cost"] or r.inference["cost"] for r in rows) or not any(
        r.training["energy_j"] or r.inference["energy_j"] for r in rows)
    return ModelsView(window, rows, cost_known)


@dataclass
class ModelTrend:
    model: str
    window: Window
    bucket_s: int
    t_s: list[int]
    calls: list[int]
    per_1000: dict[str, list[float | None]]  # metric -> serving value per 1,000 calls per bucket
    training_runs: list[dict[str, Any]]


def model_trend(path: Path | None, model: str, range_key: str, zone: str | None) -> ModelTrend:
    """A model's per-1,000-call figures over time (at least hourly buckets) and its runs."""
    with read_snapshot(path) as (conn, schema):
        window = resolve_window(require_span(conn), range_key)
        bucket = max(window.bucket_s, HOUR_S) if window.end_s - window.start_s > 12 * HOUR_S \
            else window.bucket_s
        energy = rollup(conn, schema, "energy", window.start_s, window.end_s, (), bucket,
                        {**zone_filter(zone), "phase": "inference", "model": model})
        calls = rollup(conn, schema, "call", window.start_s, window.end_s, (), bucket,
                       {"model": model})
        runs = job_rows(conn, "WHERE kind = 'training' AND model = ? ORDER BY started_s",
                         [model])
    by_t = {int(r["t_s"]): r for r in energy}
    t_s, counts = [], []
    per: dict[str, list[float | None]] = {m: [] for m in METRICS}
    for c in calls:
        t = int(c["t_s"])
        n = int(c["calls"])
        t_s.append(t)
        counts.append(n)
        e = by_t.get(t)
        for m in METRICS:
            per[m].append(float(e[m]) / n * 1000 if e is not None and n else None)
    return ModelTrend(model, window, bucket, t_s, counts, per, runs)
