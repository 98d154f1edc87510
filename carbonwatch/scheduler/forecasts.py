"""Forecasts for deferred jobs, and plans made on them.

A job's forecast comes from its provider (settings, or the job's own ``--provider``); when the
provider fails, from the store's cache of earlier fetches; with the static provider or nothing
cached, there is none and the planner's no-forecast policy decides (latest safe start, or now).
Fetched points are added to the cache through the daemon's writer."""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any

from carbonwatch.clock import Clock
from carbonwatch.config import Settings
from carbonwatch.errors import InputError, ProviderError
from carbonwatch.grid.feed import cached_points
from carbonwatch.grid.series import normalise
from carbonwatch.grid.types import IntensityPoint
from carbonwatch.model import J_PER_KWH
from carbonwatch.scheduler.forecast_error import ErrorModel, measure, plan_with_error
from carbonwatch.scheduler.planner import Plan
from carbonwatch.store.intensity import save_points

StoreCall = Callable[[Callable[[Any], Any]], Awaitable[Any]]
CACHE_HORIZON_S = 7 * 86400.0
ERROR_HISTORY_S = 30 * 86400.0  # forecast error is measured over the last 30 days of pairs
_SAME_PLAN_S = 1.0  # a re-plan moving no window by more than this keeps the armed triggers


@dataclass
class Fetched:
    """A forecast as the service obtained it."""

    points: list[IntensityPoint]
    via: str  # provider | cache | static
    provider: str  # the provider's name in the cache ('' for static)
    fetched_at_s: float | None  # the newest fetch among the points
    errors: list[str]
    error: ErrorModel = ErrorModel(())  # the provider's measured forecast error for the zone


async def fetch_forecast(
    settings: Settings,
    provider_name: str,
    url: str,
    zone: str,
    *,
    read: StoreCall,
    write: StoreCall,
    clock: Clock,
) -> Fetched:
    """The zone's forecast through the chain provider -> cache -> none (see the module doc).
    Raises ConfigError for an unknown provider, InputError when a provider has no zone."""
    from carbonwatch.grid.build import make_provider  # aiohttp: only once a job needs it

    job_settings = dataclasses.replace(
        settings, provider=provider_name, provider_url=url, zone=zone
    )
    provider = make_provider(job_settings, clock=clock)
    if provider is None:
        return Fetched([], "static", "", None, [])
    zone = zone or getattr(provider, "default_zone", "")
    if not zone:
        raise InputError(
            f"provider {provider.name!r} needs a zone: pass --zone or set 'zone' on the daemon"
        )
    since_s = clock.time() - ERROR_HISTORY_S
    error = await read(lambda s: measure(s.conn, zone, provider.name, since_s=since_s))
    try:
        points = await provider.forecast(zone)
    except ProviderError as exc:
        now_s = clock.time()
        cached = await read(
            lambda s: cached_points(s, zone, provider.name, now_s, now_s + CACHE_HORIZON_S)
        )
        newest = max((p.fetched_at_s or 0.0 for p in cached), default=None)
        via = "cache" if cached else "static"
        return Fetched(cached, via, provider.name, newest, [str(exc)], error)
    await write(lambda s: save_points(s.conn, points))
    newest = max((p.fetched_at_s or 0.0 for p in points), default=None)
    return Fetched(points, "provider", provider.name, newest, [], error)


def plan_deferred(
    points: Iterable[IntensityPoint],
    *,
    duration_s: float,
    release_s: float,
    deadline_s: float,
    interruptible: bool,
    no_forecast_policy: str,
    error: ErrorModel | None = None,
    sigmas: float = 1.0,
) -> Plan:
    """The planner on fetched points: overlapping fetches resolved first (actual beats forecast,
    newer beats older); static points are a flat average, not a forecast, and are dropped.
    Planned on expected intensity with the provider's measured ``error``, deferred only when the
    saving beats ``sigmas`` times its band (see :mod:`carbonwatch.scheduler.forecast_error`)."""
    slots = normalise(p for p in points if p.kind != "static")
    planned = plan_with_error(
        slots,
        error or ErrorModel(()),
        now_s=release_s,
        duration_s=duration_s,
        release_s=release_s,
        deadline_s=deadline_s,
        interruptible=interruptible,
        no_forecast_policy=no_forecast_policy,
        sigmas=sigmas,
    )
    return dataclasses.replace(
        planned.plan, saving_band_g_per_kwh=planned.band_g_per_kwh, note=planned.note
    )


def plan_fields(
    plan: Plan, fetched: Fetched, now_s: float, energy_j: float | None, pue: float
) -> dict[str, Any]:
    """The ``deferred_jobs`` columns a plan sets. Expected gCO2e needs an energy estimate (the
    name's mean power times the duration) and a forecast mean; either missing leaves it NULL."""
    kwh_pue = None if energy_j is None else energy_j / J_PER_KWH * pue
    mean, base = plan.mean_intensity_g_per_kwh, plan.baseline_intensity_g_per_kwh
    fields: dict[str, Any] = {
        "plan": [[s, e] for s, e in plan.windows],
        "plan_basis": plan.basis,
        # which intensity the plan minimised: average, or marginal (WattTime's MOER)
        "plan_signal": (fetched.points[0].signal if plan.basis == "forecast" and fetched.points
                        else None),
        "forecast_via": fetched.via,
        "plan_intensity_g_per_kwh": mean,
        "baseline_intensity_g_per_kwh": base,
        "expected_co2e_g": None if kwh_pue is None or mean is None else kwh_pue * mean,
        "expected_baseline_co2e_g": None if kwh_pue is None or base is None else kwh_pue * base,
        "planned_at_s": now_s,
        "forecast_fetched_at_s": fetched.fetched_at_s,
        "saving_band_g_per_kwh": plan.saving_band_g_per_kwh,
    }
    if plan.reason:
        fields["message"] = f"no forecast covers the job ({plan.reason})"
    elif plan.note:
        fields["message"] = plan.note
    return fields


def same_windows(a: list[list[float]], b: list[list[float]]) -> bool:
    return len(a) == len(b) and all(
        abs(x - y) <= _SAME_PLAN_S
        for wa, wb in zip(a, b, strict=True)
        for x, y in zip(wa, wb, strict=True)
    )
