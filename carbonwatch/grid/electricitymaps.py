"""Electricity Maps API v3: ``/v3/carbon-intensity/latest|history|forecast?zone=Z``.

Auth is the ``auth-token`` header. Values are gCO2eq/kWh, grid average (lifecycle by default),
one point per hour. Response shapes (v3 docs)::

    latest:   {"zone": "DE", "carbonIntensity": 302, "datetime": "2026-05-21T00:00:00.000Z",
               "updatedAt": "...", "isEstimated": false, ...}
    history:  {"zone": "DE", "history": [<latest-shaped object>, ...]}
    forecast: {"zone": "DE", "forecast": [{"carbonIntensity": 305, "datetime": "..."}, ...],
               "updatedAt": "..."}
"""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp

from carbonwatch.clock import Clock, SystemClock
from carbonwatch.errors import ProviderError
from carbonwatch.grid.http import HttpPolicy, Sleep, fetch_json
from carbonwatch.grid.parse import array, field, intensity_value, spans
from carbonwatch.grid.types import IntensityPoint
from carbonwatch.times import parse_feed_time_s

NAME = "electricitymaps"
DEFAULT_URL = "https://api.electricitymap.org"
_HOUR_S = 3600.0


class ElectricityMaps:
    name = NAME

    def __init__(
        self,
        token: str,
        *,
        base_url: str = DEFAULT_URL,
        policy: HttpPolicy = HttpPolicy(),
        clock: Clock | None = None,
        session: aiohttp.ClientSession | None = None,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        self._token = token
        self.base_url = (base_url or DEFAULT_URL).rstrip("/")
        self.policy = policy
        self.clock = clock or SystemClock()
        self.session = session
        self._sleep = sleep

    async def _get(self, endpoint: str, zone: str) -> Any:
        if not self._token:
            raise ProviderError(f"{NAME}: no API token configured (electricitymaps_token)")
        return await fetch_json(
            NAME,
            f"{self.base_url}/v3/carbon-intensity/{endpoint}",
            session=self.session,
            params={"zone": zone},
            headers={"auth-token": self._token},
            policy=self.policy,
            sleep=self._sleep,
        )

    async def latest(self, zone: str) -> IntensityPoint:
        body = await self._get("latest", zone)
        fetched_s = self.clock.time()
        where = f"{NAME} latest"
        start_s = parse_feed_time_s(field(body, "datetime", where), where)
        value = intensity_value(field(body, "carbonIntensity", where), where)
        return IntensityPoint(
            start_s, start_s + _HOUR_S, value, "actual", "average", NAME, zone, fetched_s
        )

    async def history(self, zone: str) -> list[IntensityPoint]:
        """The last 24 hours of actuals."""
        body = await self._get("history", zone)
        return self._series(array(body, "history", f"{NAME} history"), zone, "actual")

    async def forecast(self, zone: str) -> list[IntensityPoint]:
        body = await self._get("forecast", zone)
        return self._series(array(body, "forecast", f"{NAME} forecast"), zone, "forecast")

    def _series(self, rows: list[Any], zone: str, kind: str) -> list[IntensityPoint]:
        fetched_s = self.clock.time()
        where = f"{NAME} {kind}"
        parsed: list[tuple[float, float]] = []
        for row in rows:
            raw = field(row, "carbonIntensity", where)
            if raw is None:  # the API marks hours it has no estimate for with null: a gap
                continue
            start_s = parse_feed_time_s(field(row, "datetime", where), where)
            parsed.append((start_s, intensity_value(raw, where)))
        if not parsed:
            raise ProviderError(f"{where}: no usable points for zone {zone!r}")
        parsed.sort()
        ends = spans([s for s, _ in parsed], _HOUR_S)
        return [
            IntensityPoint(s, e, v, kind, "average", NAME, zone, fetched_s)
            for (s, v), (_, e) in zip(parsed, ends, strict=True)
        ]
