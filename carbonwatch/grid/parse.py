"""Validation shared by the providers: times and intensities from untrusted JSON.

A provider that answers NaN, a negative intensity, a string or a missing field raises
ProviderError here, so no unusable point can reach accounting or the planner."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from carbonwatch.errors import ProviderError
from carbonwatch.grid import steps

LB_PER_MWH_TO_G_PER_KWH = 0.453592  # 1 lb = 453.592 g, 1 MWh = 1000 kWh


def intensity_value(raw: Any, where: str, *, scale: float = 1.0) -> float:
    """A finite, non-negative intensity in g/kWh (``scale`` converts from the provider's unit)."""
    # bool is an int subclass; a provider answering true is broken, not "1 g/kWh".
    if isinstance(raw, bool) or not isinstance(raw, int | float):
        raise ProviderError(f"{where}: intensity must be a number, got {raw!r}")
    value = float(raw) * scale
    if not math.isfinite(value):
        raise ProviderError(f"{where}: intensity is not finite ({raw!r})")
    if value < 0:
        raise ProviderError(f"{where}: intensity is negative ({raw!r})")
    return value


def positive_number(raw: Any, name: str, where: str) -> float:
    """A JSON number above zero (a period or a duration), else ProviderError naming ``name``."""
    if isinstance(raw, bool) or not isinstance(raw, int | float) or raw <= 0:
        raise ProviderError(f"{where}: bad {name} {raw!r}")
    return float(raw)


def field(obj: Any, key: str, where: str) -> Any:
    """``obj[key]`` where obj must be a JSON object holding key."""
    if not isinstance(obj, Mapping) or key not in obj:
        raise ProviderError(f"{where}: response lacks the field {key!r}")
    return obj[key]


def array(obj: Any, key: str, where: str) -> list[Any]:
    value = field(obj, key, where)
    if not isinstance(value, list):
        raise ProviderError(f"{where}: field {key!r} should be a list")
    return value


def spans(starts_s: list[float], default_step_s: float) -> list[tuple[float, float]]:
    """Give each point start an end: it holds until the next point, but no longer than the
    series' local resolution, so a missing point stays a gap and a change of resolution is none
    (see :mod:`carbonwatch.grid.steps`)."""
    return steps.spans(starts_s, default_step_s)
