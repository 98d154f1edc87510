"""Re-planning of queued deferred jobs on newer forecasts: the periodic refresh of
:class:`~carbonwatch.scheduler.service.SchedulerService` (a mixin of it)."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from carbonwatch.errors import CarbonwatchError, InputError
from carbonwatch.scheduler.costing import correct_with_actuals
from carbonwatch.scheduler.forecasts import (
    Fetched,
    fetch_forecast,
    plan_deferred,
    plan_fields,
    same_windows,
)
from carbonwatch.scheduler.job import DeferredJob, Status
from carbonwatch.store import deferred
from carbonwatch.times import iso_utc

if TYPE_CHECKING:
    import asyncio
    from collections.abc import Mapping

    from carbonwatch.clock import Clock
    from carbonwatch.config import Settings
    from carbonwatch.scheduler.launcher import Launcher

log = logging.getLogger("carbonwatch.scheduler.service")


class Replan:
    if TYPE_CHECKING:  # provided by SchedulerService
        settings: Settings
        clock: Clock
        _read: Any
        _write: Any

        launchers: Mapping[str, Launcher]

        def _lock(self, job_id: str) -> asyncio.Lock: ...
        async def _job(self, job_id: str) -> DeferredJob | None: ...
        async def _save(self, job: DeferredJob, /, **changes: Any) -> DeferredJob: ...
        def _arm(self, job: DeferredJob) -> None: ...
        def _timed(self, job: DeferredJob) -> bool: ...

    async def _fetch(self, provider: str, url: str, zone: str) -> Fetched:
        return await fetch_forecast(
            self.settings, provider, url, zone, read=self._read, write=self._write, clock=self.clock
        )

    async def refresh(self) -> None:
        """Re-plan the queued jobs on newer forecasts; correct forecast-costed minutes for
        which actuals have arrived. Failures are logged: the next refresh tries again."""
        try:
            await self._replan_queued()
        except Exception:  # noqa: BLE001 - a refresh must never stop the scheduler
            log.exception("deferred jobs: re-planning failed")
        try:
            await correct_with_actuals(self.settings, self.clock, self._write)
        except Exception:  # noqa: BLE001
            log.exception("deferred jobs: correcting with actuals failed")

    async def _replan_queued(self) -> None:
        rows = await self._read(lambda s: deferred.rows(s.conn, (Status.QUEUED,)))
        groups: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
        for row in rows:
            if row["provider"]:  # a static-provider job has no forecast to wait for
                key = (row["provider"], row["provider_url"], row["zone"] or "")
                groups.setdefault(key, []).append(row)
        for (provider, url, zone), members in groups.items():
            try:
                fetched = await self._fetch(provider, url, zone)
            except CarbonwatchError as exc:
                log.warning(
                    "deferred jobs: cannot fetch %s forecast for %s: %s", provider, zone, exc
                )
                continue
            for row in members:
                await self._replan(row["id"], fetched)

    async def _replan(self, job_id: str, fetched: Fetched) -> None:
        async with self._lock(job_id):
            job = await self._job(job_id)
            if job is None or job.status != Status.QUEUED:
                return  # started (or cancelled) meanwhile: a started job keeps its plan
            known = job.forecast_fetched_at_s
            if fetched.fetched_at_s is None or (
                known is not None and fetched.fetched_at_s <= known
            ):
                return  # not newer than the forecast the plan was made on
            now_s = self.clock.time()
            if job.plan[0][0] <= now_s:
                return  # its launch is due now
            try:
                plan = plan_deferred(
                    fetched.points,
                    duration_s=job.duration_s,
                    release_s=now_s,
                    deadline_s=job.deadline_s,
                    interruptible=job.interruptible,
                    no_forecast_policy=self.settings.no_forecast_policy,
                    error=fetched.error,
                    sigmas=self.settings.defer_error_sigmas,
                )
            except InputError:
                return  # cannot fit any more from now: the armed plan still meets the deadline
            if plan.basis != "forecast":
                return  # the new forecast does not cover the job: keep a plan made on one
            fields = plan_fields(plan, fetched, now_s, job.expected_energy_j, self.settings.pue)
            moved = not same_windows(fields["plan"], [list(w) for w in job.plan])
            if moved:
                fields["message"] = f"re-planned at {iso_utc(now_s)} on a newer forecast"
            job = await self._save(job, **fields)
            if not moved:
                return
            if self._timed(job):
                self._arm(job)
                return
            try:  # its own system holds it: move it there
                await self.launchers[job.via].move(job)
            except CarbonwatchError as exc:
                log.warning("deferred job %s: could not move it in %s: %s", job_id, job.via, exc)
                await self._save(job, message=f"re-planned, but {job.via} kept the old start: "
                                 f"{exc}")
                return
            log.info("deferred job %s: moved in %s to %s", job_id, job.via,
                     iso_utc(job.plan[0][0]))
