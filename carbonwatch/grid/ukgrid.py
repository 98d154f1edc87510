"""The GB Carbon Intensity API (National Grid ESO), https://api.carbonintensity.org.uk. No key.

Zones: ``GB`` (national) or ``GB-<regionid>`` (regions 1-17, e.g. ``GB-13`` for London).
Half-hour periods, gCO2/kWh, grid average. Shapes::

    /intensity, /intensity/{from}/fw48h:
        {"data": [{"from": "2026-01-20T12:00Z", "to": "2026-01-20T12:30Z",
                   "intensity": {"forecast": 266, "actual": 263, "index": "moderate"}}]}
    /regional/regionid/{id}:
        {"data": [{"regionid": 13, "shortname": "London", "data": [<period>, ...]}]}
    /regional/intensity/{from}/fw48h/regionid/{id}:
        {"data": {"regionid": 13, "shortname": "London", "data": [<period>, ...]}}

Regional periods carry only a forecast; national ones an actual once the half hour is over.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

import aiohttp

from carbonwatch.clock import Clock, SystemClock
from carbonwatch.errors import ProviderError
from carbonwatch.grid.http import HttpPolicy, Sleep, fetch_json
from carbonwatch.grid.parse import array, field, intensity_value
from carbonwatch.grid.types import IntensityPoint
from carbonwatch.times import parse_feed_time_s

NAME = "ukgrid"
DEFAULT_URL = "https://api.carbonintensity.org.uk"


def _region_id(zone: str) -> int | None:
    zone = zone.strip().upper()
    if zone in ("GB", ""):
        return None
    head, _, tail = zone.partition("-")
    if head == "GB" and tail.isdigit() and 1 <= int(tail) <= 17:
        return int(tail)
    raise ProviderError(f"{NAME}: unknown zone {zone!r}; use 'GB' or 'GB-<regionid 1-17>'")


class UkGrid:
    name = NAME
    # The API's national series needs no region: an empty zone means national GB.
    default_zone = "GB"

    def __init__(
        self,
        *,
        base_url: str = DEFAULT_URL,
        policy: HttpPolicy = HttpPolicy(),
        clock: Clock | None = None,
        session: aiohttp.ClientSession | None = None,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        self.base_url = (base_url or DEFAULT_URL).rstrip("/")
        self.policy = policy
        self.clock = clock or SystemClock()
        self.session = session
        self._sleep = sleep

    async def _get(self, path: str) -> Any:
        return await fetch_json(
            NAME,
            f"{self.base_url}{path}",
            session=self.session,
            policy=self.policy,
            sleep=self._sleep,
        )

    async def latest(self, zone: str) -> IntensityPoint:
        region = _region_id(zone)
        path = "/intensity" if region is None else f"/regional/regionid/{region}"
        points = self._periods(await self._get(path), zone, region, "latest")
        now_s = self.clock.time()
        covering = [p for p in points if p.start_s <= now_s < p.end_s]
        return (covering or points)[-1]

    async def forecast(self, zone: str) -> list[IntensityPoint]:
        region = _region_id(zone)
        # The API wants {from} as ISO-8601 to the minute, e.g. 2026-01-20T12:00Z.
        start = datetime.fromtimestamp(self.clock.time(), UTC).strftime("%Y-%m-%dT%H:%MZ")
        if region is None:
            path = f"/intensity/{start}/fw48h"
        else:
            path = f"/regional/intensity/{start}/fw48h/regionid/{region}"
        return self._periods(await self._get(path), zone, region, "forecast")

    def _periods(self, body: Any, zone: str, region: int | None, what: str) -> list[IntensityPoint]:
        fetched_s = self.clock.time()
        where = f"{NAME} {what}"
        data = field(body, "data", where)
        if region is not None:
            # Regional answers wrap the periods in a region object (a list of one, or an object).
            holder = data[0] if isinstance(data, list) and data else data
            data = array(holder, "data", where)
        if not isinstance(data, list):
            raise ProviderError(f"{where}: field 'data' should be a list")
        points = []
        for period in data:
            start_s = parse_feed_time_s(field(period, "from", where), where)
            end_s = parse_feed_time_s(field(period, "to", where), where)
            if end_s <= start_s:
                raise ProviderError(f"{where}: period ends before it starts")
            intensity = field(period, "intensity", where)
            actual = intensity.get("actual") if isinstance(intensity, dict) else None
            if actual is not None:
                value, kind = intensity_value(actual, where), "actual"
            else:
                value = intensity_value(field(intensity, "forecast", where), where)
                kind = "forecast"
            points.append(
                IntensityPoint(start_s, end_s, value, kind, "average", NAME, zone, fetched_s)
            )
        if not points:
            raise ProviderError(f"{where}: no periods for zone {zone!r}")
        return sorted(points, key=lambda p: p.start_s)
