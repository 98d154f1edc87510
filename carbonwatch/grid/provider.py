"""What every grid provider offers: the current point and a forecast, as IntensityPoints."""

from __future__ import annotations

from typing import Protocol

from carbonwatch.grid.types import IntensityPoint


class Provider(Protocol):
    """An async source of intensity points. Every method raises ProviderError on any failure."""

    name: str

    async def latest(self, zone: str) -> IntensityPoint:
        """The point covering now (an actual where the provider has one)."""
        ...

    async def forecast(self, zone: str) -> list[IntensityPoint]:
        """Points from now into the future, sorted by start, kind "forecast" (or "actual")."""
        ...
