"""The ``energy_minute`` rollup: minute rows are summed into it, never replaced.

Functions over a connection that never commit: the caller owns the transaction."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable
from typing import Any

_UPSERT = """
    INSERT INTO energy_minute (minute_s, device_id, device_class, consumer, phase, model,
        energy_j, co2e_g, cost, intensity_g_per_kwh, intensity_kind, provenance)
    VALUES (:minute_s, :device_id, :device_class, :consumer, :phase, :model,
        :energy_j, :co2e_g, :cost, :intensity_g_per_kwh, :intensity_kind, :provenance)
    ON CONFLICT (minute_s, device_id, consumer) DO UPDATE SET
        intensity_g_per_kwh = CASE WHEN energy_j + excluded.energy_j > 0 THEN
            (intensity_g_per_kwh * energy_j + excluded.intensity_g_per_kwh
             * excluded.energy_j) / (energy_j + excluded.energy_j)
            ELSE excluded.intensity_g_per_kwh END,
        energy_j = energy_j + excluded.energy_j,
        co2e_g = co2e_g + excluded.co2e_g,
        cost = cost + excluded.cost,
        intensity_kind = CASE WHEN intensity_kind = excluded.intensity_kind
            THEN intensity_kind ELSE 'mixed' END,
        provenance = CASE WHEN provenance = 'estimated' OR excluded.provenance = 'estimated'
            THEN 'estimated' ELSE 'measured' END
"""


def add_minutes(conn: sqlite3.Connection, rows: Iterable[dict[str, Any]]) -> None:
    """Add rows into the minute rollups (an existing minute is summed, not replaced)."""
    conn.executemany(_UPSERT, list(rows))
