"""Fetched intensity points kept in the store's ``intensity_points`` table.

Every fetch is kept with its ``fetched_at_s`` (part of the key), so a later forecast never
overwrites the one a past plan was made from, and a report can say which fetch it used."""

from __future__ import annotations

from collections.abc import Iterable

import sqlite_utils

from carbonwatch.grid.series import normalise
from carbonwatch.grid.types import IntensityPoint

TABLE = "intensity_points"
_COLUMNS = (
    "zone",
    "provider",
    "kind",
    "signal",
    "start_s",
    "end_s",
    "intensity_g_per_kwh",
    "fetched_at_s",
)


class IntensityCache:
    def __init__(self, db: sqlite_utils.Database) -> None:
        self.db = db

    def save(self, points: Iterable[IntensityPoint]) -> int:
        """Store fetched points (static ones, never fetched, are skipped); returns rows written."""
        rows = [
            {name: getattr(p, name) for name in _COLUMNS}
            for p in points
            if p.kind != "static" and p.fetched_at_s is not None
        ]
        if rows:
            with self.db.conn:  # one transaction; the store's connection is in autocommit
                self.db[TABLE].insert_all(rows, ignore=True)
        return len(rows)

    def points(
        self, zone: str, provider: str, start_s: float, end_s: float
    ) -> list[IntensityPoint]:
        """Every cached point of one provider overlapping [start_s, end_s), best one per time."""
        rows = self.db.query(
            "SELECT zone, provider, kind, signal, start_s, end_s, intensity_g_per_kwh, "
            "fetched_at_s FROM intensity_points "
            "WHERE zone = ? AND provider = ? AND end_s > ? AND start_s < ?",
            [zone, provider, start_s, end_s],
        )
        return normalise(
            IntensityPoint(
                start_s=r["start_s"],
                end_s=r["end_s"],
                intensity_g_per_kwh=r["intensity_g_per_kwh"],
                kind=r["kind"],
                signal=r["signal"],
                provider=r["provider"],
                zone=r["zone"],
                fetched_at_s=r["fetched_at_s"],
            )
            for r in rows
        )

    def forecast(
        self, zone: str, provider: str, now_s: float, horizon_s: float = 7 * 86400.0
    ) -> list[IntensityPoint]:
        """Cached points from now on (the fallback when the provider is down)."""
        return self.points(zone, provider, now_s, now_s + horizon_s)

    def at(self, zone: str, provider: str, t_s: float) -> IntensityPoint | None:
        found = self.points(zone, provider, t_s, t_s + 1e-6)
        return found[0] if found else None
