"""Pricing (pure): energy -> gCO2e and money, one interval at a time.

carbon = energy × PUE × intensity(t)   (the intensity of the interval's own zone and time)
cost   = energy × PUE × price          (+ device-hours × rate, added per job by the caller)

Both are applied per interval, so a time series of intensity (or of prices) replaces a constant
without touching any caller."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from carbonwatch.model import J_PER_KWH


def co2e_g(energy_j: float, intensity_g_per_kwh: float, pue: float = 1.0) -> float:
    if not math.isfinite(intensity_g_per_kwh) or intensity_g_per_kwh < 0:
        raise ValueError(f"carbon intensity must be finite and >= 0, got {intensity_g_per_kwh!r}")
    return energy_j / J_PER_KWH * pue * intensity_g_per_kwh


@dataclass(frozen=True)
class Pricing:
    """Energy price and device-hour rates. ``price_per_kwh=None``: cost is unknown, not zero."""

    price_per_kwh: float | None = None
    currency: str = "USD"
    pue: float = 1.0
    device_hour_rates: dict[str, float] = field(default_factory=dict)  # device class -> rate/h

    @property
    def known(self) -> bool:
        return self.price_per_kwh is not None

    def energy_cost(self, energy_j: float) -> float:
        """Cost of the energy (facility energy: PUE included); 0 when the price is unknown, so
        callers can accumulate; report ``known`` alongside."""
        if self.price_per_kwh is None:
            return 0.0
        return energy_j / J_PER_KWH * self.pue * self.price_per_kwh

    def device_hours_cost(self, device_hours: dict[str, float]) -> float:
        return math.fsum(
            hours * self.device_hour_rates.get(cls, 0.0) for cls, hours in device_hours.items()
        )

    @classmethod
    def from_settings(cls, settings) -> Pricing:  # noqa: ANN001 - Settings, avoid import cycle
        return cls(
            price_per_kwh=settings.energy_price_per_kwh,
            currency=settings.currency,
            pue=settings.pue,
            device_hour_rates={"gpu": settings.gpu_hour_rate, "cpu": settings.cpu_hour_rate},
        )
