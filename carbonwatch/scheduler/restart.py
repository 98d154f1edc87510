"""A restarted daemon's scheduler picks up what the previous one left: queued jobs are armed
(started at once if their start passed while down), a launch interrupted before the wrapper's
pid was stored is adopted or made once, a wrapper still alive is watched again, one that ended
unwatched is finished from its job record. A mixin of
:class:`~carbonwatch.scheduler.service.SchedulerService`."""

from __future__ import annotations

import asyncio
import logging
import subprocess
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from carbonwatch.scheduler.job import ACTIVE, DeferredJob, Status
from carbonwatch.store import deferred
from carbonwatch.times import check_ahead, iso_utc

if TYPE_CHECKING:
    from carbonwatch.clock import Clock
    from carbonwatch.scheduler.launcher import ProcessLauncher

log = logging.getLogger("carbonwatch.scheduler.service")


@dataclass
class Running:
    """A launched wrapper: ``proc`` is None when a previous daemon started it."""

    pid: int
    created_s: float | None
    proc: subprocess.Popen[bytes] | None
    groups: list[int] = field(default_factory=list)
    cancelling: bool = False
    task: asyncio.Task[None] | None = None


class Restart:
    if TYPE_CHECKING:  # provided by SchedulerService
        clock: Clock
        launcher: ProcessLauncher
        _read: Any
        _write: Any
        _running: dict[str, Running]

        async def _save(self, job: DeferredJob, /, **changes: Any) -> DeferredJob: ...
        def _arm(self, job: DeferredJob) -> None: ...
        def _timed(self, job: DeferredJob) -> bool: ...
        def _disarm(self, job_id: str) -> None: ...
        async def _launch(self, job_id: str) -> None: ...
        async def _pause(self, job_id: str) -> None: ...
        async def _resume(self, job_id: str) -> None: ...
        async def _watch(self, job_id: str) -> None: ...
        async def _finish(self, job_id: str, code: int | None) -> None: ...

    async def _restore(self) -> None:
        rows = await self._read(lambda s: deferred.rows(s.conn, ACTIVE))
        now_s = self.clock.time()
        for row in rows:
            try:
                job = DeferredJob.from_row(row)
                if self._timed(job):  # an untimed launcher's system keeps it; the poll follows
                    await self._restore_one(job, now_s)
            except Exception as exc:  # noqa: BLE001 - one bad row must not stop the daemon
                # A row no current daemon would store (a deadline in year 33658, a NUL in its
                # argv): it is failed, with the reason, and the others are restored.
                log.error("deferred job %s cannot be restored (%s: %s); marked failed",
                          row["id"], type(exc).__name__, exc)
                self._disarm(row["id"])
                self._running.pop(row["id"], None)
                message = f"failed at restart: {type(exc).__name__}: {exc}"
                # Written as columns: the row may be one DeferredJob cannot even hold.
                await self._write(lambda s, i=row["id"], m=message: deferred.update(
                    s.conn, i, status=str(Status.FAILED), ended_s=now_s, env={}, message=m))
        if rows:
            log.info("deferred jobs: restored %d", len(rows))

    async def _restore_one(self, job: DeferredJob, now_s: float) -> None:
        # The submit's bound, again: a row stored without it (by hand, or an older daemon) is
        # failed here rather than armed for year 33658.
        check_ahead(job.deadline_s, now_s, "deadline")
        if job.status == Status.QUEUED:
            await self._restore_queued(job, now_s)
        elif job.status == Status.LAUNCHING:
            await self._restore_launching(job, now_s)
        elif self.launcher.alive(job.wrapper_pid or 0, job.wrapper_created_s):
            await self._reattach(job, now_s)
        else:  # it ended while no daemon watched it
            self._running[job.id] = Running(job.wrapper_pid or 0, job.wrapper_created_s, None)
            await self._finish(job.id, None)

    async def _restore_queued(self, job: DeferredJob, now_s: float) -> None:
        start_s = job.plan[0][0]
        if start_s >= now_s:
            self._arm(job)
            return
        # Its start passed while the daemon was down: start now, as one contiguous run.
        late_s = now_s + job.duration_s - job.deadline_s
        message = (
            f"the daemon was down at the planned start {iso_utc(start_s)}; started at "
            f"{iso_utc(now_s)}"
        )
        if late_s > 0:
            message += f"; it will end about {late_s:.0f} s after its deadline"
        job = await self._save(job, plan=[(now_s, now_s + job.duration_s)], message=message)
        self._arm(job)

    async def _restore_launching(self, job: DeferredJob, now_s: float) -> None:
        """A previous daemon stopped between storing the launch and storing the wrapper's pid:
        adopt the wrapper if it started, else launch the job now (once)."""
        job_id = job.id
        found = self.launcher.find(job_id)
        if found is not None:
            pid, created = found
            job = await self._save(
                job, status=Status.RUNNING, wrapper_pid=pid, wrapper_created_s=created,
                runs=[[job.started_s or created, None]],
            )
            log.info("deferred job %s: adopted its wrapper (pid %d)", job_id, pid)
            await self._reattach(job, now_s)
            return
        started_s = job.started_s or now_s
        record = await self._read(
            lambda s: deferred.find_job(
                s.conn, job.name, job.command, started_s - 1.0, now_s + 1.0
            )
        )
        if record is not None:  # the wrapper started, ran and ended while no daemon watched it
            self._running[job_id] = Running(0, None, None)
            await self._finish(job_id, None)
            return
        await self._launch(job_id)
        self._arm(job)  # an interruptible job's pauses and resumes

    async def _reattach(self, job: DeferredJob, now_s: float) -> None:
        """A wrapper a previous daemon started is still alive: watch it, and put an
        interruptible one in the state its plan says for now."""
        job_id = job.id
        running = Running(job.wrapper_pid or 0, job.wrapper_created_s, None)
        self._running[job_id] = running
        running.task = asyncio.create_task(self._watch(job_id))
        if not job.interruptible:
            return
        windows = job.plan
        inside = any(s <= now_s < e for s, e in windows) or now_s >= windows[-1][1]
        if job.status == Status.PAUSED and inside:
            await self._resume(job_id)
        elif job.status == Status.RUNNING and not inside:
            await self._pause(job_id)
        self._arm(job)
