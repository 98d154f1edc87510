"""The scheduler's costing against stored intensity, apart from the job life cycle in
:mod:`carbonwatch.scheduler.service`: the realised baseline of a finished deferred job (its
measured energy profile costed as if run from submit), and the periodic correction of
forecast-costed minutes once the provider publishes actuals."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from carbonwatch.clock import Clock
from carbonwatch.config import Settings
from carbonwatch.grid.feed import cached_points, static_point, update_with_actuals
from carbonwatch.grid.series import SeriesSource
from carbonwatch.grid.static import StaticSource
from carbonwatch.scheduler.job import DeferredJob
from carbonwatch.scheduler.realised import baseline_co2e_g
from carbonwatch.store import deferred

log = logging.getLogger(__name__)


def realised_baseline(
    store: Any, settings: Settings, job: DeferredJob, job_id: str, runs: Sequence[Sequence[Any]]
) -> float | None:
    """The job's measured energy profile costed as if it had run from submit."""
    if not runs:
        return None
    minutes = deferred.job_minutes(store.conn, job_id)
    if not minutes:
        return 0.0  # no energy measured: nothing to cost at any time
    fallback = StaticSource(static_point(settings, job.zone or ""))
    source: Any = fallback
    if job.provider:
        lo_s = job.submitted_s - 3600.0
        hi_s = job.submitted_s + sum(e - s for s, e in runs) + 3600.0
        source = SeriesSource(
            cached_points(store, job.zone or "", job.provider, lo_s, hi_s), fallback
        )
    return baseline_co2e_g(minutes, [(s, e) for s, e in runs], job.submitted_s, source,
                           settings.pue)


async def correct_with_actuals(
    settings: Settings, clock: Clock, write: Callable[[Callable[[Any], int]], Awaitable[int]]
) -> None:
    """The node's accounting provider: minutes costed with its forecast, now with actuals."""
    if settings.provider.strip().lower() in ("", "static") or not settings.zone:
        return
    from carbonwatch.grid.build import make_provider  # aiohttp: only with a live provider

    provider = make_provider(settings, clock=clock)
    if provider is None:
        return
    changed = await write(
        lambda s: update_with_actuals(s, settings.zone, provider.name, pue=settings.pue)
    )
    if changed:
        log.info("corrected %d forecast-costed minutes with actuals", changed)
