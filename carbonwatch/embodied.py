"""Embodied (manufacturing) carbon, amortised per device-hour into jobs, calls and models.

A device's embodied emissions (kg CO2e, from ``data/embodied.json`` or the ``embodied_kgco2e``
setting, each figure with its source and date) are spread over the hours it is expected to be
used: ``lifetime_years x 365.25 x 24 x utilisation``. Each hour of use then carries
``kgco2e x 1000 / those hours`` grams.

Who used a device when: per minute and device, the consumers that drew energy from it above idle
share the minute's 60 device-seconds by their share of that energy (the 'other' consumer, activity
of no known job, takes its share, charged to nobody). Minutes in which a device only idled are not
charged to anyone: the utilisation factor is what covers them. A job that ran part of a minute is
charged for its share of the whole minute (at most a minute per device at each end of a run).

A device model without a sourced figure has unknown embodied carbon (None, JSON null), never 0. A
total over several devices sums the devices with a figure and lists the ones left out; it is None
only when no device that was used has a figure.
"""

from __future__ import annotations

import fnmatch
import json
import math
import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from typing import Any

from carbonwatch.errors import ConfigError
from carbonwatch.model import DeviceInfo, per_job

HOURS_PER_YEAR = 365.25 * 24
MINUTE_S = 60.0


@dataclass(frozen=True)
class Figure:
    """One device model's embodied emissions and where the number comes from."""

    pattern: str
    kgco2e: float
    source: str
    date: str
    url: str = ""
    scope: str = ""
    kind: str = "table"  # table | setting

    def view(self) -> dict[str, Any]:
        return {"pattern": self.pattern, "kgco2e": self.kgco2e, "source": self.source,
                "date": self.date, "url": self.url, "scope": self.scope, "from": self.kind}


@lru_cache(maxsize=1)
def table() -> tuple[Figure, ...]:
    """The shipped table (``carbonwatch/data/embodied.json``)."""
    text = resources.files("carbonwatch").joinpath("data/embodied.json").read_text("utf-8")
    return tuple(
        Figure(pattern=d["pattern"], kgco2e=float(d["kgco2e"]), source=d["source"],
               date=str(d["date"]), url=d.get("url", ""), scope=d.get("scope", ""))
        for d in json.loads(text)["devices"]
    )


def parse_overrides(text: str) -> tuple[Figure, ...]:
    """``embodied_kgco2e``: ``PATTERN=KG`` pairs, comma-separated (``*H100*=1200,*L4*=95``)."""
    out = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        pattern, sep, value = part.rpartition("=")
        try:
            kg = float(value)
        except ValueError:
            kg = math.nan
        if not sep or not pattern.strip() or not (math.isfinite(kg) and kg >= 0):
            raise ConfigError(
                f"embodied_kgco2e: {part!r} is not PATTERN=KG (a device name pattern and a "
                "number of kg CO2e >= 0), e.g. '*H100*=1200'")
        out.append(Figure(pattern=pattern.strip(), kgco2e=kg, kind="setting", date="",
                          source="the embodied_kgco2e setting"))
    return tuple(out)


@dataclass(frozen=True)
class Amortisation:
    """How a device's embodied emissions are spread over its hours of use."""

    lifetime_years: float = 6.0
    utilisation: float = 0.85
    overrides: tuple[Figure, ...] = ()

    @classmethod
    def from_settings(cls, settings: Any) -> Amortisation:
        return cls(lifetime_years=settings.embodied_lifetime_years,
                   utilisation=settings.embodied_utilisation,
                   overrides=parse_overrides(settings.embodied_kgco2e))

    def figure_for(self, device_name: str) -> Figure | None:
        """The setting's figure for this device model, else the table's, else None (unknown)."""
        name = device_name.lower()
        for fig in (*self.overrides, *table()):
            if fnmatch.fnmatchcase(name, fig.pattern.lower()):
                return fig
        return None

    def g_per_device_s(self, fig: Figure) -> float:
        return fig.kgco2e * 1000.0 / (self.lifetime_years * HOURS_PER_YEAR * 3600.0
                                      * self.utilisation)

    def basis(self) -> dict[str, Any]:
        return {"lifetime_years": self.lifetime_years, "utilisation": self.utilisation,
                "method": "kg CO2e x 1000 / (lifetime_years x 8766 h x utilisation) per device-"
                          "hour of use; a minute's device time split by energy share"}


# --- which device is which model --------------------------------------------------------------
def record_devices(conn: sqlite3.Connection, devices: Iterable[DeviceInfo], seen_s: float) -> None:
    """Keep the device models this node measures (``devices``, migration m007): embodied carbon
    needs the model behind each ``device_id``. Runs in the caller's transaction if one is open."""
    rows = [(d.device_id, d.device_class.value, d.name, d.uuid, seen_s, seen_s) for d in devices]
    conn.executemany(
        "INSERT INTO devices (device_id, device_class, name, uuid, first_seen_s, last_seen_s) "
        "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (device_id, name) DO UPDATE SET "
        "last_seen_s = MAX(last_seen_s, excluded.last_seen_s), uuid = excluded.uuid", rows)


def device_names(conn: sqlite3.Connection) -> dict[str, str]:
    """device_id -> the model name last seen there (empty for a store without the table)."""
    have = conn.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'devices'").fetchone()
    if not have:
        return {}
    out: dict[str, str] = {}
    for device_id, name in conn.execute(
            "SELECT device_id, name FROM devices ORDER BY last_seen_s"):
        out[device_id] = name  # the latest wins
    return out


# --- device time per consumer ------------------------------------------------------------------
def device_seconds(
    conn: sqlite3.Connection, key: str, filters: str, args: list[Any]
) -> dict[tuple[Any, str], float]:
    """(key value, device_id) -> device-seconds of use, for the energy_minute rows ``filters``
    selects. ``key`` and ``filters`` are our own fixed SQL over columns of ``e`` (callers build
    them from column names and ``?`` placeholder lists); every value is bound through ``args``."""
    sql = f"""
        WITH picked AS (SELECT minute_s, device_id, {key} AS k, energy_j FROM energy_minute e
                        WHERE {filters} AND consumer != 'idle' AND energy_j > 0),
             dm AS (SELECT minute_s, device_id, SUM(energy_j) AS active_j FROM energy_minute
                    WHERE consumer != 'idle' AND (minute_s, device_id) IN
                        (SELECT minute_s, device_id FROM picked)
                    GROUP BY minute_s, device_id)
        SELECT p.k, p.device_id, SUM(? * p.energy_j / dm.active_j)
        FROM picked p JOIN dm ON dm.minute_s = p.minute_s AND dm.device_id = p.device_id
        WHERE dm.active_j > 0 GROUP BY 1, 2"""  # noqa: S608 - key/filters are fixed by callers
    # Placeholders bind in text order: the filters' (in ``picked``), then the minute length.
    return {(k, dev): float(s) for k, dev, s in conn.execute(sql, [*args, MINUTE_S])}


def embodied_of(
    seconds: dict[str, float], names: dict[str, str], amort: Amortisation
) -> dict[str, Any]:
    """Embodied gCO2e of device-seconds per device_id, with each figure's provenance."""
    total = 0.0
    known = False
    devices: dict[str, Any] = {}
    unknown: set[str] = set()
    for device_id, device_s in sorted(seconds.items()):
        name = names.get(device_id, "")
        fig = amort.figure_for(name) if name else None
        g = device_s * amort.g_per_device_s(fig) if fig else None
        devices[device_id] = {"name": name or None, "device_hours": device_s / 3600.0,
                              "embodied_co2e_g": g, "figure": fig.view() if fig else None}
        if g is None:
            unknown.add(name or f"{device_id} (model not recorded)")
        else:
            total += g
            known = True
    return {"embodied_co2e_g": total if known else None,
            "device_hours": sum(seconds.values()) / 3600.0,
            "devices_without_figure": sorted(unknown), "by_device": devices}


def embodied_by(
    conn: sqlite3.Connection, amort: Amortisation, key: str, filters: str, args: list[Any]
) -> dict[Any, dict[str, Any]]:
    """Embodied carbon per value of ``key`` over the rows ``filters`` selects."""
    names = device_names(conn)
    grouped: dict[Any, dict[str, float]] = {}
    for (k, dev), s in device_seconds(conn, key, filters, args).items():
        grouped.setdefault(k, {})[dev] = s
    return {k: embodied_of(secs, names, amort) for k, secs in grouped.items()}


def job_embodied(
    conn: sqlite3.Connection, amort: Amortisation, job_ids: list[str]
) -> dict[str, dict[str, Any]]:
    """Embodied carbon per job id (a job that drew no energy above idle is absent)."""
    return per_job(lambda key, where, args: embodied_by(conn, amort, key, where, args), job_ids)
