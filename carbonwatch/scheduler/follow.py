"""Following the jobs of an untimed launcher (Slurm): on each poll the launcher says where its
system has the job (:class:`~carbonwatch.scheduler.launcher.Seen`) and the row follows it
(held: queued; running; ended: done, failed or cancelled, with the measured job's gCO2e once the
node has ended its record). A mixin of :class:`~carbonwatch.scheduler.service.SchedulerService`."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from carbonwatch.scheduler.costing import realised_baseline
from carbonwatch.scheduler.job import ACTIVE, DeferredJob, Status
from carbonwatch.store import deferred

if TYPE_CHECKING:
    import asyncio

    from carbonwatch.clock import Clock
    from carbonwatch.config import Settings
    from carbonwatch.scheduler.launcher import Launcher, Seen

log = logging.getLogger("carbonwatch.scheduler.service")
# How long after its system ended a job the row waits for the node to end the measured record.
RECORD_WAIT_S = 60.0


class Follow:
    if TYPE_CHECKING:  # provided by SchedulerService
        settings: Settings
        clock: Clock
        launchers: Mapping[str, Launcher]
        _read: Any

        def _lock(self, job_id: str) -> asyncio.Lock: ...
        async def _job(self, job_id: str) -> DeferredJob | None: ...
        async def _save(self, job: DeferredJob, /, **changes: Any) -> DeferredJob: ...

    async def poll(self) -> None:
        """Follow every active job of an untimed launcher (one look each)."""
        rows = await self._read(lambda s: deferred.rows(s.conn, ACTIVE))
        for row in rows:
            launcher = self.launchers.get(row.get("via") or "")
            if launcher is None or launcher.timed:
                continue
            try:
                job = DeferredJob.from_row(row)
                await self._follow(job, launcher, await launcher.look(job))
            except Exception:  # noqa: BLE001 - one job's trouble must not stop the others
                log.exception("deferred job %s: following it in %s failed", row["id"],
                              row.get("via"))

    async def _follow(self, job: DeferredJob, launcher: Launcher, seen: Seen | None) -> None:
        async with self._lock(job.id):
            fresh = await self._job(job.id)
            if fresh is None or fresh.ended:
                return  # cancelled (or followed) meanwhile
            await self._follow_locked(fresh, launcher, seen)

    async def _follow_locked(
        self, job: DeferredJob, launcher: Launcher, seen: Seen | None
    ) -> None:
        update: dict[str, Any] = {}
        state = "UNKNOWN" if seen is None else seen.state
        if state != job.slurm_state:
            update["slurm_state"] = state
        now_s = self.clock.time()
        if seen is not None and seen.status == Status.RUNNING and job.status == Status.QUEUED:
            started = seen.start_s or now_s
            update.update(status=Status.RUNNING, started_s=started, runs=[[started, None]])
        if seen is not None and seen.status in (Status.QUEUED, Status.RUNNING):
            if update:
                await self._save(job, **update)
            return
        # Final (or forgotten by its system): record the end and the measured job.
        started = (seen.start_s if seen else None) or job.started_s
        ended = (seen.end_s if seen else None) or now_s
        status = Status.FAILED if seen is None else seen.status
        runs = [[started, ended]] if started is not None else []
        update.update(status=status, ended_s=ended, runs=runs, env={},  # may hold secrets
                      ran_s=(ended - started) if started is not None else 0.0,
                      exit_code=seen.exit_code if seen else None)
        if seen is None:
            update["message"] = "Slurm no longer knows the job (MinJobAge passed): state unknown"
        elif seen.note:
            update["message"] = seen.note
        identity = launcher.identity(job)
        record = await self._read(lambda s: deferred.job_by_identity(s.conn, identity))
        if record is not None and record["status"] != "running":  # jobs.status: ended
            update.update(job_id=record["id"], realised_co2e_g=record["co2e_g"])
            update["realised_baseline_co2e_g"] = await self._read(
                lambda s: realised_baseline(s, self.settings, job, record["id"], runs)
            )
        elif started is not None and status != Status.CANCELLED:
            # Ended there, but the node has not ended the measured record yet: look again.
            if now_s - ended < RECORD_WAIT_S:
                if "slurm_state" in update:
                    await self._save(job, slurm_state=state)
                return
            update["message"] = (f"no measured job {identity} on this node "
                                 "(is deploy/slurm/prolog.sh configured as the Prolog?)")
        await self._save(job, **update)
