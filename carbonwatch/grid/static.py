"""Static grid intensity from codecarbon's bundled data (its data, not its tracker).

- Countries: ``data/private_infra/global_energy_mix.json`` (Our World in Data energy mix; yearly
  average gCO2e/kWh per ISO 3166 alpha-3 code). Alpha-2 codes are mapped with pycountry, which
  codecarbon already depends on.
- Cloud regions: ``data/cloud/impact.csv`` (provider, region, impact gCO2e/kWh).
- Nothing configured: codecarbon's world average (``carbon_intensity_per_source.json``), and the
  provenance says so.

These are yearly averages: accounting uses them only when no time series is available."""

from __future__ import annotations

import csv
import json
import math
from functools import cache
from pathlib import Path
from typing import Any

from carbonwatch.codecarbon_data import codecarbon_data_path
from carbonwatch.errors import UnknownZone
from carbonwatch.grid.types import IntensityPoint

PROVIDER = "codecarbon-static"
_FOREVER_S = (0.0, math.inf)


def _data_file(*parts: str) -> Path:
    """A file of codecarbon's bundled data, found without importing codecarbon (its package
    imports the tracker: slow, and it probes hardware)."""
    path = codecarbon_data_path("/".join(parts))
    if path is None:
        raise UnknownZone(f"codecarbon's data file {'/'.join(parts)} is not installed")
    return path


@cache
def _energy_mix() -> dict[str, dict[str, Any]]:
    return json.loads(_data_file("private_infra", "global_energy_mix.json").read_text())


@cache
def _cloud_impact() -> dict[tuple[str, str], float]:
    text = _data_file("cloud", "impact.csv").read_text(encoding="utf-8-sig")
    return {
        (row["provider"].lower(), row["region"].lower()): float(row["impact"])
        for row in csv.DictReader(text.splitlines())
        if row.get("impact")
    }


@cache
def world_average_g_per_kwh() -> float:
    data = json.loads(_data_file("private_infra", "carbon_intensity_per_source.json").read_text())
    return float(data["world_average"])


def _alpha3(code: str) -> str:
    code = code.strip().upper()
    if len(code) == 2:
        import pycountry  # codecarbon's own dependency; imported lazily, it is slow to load

        country = pycountry.countries.get(alpha_2=code)
        if country is None:
            raise UnknownZone(f"unknown country code {code!r} (expected ISO 3166 alpha-2 or -3)")
        return country.alpha_3
    return code


def _point(value: float, zone: str, detail: str) -> IntensityPoint:
    return IntensityPoint(
        start_s=_FOREVER_S[0],
        end_s=_FOREVER_S[1],
        intensity_g_per_kwh=value,
        kind="static",
        signal="average",
        provider=f"{PROVIDER}:{detail}",
        zone=zone,
        fetched_at_s=None,
    )


def country_intensity(code: str) -> IntensityPoint:
    """Yearly average intensity of a country by ISO 3166 alpha-3 (``FRA``) or alpha-2 (``FR``)."""
    iso3 = _alpha3(code)
    entry = _energy_mix().get(iso3)
    if entry is None or entry.get("carbon_intensity") is None:
        raise UnknownZone(
            f"no carbon intensity known for country {code!r}; use an ISO 3166 code such as "
            f"'USA', 'FRA' or 'DE'"
        )
    year = entry.get("year", "")
    return _point(float(entry["carbon_intensity"]), iso3, f"energy-mix-{year}")


def cloud_region_intensity(provider: str, region: str) -> IntensityPoint:
    value = _cloud_impact().get((provider.lower(), region.lower()))
    if value is None:
        known = sorted({p for p, _ in _cloud_impact()})
        raise UnknownZone(
            f"no carbon intensity known for cloud region {provider}/{region} "
            f"(codecarbon's table covers providers: {', '.join(known)})"
        )
    return _point(value, f"{provider.lower()}:{region.lower()}", "cloud-impact")


def world_average() -> IntensityPoint:
    return _point(world_average_g_per_kwh(), "WORLD", "world-average")


def resolve_static(
    country: str = "", cloud_provider: str = "", cloud_region: str = ""
) -> IntensityPoint:
    """The static point for the configured location, most specific first."""
    if cloud_provider or cloud_region:
        return cloud_region_intensity(cloud_provider, cloud_region)
    if country:
        return country_intensity(country)
    return world_average()


class StaticSource:
    """An IntensitySource that answers the same yearly average at every time."""

    def __init__(self, point: IntensityPoint) -> None:
        self.point = point

    def intensity_at(self, t_s: float) -> IntensityPoint:
        return self.point
