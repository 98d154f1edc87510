"""The fallback chain: provider -> cached points -> static average, with the route recorded.

A provider failure never stops accounting or planning: its message is kept in ``errors`` for the
caller to show, and the next link answers. Static is the last link and only fails for a location
codecarbon does not know (UnknownZone)."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from dataclasses import dataclass, field

from carbonwatch.clock import Clock, SystemClock
from carbonwatch.errors import ProviderError, StoreError
from carbonwatch.grid.cache import IntensityCache
from carbonwatch.grid.provider import Provider
from carbonwatch.grid.types import IntensityPoint

VIA_PROVIDER, VIA_CACHE, VIA_STATIC = "provider", "cache", "static"


@dataclass(frozen=True)
class Resolved:
    """Points and how they were obtained: via "provider" (fresh), "cache" or "static"."""

    points: list[IntensityPoint]
    via: str
    errors: list[str] = field(default_factory=list)

    @property
    def is_forecast(self) -> bool:
        """True when the points are a time series a planner can use (not one flat average)."""
        return self.via != VIA_STATIC and bool(self.points)


async def resolve(
    provider: Provider | None,
    zone: str,
    *,
    static: Callable[[], IntensityPoint],
    cache: IntensityCache | None = None,
    clock: Clock | None = None,
    forecast: bool = False,
) -> Resolved:
    """Current point (``forecast=False``) or the forecast from now, through the chain."""
    clock = clock or SystemClock()
    errors: list[str] = []
    if provider is not None:
        try:
            points = await provider.forecast(zone) if forecast else [await provider.latest(zone)]
        except ProviderError as exc:
            errors.append(str(exc))
        else:
            if cache is not None:
                try:
                    cache.save(points)
                except (StoreError, OSError, sqlite3.Error) as exc:
                    errors.append(f"cache: could not save points: {exc}")
            return Resolved(points, VIA_PROVIDER, errors)
        if cache is not None:
            now_s = clock.time()
            try:
                if forecast:
                    cached = cache.forecast(zone, provider.name, now_s)
                else:
                    hit = cache.at(zone, provider.name, now_s)
                    cached = [hit] if hit else []
            except (StoreError, sqlite3.Error) as exc:
                errors.append(f"cache: could not read: {exc}")
                cached = []
            if cached:
                return Resolved(cached, VIA_CACHE, errors)
            errors.append(f"cache: no cached {provider.name} points for {zone!r} covering now")
    return Resolved([static()], VIA_STATIC, errors)
