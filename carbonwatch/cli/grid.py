"""``carbonwatch intensity``, ``plan`` and ``estimate``: thin shells over carbonwatch.grid and
carbonwatch.scheduler.planner."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click

from carbonwatch.cli.common import echo_json, handle_errors, load, settings_options
from carbonwatch.clock import Clock, SystemClock
from carbonwatch.config import Settings
from carbonwatch.daemon.validation import MAX_UNIX_S
from carbonwatch.errors import InputError, StoreError
from carbonwatch.grid import static
from carbonwatch.grid.build import make_provider
from carbonwatch.grid.cache import IntensityCache
from carbonwatch.grid.chain import Resolved, resolve
from carbonwatch.grid.csvseries import read_intensity_csv
from carbonwatch.grid.feed import static_point
from carbonwatch.grid.preflight import estimate_gpu_job
from carbonwatch.grid.series import normalise
from carbonwatch.grid.types import IntensityPoint
from carbonwatch.scheduler.forecast_error import ErrorModel, measure, plan_with_error
from carbonwatch.scheduler.forecasts import ERROR_HISTORY_S
from carbonwatch.scheduler.planner import Plan, plan_job
from carbonwatch.times import (
    MAX_AHEAD_S,
    check_ahead,
    iso_utc,
    iso_utc_or_none,
    parse_duration_s,
    parse_user_time_s,
)

_DAY_S = 86400.0


def _provider_options(fn: Any) -> Any:
    fn = click.option(
        "--provider-url", default=None, help="Base URL of the provider (or the CSV file/URL)."
    )(fn)
    fn = click.option(
        "--provider",
        default=None,
        help="static | electricitymaps | watttime | ukgrid | carbonaware | csv.",
    )(fn)
    return fn


@contextlib.contextmanager
def _cache(settings: Settings) -> Iterator[IntensityCache | None]:
    """The store's intensity cache; None (and a warning) if the store cannot be opened, since a
    missing cache only loses the middle link of the fallback chain."""
    from carbonwatch.store import open_store

    try:
        store = open_store(settings.db_path)
    except StoreError as exc:
        click.echo(f"carbonwatch: warning: no intensity cache: {exc}", err=True)
        yield None
        return
    try:
        yield IntensityCache(store.db)
    finally:
        store.close()


def _resolve(settings: Settings, zone: str, *, forecast: bool, clock: Clock) -> Resolved:
    provider = make_provider(settings, clock=clock)
    if provider is not None:
        zone = zone or getattr(provider, "default_zone", "")
    if provider is not None and not zone:
        raise InputError(f"provider {provider.name!r} needs a zone: pass --zone or set 'zone'")
    with _cache(settings) as cache:
        resolved = asyncio.run(
            resolve(
                provider,
                zone,
                static=lambda: static_point(settings, zone),
                cache=cache,
                clock=clock,
                forecast=forecast,
            )
        )
    for error in resolved.errors:
        click.echo(f"carbonwatch: warning: {error}", err=True)
    if resolved.via != "provider" and provider is not None:
        click.echo(f"carbonwatch: warning: using {resolved.via} intensity instead", err=True)
    return resolved


def point_json(point: IntensityPoint, via: str, now_s: float) -> dict[str, Any]:
    # A static point holds for all time; show it as starting now rather than at 1970.
    start_s = now_s if point.kind == "static" else point.start_s
    return {
        "start": iso_utc(start_s),
        "end": iso_utc_or_none(point.end_s, exact=False),
        "intensity_g_per_kwh": point.intensity_g_per_kwh,
        "provenance": {
            "kind": point.kind,
            "signal": point.signal,
            "provider": point.provider,
            "zone": point.zone,
            "fetched_at": None if point.fetched_at_s is None else iso_utc(point.fetched_at_s),
            "via": via,
        },
    }


@click.command("intensity")
@click.option("--zone", default=None, help="Grid zone (e.g. DE, GB, GB-13, CAISO_NORTH).")
@_provider_options
@click.option("--forecast", is_flag=True, help="Show the forecast instead of the current value.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@settings_options
@handle_errors
def intensity_cmd(
    zone: str | None,
    provider: str | None,
    provider_url: str | None,
    forecast: bool,
    as_json: bool,
    config_path: str | None,
    db: str | None,
) -> None:
    """Grid carbon intensity now (or its forecast), with where each value came from.

    Falls back from the provider to cached points to the static yearly average.

    \b
    Examples:
      carbonwatch intensity --zone DE --provider electricitymaps --json
      carbonwatch intensity --zone GB --provider ukgrid --forecast
    """
    settings = load(config_path, zone=zone, provider=provider, provider_url=provider_url, db=db)
    clock = SystemClock()
    resolved = _resolve(settings, settings.zone, forecast=forecast, clock=clock)
    now_s = clock.time()
    points = [point_json(p, resolved.via, now_s) for p in resolved.points]
    if as_json:
        echo_json(
            {
                "zone": settings.zone,
                "via": resolved.via,
                "points": points,
                "errors": resolved.errors,
            }
        )
        return
    for p in points:
        prov = p["provenance"]
        click.echo(
            f"{p['start']}  {p['intensity_g_per_kwh']:8.1f} gCO2e/kWh  {prov['kind']:<8} "
            f"{prov['signal']:<8} {prov['provider']} (via {prov['via']})"
        )


def plan_json(plan: Plan, extra: dict[str, Any]) -> dict[str, Any]:
    saving = plan.saving_fraction
    return {
        "windows": [{"start": iso_utc(s), "end": iso_utc(e)} for s, e in plan.windows],
        "mean_intensity_g_per_kwh": plan.mean_intensity_g_per_kwh,
        "baseline_intensity_g_per_kwh": plan.baseline_intensity_g_per_kwh,
        "saving_pct": None if saving is None else 100.0 * saving,
        "basis": plan.basis,
        "reason": plan.reason,
        "interruptible": plan.interruptible,
        **extra,
    }


def _forecast_slots(
    settings: Settings,
    zone: str | None,
    forecast_csv: str | None,
    clock: Clock,
    tz: str | None = None,
) -> tuple[list[IntensityPoint], dict[str, Any]]:
    if forecast_csv:
        try:
            text = Path(forecast_csv).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise InputError(f"cannot read forecast {forecast_csv}: {exc}") from exc
        try:
            points = read_intensity_csv(
                text, zone=zone or "", provider="csv", tz=tz or settings.csv_tz
            )
        except InputError as exc:
            raise InputError(f"{forecast_csv}: {exc}") from exc
        return points, {"forecast": {"via": "file", "source": forecast_csv}}
    resolved = _resolve(settings, settings.zone, forecast=True, clock=clock)
    source = {"via": resolved.via, "provider": settings.provider, "zone": settings.zone}
    # A static average is flat: it cannot rank windows, so plan as if there were no forecast.
    return (resolved.points if resolved.is_forecast else []), {"forecast": source}


def _error_model(settings: Settings, slots: list[IntensityPoint], now_s: float) -> ErrorModel:
    """The forecast error of the provider and zone the slots came from, measured on the store's
    forecasts and actuals; unknown (empty) without a store or history."""
    from carbonwatch.store import open_store

    keys = {(p.zone, p.provider) for p in slots if p.kind == "forecast"}
    if len(keys) != 1 or not settings.db_path.exists():
        return ErrorModel(())
    zone, provider = keys.pop()
    try:
        store = open_store(settings.db_path, read_only=True)
    except StoreError:
        return ErrorModel(())
    try:
        return measure(store.conn, zone, provider, since_s=now_s - ERROR_HISTORY_S)
    finally:
        store.close()


@click.command("plan")
@click.option("--duration", required=True, help="How long the job runs: 45m, 2h, 1h30m.")
@click.option(
    "--deadline",
    required=True,
    help="Finish by: ISO-8601 (2026-12-01T06:00:00Z) or +12h (from --start).",
)
@click.option("--start", "start", default="now", show_default=True, help="Earliest start.")
@click.option("--interruptible", is_flag=True, help="The job can pause and resume (checkpoints).")
@click.option("--zone", default=None, help="Fetch the zone's forecast from the provider.")
@click.option(
    "--forecast",
    "forecast_csv",
    type=click.Path(dir_okay=False),
    default=None,
    help="Plan on a forecast CSV file instead (timestamp + intensity columns).",
)
@click.option(
    "--tz",
    default=None,
    help="IANA zone of --forecast timestamps written without one (default: setting csv_tz, "
    "else UTC), e.g. Europe/London; DST-correct.",
)
@_provider_options
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@settings_options
@handle_errors
def plan_cmd(
    duration: str,
    deadline: str,
    start: str,
    interruptible: bool,
    zone: str | None,
    forecast_csv: str | None,
    tz: str | None,
    provider: str | None,
    provider_url: str | None,
    as_json: bool,
    config_path: str | None,
    db: str | None,
) -> None:
    """The lowest-carbon time to run a job before its deadline.

    Planned on expected intensity: the forecast corrected by the provider's error, measured on
    the forecasts and actuals in the store, by horizon; the job waits only when the expected
    saving beats that error (setting defer_error_sigmas). With no usable forecast the job runs
    at the latest safe start (or now, per the no_forecast_policy setting); it never ends after
    the deadline.

    \b
    Examples:
      carbonwatch plan --duration 2h --deadline +24h --zone DE --provider electricitymaps
      carbonwatch plan --duration 4h --deadline 2022-06-02T09:00:00Z \\
          --start 2022-06-01T09:00:00Z --forecast CISO.csv --interruptible --json
    """
    if bool(zone) == bool(forecast_csv):
        raise click.UsageError("give exactly one of --zone or --forecast")
    settings = load(config_path, zone=zone, provider=provider, provider_url=provider_url, db=db)
    clock = SystemClock()
    now_s = clock.time()
    release_s = parse_user_time_s(start, now_s)
    if not 0 <= release_s <= MAX_UNIX_S:  # what-if plans may start years away, not centuries
        raise InputError(f"--start {start!r} must fall between 1970 and 2286")
    # "+24h" counts from the job's earliest start, which is now unless --start says otherwise.
    deadline_s = check_ahead(parse_user_time_s(deadline, release_s), release_s, "--deadline")
    duration_s = parse_duration_s(duration)
    if duration_s > MAX_AHEAD_S:
        raise InputError(f"--duration {duration!r} is more than a year")
    slots, extra = _forecast_slots(settings, zone, forecast_csv, clock, tz)
    error = _error_model(settings, slots, now_s)
    planned = plan_with_error(
        normalise(slots),
        error,
        now_s=now_s,
        duration_s=duration_s,
        release_s=release_s,
        deadline_s=deadline_s,
        interruptible=interruptible,
        no_forecast_policy=settings.no_forecast_policy,
        sigmas=settings.defer_error_sigmas,
    )
    plan = planned.plan
    out = plan_json(plan, {**extra, **planned.as_json(), "forecast_error": error.as_json()})
    if as_json:
        echo_json(out)
        return
    for w in out["windows"]:
        click.echo(f"run {w['start']} -> {w['end']}")
    if out["mean_intensity_g_per_kwh"] is not None:
        click.echo(f"mean intensity {out['mean_intensity_g_per_kwh']:.1f} gCO2e/kWh")
    if out["saving_pct"] is not None:
        band = out["saving_band_g_per_kwh"]
        click.echo(
            f"vs starting at once {out['baseline_intensity_g_per_kwh']:.1f} gCO2e/kWh: "
            f"{out['saving_pct']:.1f} % less carbon"
            + (
                f" (expected saving {out['expected_saving_g_per_kwh']:.1f} ± {band:.1f} "
                f"gCO2e/kWh, {out['saving_band_pct']:.1f} points)"
                if band is not None and out["expected_saving_g_per_kwh"] is not None
                else ""
            )
        )
    if planned.note:
        click.echo(planned.note)
    if plan.basis == "no_forecast":
        why = f" ({plan.reason})" if plan.reason else ""
        click.echo(f"no forecast covers the job{why}: policy '{settings.no_forecast_policy}'")


@click.command("estimate")
@click.option(
    "--gpu", required=True, help="Accelerator model: H100, H100-PCIe, A100, L4, MI300X..."
)
@click.option("--count", default=1, show_default=True, type=click.IntRange(min=1))
@click.option("--hours", required=True, type=float, help="Expected run time in hours.")
@click.option("--zone", default=None, help="Grid zone: use the provider's intensity and forecast.")
@click.option("--country", default=None, help="ISO 3166 country code: static yearly average.")
@click.option(
    "--deadline",
    default=None,
    help="For the best window: finish by (default +24h after the job could end).",
)
@_provider_options
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@settings_options
@handle_errors
def estimate_cmd(
    gpu: str,
    count: int,
    hours: float,
    zone: str | None,
    country: str | None,
    deadline: str | None,
    provider: str | None,
    provider_url: str | None,
    as_json: bool,
    config_path: str | None,
    db: str | None,
) -> None:
    """Estimate a GPU job's energy and carbon before running it (an upper bound: full TDP).

    \b
    Examples:
      carbonwatch estimate --gpu H100 --count 8 --hours 12 --country FR
      carbonwatch estimate --gpu A100 --hours 4 --zone DE --provider electricitymaps --json
    """
    if bool(zone) == bool(country):
        raise click.UsageError("give exactly one of --zone or --country")
    settings = load(config_path, zone=zone, provider=provider, provider_url=provider_url, db=db)
    clock = SystemClock()
    now_s = clock.time()
    best: dict[str, Any] | None = None
    if country:
        point, via = static.country_intensity(country), "static"
    else:
        resolved = _resolve(settings, settings.zone, forecast=False, clock=clock)
        point, via = resolved.points[0], resolved.via
    result = estimate_gpu_job(
        gpu,
        count=count,
        hours=hours,
        intensity_g_per_kwh=point.intensity_g_per_kwh,
        pue=settings.pue,
    )
    if zone:
        duration_s = hours * 3600.0
        deadline_s = parse_user_time_s(deadline, now_s) if deadline else now_s + duration_s + _DAY_S
        slots, extra = _forecast_slots(settings, zone, None, clock)
        if slots:
            plan = plan_job(slots, duration_s=duration_s, release_s=now_s, deadline_s=deadline_s)
            if plan.basis == "forecast" and plan.mean_intensity_g_per_kwh is not None:
                best = plan_json(plan, extra)
                best["co2e_g"] = result.energy_kwh * plan.mean_intensity_g_per_kwh
    out = {
        "estimate": True,
        "basis": "vendor TDP x count x hours x PUE: an upper bound for the GPUs alone",
        "gpu": result.gpu,
        "tdp_w": result.tdp_w,
        "count": result.count,
        "hours": result.hours,
        "pue": result.pue,
        "energy_kwh": result.energy_kwh,
        "intensity_g_per_kwh": result.intensity_g_per_kwh,
        "co2e_g": result.co2e_g,
        "provenance": point_json(point, via, now_s)["provenance"],
        "best_window": best,
    }
    if as_json:
        echo_json(out)
        return
    click.echo(
        f"estimate: {count} x {result.gpu} ({result.tdp_w:.0f} W TDP) for {hours:g} h = "
        f"{result.energy_kwh:.2f} kWh (upper bound)"
    )
    click.echo(
        f"at {point.intensity_g_per_kwh:.1f} gCO2e/kWh ({point.kind}, {point.provider}): "
        f"{result.co2e_g / 1000.0:.2f} kgCO2e"
    )
    if best is not None:
        w = best["windows"][0]
        click.echo(
            f"best window {w['start']} -> {w['end']}: {best['co2e_g'] / 1000.0:.2f} kgCO2e "
            f"at {best['mean_intensity_g_per_kwh']:.1f} gCO2e/kWh"
        )
