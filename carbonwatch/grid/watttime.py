"""WattTime API v3: marginal emissions (MOER).

``GET /login`` with HTTP basic auth answers ``{"token": "..."}`` (valid 30 minutes), then
``GET /v3/forecast?region=R&signal_type=co2_moer`` with ``Authorization: Bearer`` answers::

    {"data": [{"point_time": "2026-04-01T00:00:00+00:00", "value": 812.5}, ...],
     "meta": {"region": "CAISO_NORTH", "signal_type": "co2_moer", "units": "lbs_co2_per_mwh",
              "data_point_period_seconds": 300, "generated_at": "..."}}

MOER is a marginal rate in lbs CO2/MWh: converted to g/kWh (x 0.453592) and labelled
signal="marginal", so nobody adds it to average-intensity figures unawares. With
``signal_type="co2_aoer"`` (provider ``watttime-aoer``) the same API gives the average operating
emissions rate, labelled "average": one provider then gives both signals.
``/v3/signal-index`` answers a 0-100 percentile, not an intensity: it is offered as
``signal_index_pct`` and never turned into a point. v3 has no free "current MOER" endpoint, so
``latest`` is the forecast's point covering now.
"""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp

from carbonwatch.clock import Clock, SystemClock
from carbonwatch.errors import ProviderError
from carbonwatch.grid.http import CredentialsRejected, HttpPolicy, Sleep, basic_auth, fetch_json
from carbonwatch.grid.parse import (
    LB_PER_MWH_TO_G_PER_KWH,
    array,
    field,
    intensity_value,
    positive_number,
)
from carbonwatch.grid.types import IntensityPoint
from carbonwatch.times import parse_feed_time_s

NAME = "watttime"
DEFAULT_URL = "https://api.watttime.org"
_TOKEN_LIFETIME_S = 25 * 60.0  # tokens last 30 min; renew early rather than fail mid-call
_UNITS_SCALE = {"lbs_co2_per_mwh": LB_PER_MWH_TO_G_PER_KWH, "g_co2_per_kwh": 1.0}


class WattTime:
    name = NAME

    def __init__(
        self,
        username: str,
        password: str,
        *,
        base_url: str = DEFAULT_URL,
        signal_type: str = "co2_moer",
        policy: HttpPolicy = HttpPolicy(),
        clock: Clock | None = None,
        session: aiohttp.ClientSession | None = None,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        self._username = username
        self._password = password
        self.base_url = (base_url or DEFAULT_URL).rstrip("/")
        self.signal_type = signal_type
        # co2_aoer is WattTime's average operating emissions rate: an average signal, kept under
        # its own name so its points never mix with the MOER's in the cache.
        self.signal = "average" if signal_type == "co2_aoer" else "marginal"
        if signal_type == "co2_aoer":
            self.name = f"{NAME}-aoer"
        self.policy = policy
        self.clock = clock or SystemClock()
        self.session = session
        self._sleep = sleep
        self._token: str | None = None
        self._token_expires_s = 0.0

    async def _login(self) -> str:
        if not (self._username and self._password):
            raise ProviderError(
                f"{NAME}: no credentials configured (watttime_username / watttime_password)"
            )
        body = await fetch_json(
            NAME,
            f"{self.base_url}/login",
            session=self.session,
            headers=basic_auth(self._username, self._password),
            policy=self.policy,
            sleep=self._sleep,
        )
        token = field(body, "token", f"{NAME} login")
        if not isinstance(token, str) or not token:
            raise ProviderError(f"{NAME} login: no token in the answer")
        self._token = token
        self._token_expires_s = self.clock.time() + _TOKEN_LIFETIME_S
        return token

    async def _get(self, path: str, region: str) -> Any:
        fresh = self._token is None or self.clock.time() >= self._token_expires_s
        token = await self._login() if fresh else self._token
        params = {"region": region, "signal_type": self.signal_type}
        try:
            return await self._authorised(path, params, token)
        except CredentialsRejected:
            if fresh:
                raise
            # A cached token can be revoked early: log in again once, then give up.
            return await self._authorised(path, params, await self._login())

    async def _authorised(self, path: str, params: dict[str, str], token: str | None) -> Any:
        return await fetch_json(
            NAME,
            f"{self.base_url}{path}",
            session=self.session,
            params=params,
            headers={"Authorization": f"Bearer {token}"},
            policy=self.policy,
            sleep=self._sleep,
        )

    async def forecast(self, zone: str) -> list[IntensityPoint]:
        body = await self._get("/v3/forecast", zone)
        fetched_s = self.clock.time()
        where = f"{NAME} forecast"
        meta = field(body, "meta", where)
        if not isinstance(meta, dict):
            raise ProviderError(f"{where}: 'meta' should be an object")
        units = meta.get("units", "lbs_co2_per_mwh")
        if units not in _UNITS_SCALE:
            raise ProviderError(f"{where}: unexpected units {units!r}")
        scale = _UNITS_SCALE[units]
        period_s = positive_number(
            meta.get("data_point_period_seconds", 300), "data_point_period_seconds", where
        )
        points = []
        for row in array(body, "data", where):
            start_s = parse_feed_time_s(field(row, "point_time", where), where)
            value = intensity_value(field(row, "value", where), where, scale=scale)
            points.append(
                IntensityPoint(
                    start_s,
                    start_s + float(period_s),
                    value,
                    "forecast",
                    self.signal,
                    self.name,
                    zone,
                    fetched_s,
                )
            )
        if not points:
            raise ProviderError(f"{where}: no points for region {zone!r}")
        return sorted(points, key=lambda p: p.start_s)

    async def latest(self, zone: str) -> IntensityPoint:
        points = await self.forecast(zone)
        now_s = self.clock.time()
        for point in points:
            if point.start_s <= now_s < point.end_s:
                return point
        return points[0]  # the forecast starts at the current period; clocks may differ a little

    async def signal_index_pct(self, zone: str) -> float:
        """The current MOER percentile (0 = cleanest of the recent past, 100 = dirtiest)."""
        body = await self._get("/v3/signal-index", zone)
        where = f"{NAME} signal-index"
        rows = array(body, "data", where)
        if not rows:
            raise ProviderError(f"{where}: empty answer")
        value = intensity_value(field(rows[0], "value", where), where)
        if value > 100:
            raise ProviderError(f"{where}: percentile out of range ({value})")
        return value
