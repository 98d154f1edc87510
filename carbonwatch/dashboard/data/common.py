"""What every view shares: ranges and their buckets, zones, the first-run check, store status."""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from pathlib import Path

from carbonwatch.dashboard.reader import (
    DAY_S,
    FIRST_RUN_HINT,
    HOUR_S,
    DataUnavailable,
    Schema,
    Span,
    data_span,
    read_snapshot,
)

PHASES = ("training", "inference", "idle", "other")
METRICS = ("energy_j", "co2e_g", "cost")
# (key, label, seconds; None: everything recorded)
RANGES: tuple[tuple[str, str, int | None], ...] = (
    ("6h", "Last 6 hours", 6 * HOUR_S),
    ("24h", "Last 24 hours", 24 * HOUR_S),
    ("7d", "Last 7 days", 7 * 24 * HOUR_S),
    ("30d", "Last 30 days", 30 * 24 * HOUR_S),
    ("all", "All recorded", None),
)
STALE_AFTER_S = 5 * 60  # a device silent this long before the store's latest minute is stale


@dataclass(frozen=True)
class Window:
    """The time range a page shows, [start_s, end_s), and the bucket its series use."""

    key: str
    start_s: int
    end_s: int
    bucket_s: int


def choose_bucket(seconds: int, points: int = 400) -> int:
    """At most about ``points`` points a series, in units the rollups serve: ranges up to 12 h
    in minutes, up to 8 days in hours, longer ones in days (a finer bucket over a long range
    would group every hour or minute row of it)."""
    if seconds <= 12 * HOUR_S:
        candidates: tuple[int, ...] = (60, 300, 900)
    elif seconds <= 8 * DAY_S:
        candidates = (HOUR_S, 3 * HOUR_S, 6 * HOUR_S)
    else:
        candidates = (DAY_S, 7 * DAY_S)
    return next((b for b in candidates if seconds <= b * points), candidates[-1])


def resolve_window(span: Span, key: str) -> Window:
    seconds = dict((k, s) for k, _, s in RANGES).get(key, None)
    start = span.first_s if seconds is None else max(span.first_s, span.end_s - seconds)
    start -= start % 60
    return Window(key, start, span.end_s, choose_bucket(span.end_s - start))


def require_span(conn: sqlite3.Connection) -> Span:
    span = data_span(conn)
    if span is None:
        jobs = conn.execute("SELECT COUNT(*) FROM jobs").fetchone()[0]
        detail = ("The store exists but holds no energy readings yet"
                  + (f" ({jobs} job(s) registered, still starting?)." if jobs else "."))
        raise DataUnavailable("Nothing recorded yet", detail, FIRST_RUN_HINT, kind="empty")
    return span


def zones(conn: sqlite3.Connection, schema: Schema) -> list[str]:
    """Grid zones seen in the energy rows and in the intensity points ('' = the node's own)."""
    zones: set[str] = set()
    if schema.has_zone:
        table = "energy_day" if schema.has_rollups else "energy_minute"
        # Idle rows exist for every device every minute, so they name every zone in use.
        zones |= {r[0] for r in conn.execute(
            f"SELECT DISTINCT zone FROM {table} WHERE consumer = 'idle'")}  # noqa: S608 - fixed
    zones |= {r[0] for r in conn.execute("SELECT DISTINCT zone FROM intensity_points")}
    return sorted(zones)


def zone_filter(zone: str | None) -> dict[str, object]:
    return {} if zone in (None, "", "*") else {"zone": zone}


# --- header status --------------------------------------------------------------------------
@dataclass(frozen=True)
class StoreStatus:
    path: str
    schema_version: int
    first_s: int | None
    end_s: int | None
    zones: list[str]
    jobs: int
    running: int


def store_status(path: Path | None) -> StoreStatus:
    with read_snapshot(path) as (conn, schema):
        span = data_span(conn)
        jobs, running = conn.execute(
            "SELECT COUNT(*), COALESCE(SUM(status = 'running'), 0) FROM jobs").fetchone()
        return StoreStatus(str(path), schema.version, span.first_s if span else None,
                           span.end_s if span else None, zones(conn, schema), jobs, running)
