"""Grid and schedule: intensity history and forecast per zone, deferred jobs and their savings."""

from __future__ import annotations

import json
import math
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from carbonwatch.dashboard.data.common import Window, require_span, resolve_window
from carbonwatch.dashboard.reader import HOUR_S, Span, data_span, read_snapshot


# --- grid and schedule ---------------------------------------------------------------------
@dataclass
class ZoneSeries:
    zone: str
    provider: str
    actual: list[tuple[float, float, float]]  # (start_s, end_s, g/kWh)
    forecast: list[tuple[float, float, float]]  # the latest fetch, from where actuals stop
    forecast_fetched_at_s: float | None


@dataclass
class GridView:
    window: Window
    zones: list[ZoneSeries]
    deferred: list[dict[str, Any]]
    planned_saving_g: float
    realised_saving_g: float
    realised_baseline_g: float


def grid(
    path: Path | None, range_key: str, zone: str | None, horizon_s: int = 48 * HOUR_S
) -> GridView:
    with read_snapshot(path) as (conn, _schema):
        span = data_span(conn)
        if span is None:
            horizon = conn.execute("SELECT MIN(start_s), MAX(end_s) FROM intensity_points "
                                   "WHERE kind = 'actual'").fetchone()
            if horizon[0] is None:
                require_span(conn)  # raises the first-run state
            span = Span(int(horizon[0]), int(horizon[1]))
        window = resolve_window(span, range_key)
        args: list[object] = [window.start_s, window.end_s + horizon_s]
        zone_sql = ""
        if zone not in (None, "", "*"):
            zone_sql, args = " AND zone = ?", [*args, zone]
        points = conn.execute(
            "SELECT zone, provider, kind, start_s, end_s, intensity_g_per_kwh, fetched_at_s "
            "FROM intensity_points WHERE end_s > ? AND start_s < ? AND kind != 'static'"
            + zone_sql + " ORDER BY zone, provider, start_s, fetched_at_s", args).fetchall()
        deferred = _deferred(conn, zone)
    series = _zone_series(points)
    done = [d for d in deferred if d["realised_co2e_g"] is not None
            and d["realised_baseline_co2e_g"] is not None]
    planned = math.fsum(d["planned_saving_g"] or 0.0 for d in deferred
                        if d["status"] in ("queued", "running"))
    return GridView(
        window, series, deferred, planned,
        math.fsum(d["realised_baseline_co2e_g"] - d["realised_co2e_g"] for d in done),
        math.fsum(d["realised_baseline_co2e_g"] for d in done),
    )


def _zone_series(points: list[tuple]) -> list[ZoneSeries]:
    latest: dict[tuple[str, str, str, float], tuple] = {}
    for p in points:  # ordered by fetched_at: the last one per slot wins
        latest[(p[0], p[1], p[2], p[3])] = p
    grouped: dict[tuple[str, str], ZoneSeries] = {}
    for (zone, provider, kind, _), p in sorted(latest.items()):
        s = grouped.setdefault((zone, provider), ZoneSeries(zone, provider, [], [], None))
        point = (float(p[3]), float(p[4]), float(p[5]))
        if kind == "actual":
            s.actual.append(point)
        else:
            s.forecast.append(point)
            s.forecast_fetched_at_s = max(s.forecast_fetched_at_s or 0.0, float(p[6]))
    for s in grouped.values():
        last_actual = max((a[1] for a in s.actual), default=float("-inf"))
        # Where actuals exist they are the truth; the forecast is drawn from where they stop.
        s.forecast = [f for f in s.forecast if f[0] >= last_actual]
    return sorted(grouped.values(), key=lambda s: (s.zone, s.provider))


def _deferred(conn: sqlite3.Connection, zone: str | None) -> list[dict[str, Any]]:
    have = {r[1] for r in conn.execute("PRAGMA table_info(deferred_jobs)")}
    # Real run windows (an interruptible job pauses between them) where the scheduler records
    # them (m005); else the launched job's own start and end.
    # The expected saving's forecast-error band (m007); older stores: unknown. Both are fixed
    # column names, never values.
    columns = ", ".join(f"d.{c}" if c in have else f"NULL AS {c}"
                        for c in ("runs", "saving_band_g_per_kwh"))
    sql = ("SELECT d.id, d.name, d.zone, d.status, d.submitted_s, d.deadline_s, "  # noqa: S608
           "d.duration_s, d.interruptible, d.plan, d.plan_intensity_g_per_kwh, "
           "d.baseline_intensity_g_per_kwh, "
           "d.expected_co2e_g, d.realised_co2e_g, d.realised_baseline_co2e_g, d.job_id, "
           f"{columns}, "
           "j.started_s, j.ended_s FROM deferred_jobs d "  # (SQL from fixed names only)
           "LEFT JOIN jobs j ON j.id = d.job_id WHERE (? IS NULL OR d.zone = ?) "
           "ORDER BY d.submitted_s")
    z = None if zone in (None, "", "*") else zone
    cur = conn.execute(sql, [z, z])
    names = [c[0] for c in cur.description]
    out = []
    for values in cur:
        d = dict(zip(names, values, strict=True))
        d["plan"] = _windows(d["plan"])
        d["executed"] = _windows(d.pop("runs")) or (
            [(d["started_s"], d["ended_s"])] if d["started_s"] is not None else [])
        base, planned = d["baseline_intensity_g_per_kwh"], d["plan_intensity_g_per_kwh"]
        d["planned_saving_fraction"] = (1 - planned / base) if base and planned is not None \
            else None
        band_g = d["saving_band_g_per_kwh"]
        d["saving_band_fraction"] = band_g / base if band_g is not None and base else None
        expected = d["expected_co2e_g"]
        d["planned_saving_g"] = (expected * base / planned - expected) \
            if expected is not None and base and planned else None
        out.append(d)
    return out


def _windows(raw: str | None) -> list[tuple[float, float | None]]:
    """[[start_s, end_s|null], ...] as JSON -> pairs; anything unreadable -> none."""
    try:
        return [(float(a), None if b is None else float(b)) for a, b in json.loads(raw or "[]")]
    except (TypeError, ValueError):
        return []
