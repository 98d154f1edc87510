"""Devices: power over time per device, idle baseline, health."""

from __future__ import annotations

import sqlite3
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from carbonwatch.dashboard.data.common import (
    STALE_AFTER_S,
    Window,
    require_span,
    resolve_window,
    zone_filter,
)
from carbonwatch.dashboard.reader import HOUR_S, Schema, Span, read_snapshot, rollup


# --- devices --------------------------------------------------------------------------------
@dataclass
class DeviceSeries:
    device_id: str
    device_class: str
    t_s: list[int]
    power_w: list[float]
    idle_w: list[float]
    energy_j: float
    idle_energy_j: float
    minutes_seen: int
    estimated_j: float
    last_seen_s: int | None

    @property
    def idle_baseline_w(self) -> float | None:
        return self.idle_energy_j / (self.minutes_seen * 60) if self.minutes_seen else None


@dataclass
class DevicesView:
    window: Window
    devices: list[DeviceSeries]
    store_end_s: int

    def health(self, d: DeviceSeries) -> str:
        """ok, or what is wrong: stale (silent lately) or gaps (minutes missing in the range).
        An estimated source is shown apart: it is how the device is measured, not a fault."""
        problems = []
        if d.last_seen_s is None or d.last_seen_s + 60 < self.store_end_s - STALE_AFTER_S:
            problems.append("stale: no readings lately")
        expected = (self.window.end_s - self.window.start_s) // 60
        if expected and d.minutes_seen < 0.99 * expected:
            problems.append(f"gaps: {d.minutes_seen / expected:.0%} of minutes")
        return "; ".join(problems) or "ok"


def devices(path: Path | None, range_key: str, zone: str | None) -> DevicesView:
    with read_snapshot(path) as (conn, schema):
        span = require_span(conn)
        window = resolve_window(span, range_key)
        where = zone_filter(zone)
        rows = rollup(conn, schema, "energy", window.start_s, window.end_s,
                      ("device_id", "phase"), window.bucket_s, where)
        kinds = rollup(conn, schema, "energy", window.start_s, window.end_s,
                       ("device_id", "device_class", "provenance"), None, where)
        last = _last_seen(conn, schema, span)
    classes = {str(k["device_id"]): str(k["device_class"]) for k in kinds}
    estimated: dict[str, float] = defaultdict(float)
    for k in kinds:
        if k["provenance"] == "estimated":
            estimated[str(k["device_id"])] += float(k["energy_j"])
    acc: dict[str, dict[str, Any]] = {}
    for r in rows:
        d = acc.get(str(r["device_id"]))
        if d is None:
            d = acc[str(r["device_id"])] = {
                "class": classes.get(str(r["device_id"]), ""), "power": defaultdict(float),
                "idle": defaultdict(float), "seen": defaultdict(int), "energy": 0.0,
                "idle_energy": 0.0, "minutes": 0}
        t, energy = int(r["t_s"]), float(r["energy_j"])
        d["power"][t] += energy
        d["energy"] += energy
        if r["phase"] == "idle":
            d["idle"][t] += energy
            d["idle_energy"] += energy
            d["minutes"] += int(r["minutes"])
            d["seen"][t] += int(r["minutes"])
    out = []
    b = window.bucket_s
    for device_id, d in sorted(acc.items(), key=lambda kv: (kv[1]["class"] != "gpu", kv[0])):
        ts = sorted(d["power"])
        # Mean power over the minutes the device reported in the bucket (every reported minute
        # has an idle row): a gap in the readings is not a drop to 0 W.
        spans = [d["seen"][t] * 60 or _bucket_len(t, b, window) for t in ts]
        power = [d["power"][t] / s for t, s in zip(ts, spans, strict=True)]
        idle = [d["idle"].get(t, 0.0) / s for t, s in zip(ts, spans, strict=True)]
        out.append(DeviceSeries(device_id, d["class"], ts, power, idle, d["energy"],
                                d["idle_energy"], d["minutes"], estimated[device_id],
                                last.get(device_id)))
    return DevicesView(window, out, span.end_s)


def _bucket_len(t: int, bucket_s: int, window: Window) -> int:
    return max(60, min(t + bucket_s, window.end_s) - max(t, window.start_s))


def _last_seen(conn: sqlite3.Connection, schema: Schema, span: Span) -> dict[str, int]:
    """Each device's latest minute: its latest hour from the hour rollups, then that hour's
    minutes (the minute table has no device index; an hour of rows is cheap to scan)."""
    if schema.has_rollups:
        hours = conn.execute("SELECT device_id, MAX(hour_s) FROM energy_hour "
                             "WHERE consumer = 'idle' GROUP BY device_id").fetchall()
        out = {}
        for device, hour in hours:
            (last,) = conn.execute(
                "SELECT MAX(minute_s) FROM energy_minute WHERE minute_s >= ? AND minute_s < ? "
                "AND device_id = ?", [hour, hour + HOUR_S, device]).fetchone()
            out[device] = int(last if last is not None else hour)
        return out
    return {d: int(t) for d, t in conn.execute(
        "SELECT device_id, MAX(minute_s) FROM energy_minute WHERE minute_s >= ? "
        "GROUP BY device_id", [span.end_s - 7 * 24 * HOUR_S])}
