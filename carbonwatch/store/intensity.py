"""The ``intensity_points`` table: fetched intensity, every fetch kept (``fetched_at_s`` is part
of the key, so a later forecast never overwrites the one a past plan was made from).

The one writer is :func:`save_points`; like every table module here it never commits: the
caller owns the transaction (a daemon writer task, or :func:`carbonwatch.store.transaction`)."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable

from carbonwatch.grid.types import IntensityPoint

COLUMNS = (
    "zone",
    "provider",
    "kind",
    "signal",
    "start_s",
    "end_s",
    "intensity_g_per_kwh",
    "fetched_at_s",
)


def save_points(conn: sqlite3.Connection, points: Iterable[IntensityPoint]) -> int:
    """Insert fetched points (static ones, never fetched, are skipped; a point already stored
    for the same fetch is kept); returns the rows offered."""
    rows = [
        tuple(getattr(p, name) for name in COLUMNS)
        for p in points
        if p.kind != "static" and p.fetched_at_s is not None
    ]
    conn.executemany(
        "INSERT OR IGNORE INTO intensity_points (zone, provider, kind, signal, start_s, end_s,"
        " intensity_g_per_kwh, fetched_at_s) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        rows,
    )
    return len(rows)


def select(
    conn: sqlite3.Connection, zone: str, provider: str, start_s: float, end_s: float
) -> list[IntensityPoint]:
    """Every stored point of one provider for ``zone`` overlapping [start_s, end_s), as stored
    (callers pick the best per time)."""
    cur = conn.execute(
        "SELECT zone, provider, kind, signal, start_s, end_s, intensity_g_per_kwh, fetched_at_s"
        " FROM intensity_points WHERE zone = ? AND provider = ? AND end_s > ? AND start_s < ?",
        [zone, provider, start_s, end_s],
    )
    return [IntensityPoint(**dict(zip(COLUMNS, r, strict=True))) for r in cur.fetchall()]
