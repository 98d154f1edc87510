"""Learned GPU idle baselines, one row per GPU UUID (table ``gpu_idle``, migration m006).

The GPU collector learns a device's idle power from its energy counter over intervals without any
compute process; what it learned is kept here so the next daemon start, ``carbonwatch run`` or
replay begins from it instead of from nothing (see :mod:`carbonwatch.collectors.gpushare`)."""

from __future__ import annotations

import math
import sqlite3


def load_gpu_idle(conn: sqlite3.Connection) -> dict[str, float]:
    """uuid -> learned idle power (W). Empty on a store that predates the table."""
    try:
        rows = conn.execute("SELECT uuid, idle_w FROM gpu_idle").fetchall()
    except sqlite3.OperationalError:  # a read-only store not yet migrated
        return {}
    return {str(uuid): float(w) for uuid, w in rows if w is not None and math.isfinite(w)}


def save_gpu_idle(
    conn: sqlite3.Connection, uuid: str, idle_w: float, learned_s: float, now_s: float
) -> None:
    """Record (or replace) one GPU's learned idle power. Refuses values no GPU could idle at."""
    if not uuid:
        raise ValueError("a GPU idle baseline needs the GPU's UUID")
    if not (math.isfinite(idle_w) and idle_w >= 0):
        raise ValueError(f"idle power must be a finite number of watts >= 0, got {idle_w!r}")
    conn.execute(
        "INSERT INTO gpu_idle (uuid, idle_w, learned_s, updated_s) VALUES (?, ?, ?, ?)"
        " ON CONFLICT (uuid) DO UPDATE SET idle_w = excluded.idle_w,"
        " learned_s = excluded.learned_s, updated_s = excluded.updated_s",
        (uuid, float(idle_w), float(learned_s), float(now_s)),
    )
