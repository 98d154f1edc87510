"""Build the configured provider from Settings. Names, base URLs and keys all come from there."""

from __future__ import annotations

import aiohttp

from carbonwatch.clock import Clock, SystemClock
from carbonwatch.config import Settings
from carbonwatch.errors import ConfigError
from carbonwatch.grid.carbonaware import CarbonAwareSdk
from carbonwatch.grid.csvseries import CsvProvider
from carbonwatch.grid.electricitymaps import ElectricityMaps
from carbonwatch.grid.http import HttpPolicy
from carbonwatch.grid.provider import Provider
from carbonwatch.grid.ukgrid import UkGrid
from carbonwatch.grid.watttime import WattTime

PROVIDER_NAMES = (
    "static", "electricitymaps", "watttime", "watttime-aoer", "ukgrid", "carbonaware", "csv")
_ALIASES = {
    "electricity_maps": "electricitymaps",
    "carbonintensity": "ukgrid",
    "uk": "ukgrid",
    "carbon_aware_sdk": "carbonaware",
    "gsf": "carbonaware",
}


def make_provider(
    settings: Settings,
    *,
    clock: Clock | None = None,
    session: aiohttp.ClientSession | None = None,
    policy: HttpPolicy = HttpPolicy(),
) -> Provider | None:
    """The provider named by ``settings.provider``; None for "static" (no time series)."""
    name = settings.provider.strip().lower()
    name = _ALIASES.get(name, name)
    clock = clock or SystemClock()
    url = settings.provider_url
    common = {"policy": policy, "clock": clock, "session": session}
    if name in ("", "static"):
        return None
    if name == "electricitymaps":
        return ElectricityMaps(settings.electricitymaps_token, base_url=url, **common)
    if name == "watttime":
        return WattTime(
            settings.watttime_username, settings.watttime_password, base_url=url, **common
        )
    if name == "watttime-aoer":  # WattTime's average signal (AOER), beside its marginal MOER
        return WattTime(settings.watttime_username, settings.watttime_password, base_url=url,
                        signal_type="co2_aoer", **common)
    if name == "ukgrid":
        return UkGrid(base_url=url, **common)
    if name == "carbonaware":
        return CarbonAwareSdk(base_url=url, **common)
    if name == "csv":
        return CsvProvider(url, policy=policy, clock=clock, session=session, tz=settings.csv_tz)
    raise ConfigError(
        f"unknown provider {settings.provider!r}; choose one of {', '.join(PROVIDER_NAMES)}"
    )
