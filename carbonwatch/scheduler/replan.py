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
from carbonwatch.scheduler.job import Status
from carbonwatch.store import deferred
from carbonwatch.times import iso_utc

if TYPE_CHECKING:
    import asyncio

    from carbonwatch.clock import Clock
    from carbonwatch.config import Settings

log = logging.getLogger("carbonwatch.scheduler.service")


class Replan:
    if TYPE_CHECKING:  # provided by SchedulerService
        settings: Settings
        clock: Clock
        _read: Any
        _write: Any

        def _lock(self, job_id: str) -> asyncio.Lock: ...
        async def _row(self, job_id: str) -> dict[str, Any] | None: ...
        async def _update(self, deferred_id: str, /, **fields: Any) -> None: ...
        def _arm(self, row: dict[str, Any]) -> None: ...

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
            row = await self._row(job_id)
            if row is None or row["status"] != Status.QUEUED:
                return  # started (or cancelled) meanwhile: a started job keeps its plan
            known = row.get("forecast_fetched_at_s")
            if fetched.fetched_at_s is None or (
                known is not None and fetched.fetched_at_s <= known
            ):
                return  # not newer than the forecast the plan was made on
            now_s = self.clock.time()
            if row["plan"][0][0] <= now_s:
                return  # its launch is due now
            try:
                plan = plan_deferred(
                    fetched.points,
                    duration_s=row["duration_s"],
                    release_s=now_s,
                    deadline_s=row["deadline_s"],
                    interruptible=row["interruptible"],
                    no_forecast_policy=self.settings.no_forecast_policy,
                    error=fetched.error,
                    sigmas=self.settings.defer_error_sigmas,
                )
            except InputError:
                return  # cannot fit any more from now: the armed plan still meets the deadline
            if plan.basis != "forecast":
                return  # the new forecast does not cover the job: keep a plan made on one
            fields = plan_fields(
                plan, fetched, now_s, row.get("expected_energy_j"), self.settings.pue
            )
            moved = not same_windows(fields["plan"], row["plan"])
            if moved:
                fields["message"] = f"re-planned at {iso_utc(now_s)} on a newer forecast"
            await self._update(job_id, **fields)
            if moved:
                self._arm({**row, **fields})
