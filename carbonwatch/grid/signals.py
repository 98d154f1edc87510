"""Average and marginal intensity side by side.

Average intensity (every provider but WattTime) answers "how much did we emit" (inventory, Scope
2); marginal intensity (WattTime's MOER) answers "what did running it then change". ``co2e_g`` is
costed with the accounting provider's series, as the ledger always did; ``co2e_g_marginal`` is
read beside it from the marginal points kept in ``intensity_points`` (``signal = 'marginal'``),
which the ``marginal_provider`` setting fetches on its own thread next to the average provider
(or which the accounting provider stored itself, when that provider is WattTime).

A figure is known only when marginal points cover every minute with energy; otherwise it is None
and ``marginal_coverage`` says which share of the energy was covered. Each minute is costed with
the time-weighted mean of the points over that minute (an actual beats a forecast, a newer fetch
an older one) and with the PUE the row was costed with (its co2e_g over energy x intensity).
"""

from __future__ import annotations

import dataclasses
import sqlite3
from typing import Any

from carbonwatch.config import Settings
from carbonwatch.errors import ConfigError
from carbonwatch.grid.series import mean_over, normalise
from carbonwatch.grid.types import IntensityPoint, IntensitySource
from carbonwatch.model import J_PER_KWH, per_job

MARGINAL_PROVIDERS = ("watttime",)
_MINUTE_S = 60


def signal_of(provider: str) -> str:
    """The signal a provider's points carry: 'marginal' for WattTime's MOER, else 'average'."""
    return "marginal" if provider.strip().lower() in MARGINAL_PROVIDERS else "average"


class WithMarginal:
    """The accounting source, with the marginal provider's recorder kept alive beside it."""

    def __init__(self, source: IntensitySource, recorder: Any) -> None:
        self.source = source
        self.recorder = recorder

    def intensity_at(self, t_s: float) -> IntensityPoint:
        return self.source.intensity_at(t_s)

    def __getattr__(self, name: str) -> Any:  # errors, covers_now of the average source
        return getattr(self.source, name)

    def close(self) -> None:
        for part in (self.source, self.recorder):
            close = getattr(part, "close", None)
            if close is not None:
                close()


def marginal_recorder(settings: Settings, *, clock: Any = None, background: bool = True) -> Any:
    """An AccountingSource over ``marginal_provider`` that fetches and keeps its points in the
    store (never used to cost energy); None when no marginal provider is set."""
    name = settings.marginal_provider.strip().lower()
    if not name:
        return None
    if name not in MARGINAL_PROVIDERS:
        raise ConfigError(f"marginal_provider {settings.marginal_provider!r} gives no marginal "
                          f"signal; choose one of {', '.join(MARGINAL_PROVIDERS)}")
    if not settings.zone:
        raise ConfigError("marginal_provider needs a zone: set 'zone' (CARBONWATCH_ZONE)")
    from carbonwatch.grid.build import make_provider
    from carbonwatch.grid.feed import AccountingSource, static_point
    from carbonwatch.grid.static import StaticSource

    own = dataclasses.replace(settings, provider=name, provider_url=settings.marginal_provider_url)
    provider = make_provider(own, clock=clock)
    source = AccountingSource(provider, settings.zone, StaticSource(static_point(settings)),
                              cache_path=settings.db_path, clock=clock,
                              refresh_every_s=settings.intensity_refresh_s)
    return source.start() if background else source


def _points(conn: sqlite3.Connection, start_s: float, end_s: float) -> dict[str, list]:
    rows = conn.execute(
        "SELECT zone, provider, kind, start_s, end_s, intensity_g_per_kwh, fetched_at_s "
        "FROM intensity_points WHERE signal = 'marginal' AND end_s > ? AND start_s < ?",
        [start_s, end_s]).fetchall()
    by_zone: dict[str, list[IntensityPoint]] = {}
    for zone, provider, kind, s, e, value, fetched in rows:
        by_zone.setdefault(zone, []).append(IntensityPoint(
            start_s=s, end_s=e, intensity_g_per_kwh=value, kind=kind, signal="marginal",
            provider=provider, zone=zone, fetched_at_s=fetched))
    return {z: normalise(p) for z, p in by_zone.items()}


def marginal_by(
    conn: sqlite3.Connection, settings: Settings, key: str, filters: str, args: list[Any]
) -> dict[Any, dict[str, Any]]:
    """co2e_g_marginal per value of ``key`` over the energy_minute rows ``filters`` selects (our
    own fixed SQL over columns of ``e`` and ``?`` placeholders; values are bound via ``args``),
    idle excluded as it is from co2e_g's job figures."""
    columns = {r[1] for r in conn.execute("PRAGMA table_info(energy_minute)")}
    zone = "e.zone" if "zone" in columns else "''"
    lo, hi = conn.execute(
        f"SELECT MIN(e.minute_s), MAX(e.minute_s) FROM energy_minute e WHERE {filters}",  # noqa: S608
        args).fetchone()
    if lo is None:
        return {}
    if not _points(conn, lo, hi + _MINUTE_S):  # no marginal signal at all: skip the row scan
        sums = conn.execute(
            f"SELECT {key}, SUM(e.energy_j) FROM energy_minute e "  # noqa: S608
            f"WHERE {filters} AND e.consumer != 'idle' GROUP BY 1", args).fetchall()
        return {k: {"co2e_g_marginal": None, "marginal_coverage": 0.0 if j > 0 else None,
                    "marginal_zones": []} for k, j in sums}
    rows = conn.execute(
        f"SELECT {key}, e.minute_s, {zone}, e.energy_j, e.co2e_g, e.intensity_g_per_kwh "  # noqa: S608
        f"FROM energy_minute e WHERE {filters} AND e.consumer != 'idle' ORDER BY e.minute_s",
        args).fetchall()
    if not rows:
        return {}
    points = _points(conn, rows[0][1], rows[-1][1] + _MINUTE_S)
    only = next(iter(points.values())) if len(points) == 1 else None
    out: dict[Any, dict[str, Any]] = {}
    for k, minute_s, row_zone, energy_j, co2e_g, intensity in rows:
        acc = out.setdefault(k, {"g": 0.0, "covered_j": 0.0, "energy_j": 0.0, "zones": set()})
        acc["energy_j"] += energy_j
        z = row_zone or settings.zone
        series = points.get(z) if z else only
        mean = mean_over(series, minute_s, minute_s + _MINUTE_S) if series else None
        if mean is None:
            continue
        pue = (co2e_g * J_PER_KWH / (energy_j * intensity) if energy_j > 0 and intensity > 0
               else settings.pue)
        acc["g"] += energy_j / J_PER_KWH * pue * mean
        acc["covered_j"] += energy_j
        acc["zones"].add(series[0].zone)
    result = {}
    for k, acc in out.items():
        coverage = acc["covered_j"] / acc["energy_j"] if acc["energy_j"] > 0 else None
        known = acc["energy_j"] > 0 and acc["covered_j"] >= acc["energy_j"] * (1 - 1e-9)
        result[k] = {"co2e_g_marginal": acc["g"] if known else None,
                     "marginal_coverage": coverage, "marginal_zones": sorted(acc["zones"])}
    return result


def job_marginal(
    conn: sqlite3.Connection, settings: Settings, job_ids: list[str]
) -> dict[str, dict[str, Any]]:
    """Marginal-signal CO2e per job id (a job that drew no energy is absent)."""
    return per_job(lambda key, where, args: marginal_by(conn, settings, key, where, args),
                   job_ids)
