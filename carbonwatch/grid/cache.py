"""Fetched intensity points kept in the store's ``intensity_points`` table.

Every fetch is kept with its ``fetched_at_s`` (part of the key), so a later forecast never
overwrites the one a past plan was made from, and a report can say which fetch it used."""

from __future__ import annotations

from collections.abc import Iterable

import sqlite_utils

from carbonwatch.grid.series import normalise
from carbonwatch.grid.types import IntensityPoint
from carbonwatch.store import intensity, transaction

TABLE = "intensity_points"


class IntensityCache:
    def __init__(self, db: sqlite_utils.Database) -> None:
        self.db = db

    def save(self, points: Iterable[IntensityPoint]) -> int:
        """Store fetched points (static ones, never fetched, are skipped); returns rows offered."""
        # The table's one writer; its own transaction, or the caller's when one is open (never
        # committing a transaction the daemon's writer began).
        with transaction(self.db.conn):
            return intensity.save_points(self.db.conn, points)

    def points(
        self, zone: str, provider: str, start_s: float, end_s: float
    ) -> list[IntensityPoint]:
        """Every cached point of one provider overlapping [start_s, end_s), best one per time."""
        return normalise(intensity.select(self.db.conn, zone, provider, start_s, end_s))

    def forecast(
        self, zone: str, provider: str, now_s: float, horizon_s: float = 7 * 86400.0
    ) -> list[IntensityPoint]:
        """Cached points from now on (the fallback when the provider is down)."""
        return self.points(zone, provider, now_s, now_s + horizon_s)

    def at(self, zone: str, provider: str, t_s: float) -> IntensityPoint | None:
        found = self.points(zone, provider, t_s, t_s + 1e-6)
        return found[0] if found else None
