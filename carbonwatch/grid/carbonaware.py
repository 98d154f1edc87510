"""The Green Software Foundation's Carbon Aware SDK WebAPI (self-hosted; no public default).

``GET /emissions/forecasts/current?location=L`` answers a list with one forecast per location::

    [{"generatedAt": "2026-06-01T14:40:00Z", "location": "eastus",
      "dataStartAt": "...", "dataEndAt": "...", "windowSize": 30,
      "optimalDataPoints": [{"location": "eastus", "timestamp": "...", "duration": 30,
                             "value": 359.2}],
      "forecastData": [{"location": "eastus", "timestamp": "2026-06-01T14:45:00Z",
                        "duration": 5, "value": 359.23}, ...]}]

``duration`` is in minutes and ``value`` in gCO2/kWh. The signal depends on the SDK's configured
data source: WattTime (marginal) is its usual forecast source, so "marginal" is the default label;
pass ``signal="average"`` when the SDK sits on Electricity Maps. ``optimalDataPoints`` is the
SDK's own window choice; carbonwatch plans on ``forecastData`` itself.
"""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp

from carbonwatch.clock import Clock, SystemClock
from carbonwatch.errors import ProviderError
from carbonwatch.grid.http import HttpPolicy, Sleep, fetch_json
from carbonwatch.grid.parse import array, field, intensity_value, positive_number
from carbonwatch.grid.types import IntensityPoint
from carbonwatch.times import parse_feed_time_s

NAME = "carbonaware"
DEFAULT_URL = "http://127.0.0.1:8080"


class CarbonAwareSdk:
    name = NAME

    def __init__(
        self,
        *,
        base_url: str = DEFAULT_URL,
        signal: str = "marginal",
        policy: HttpPolicy = HttpPolicy(),
        clock: Clock | None = None,
        session: aiohttp.ClientSession | None = None,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        self.base_url = (base_url or DEFAULT_URL).rstrip("/")
        self.signal = signal
        self.policy = policy
        self.clock = clock or SystemClock()
        self.session = session
        self._sleep = sleep

    async def forecast(self, zone: str) -> list[IntensityPoint]:
        body: Any = await fetch_json(
            NAME,
            f"{self.base_url}/emissions/forecasts/current",
            session=self.session,
            params={"location": zone},
            policy=self.policy,
            sleep=self._sleep,
        )
        fetched_s = self.clock.time()
        where = f"{NAME} forecast"
        if not isinstance(body, list) or not body:
            raise ProviderError(f"{where}: expected a non-empty list of forecasts")
        points = []
        for row in array(body[0], "forecastData", where):
            start_s = parse_feed_time_s(field(row, "timestamp", where), where)
            minutes = positive_number(field(row, "duration", where), "duration", where)
            value = intensity_value(field(row, "value", where), where)
            points.append(
                IntensityPoint(
                    start_s,
                    start_s + 60.0 * minutes,
                    value,
                    "forecast",
                    self.signal,
                    NAME,
                    zone,
                    fetched_s,
                )
            )
        if not points:
            raise ProviderError(f"{where}: no forecastData for location {zone!r}")
        return sorted(points, key=lambda p: p.start_s)

    async def latest(self, zone: str) -> IntensityPoint:
        """The forecast point covering now (the WebAPI's current forecast starts now)."""
        points = await self.forecast(zone)
        now_s = self.clock.time()
        covering = [p for p in points if p.start_s <= now_s < p.end_s]
        return (covering or points)[0]
