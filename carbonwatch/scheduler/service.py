"""The daemon's carbon-aware scheduler: a deferred job from submit to its realised saving.

A job's life (``deferred_jobs.status``)::

    queued --planned start--> launching --wrapper started--> running --exit 0--> done
       |                                                |  ^   \\--exit != 0--> failed
       |                                    window end  v  |  window start  (interruptible only)
       |                                               paused
       \\--cancel--> cancelled <--cancel (the wrapper's tree is terminated)-- running | paused

Submit plans the job on the zone's forecast (the pure planner), stores the row and arms its
triggers. A launch is stored as ``launching`` before the wrapper starts, so a daemon killed
before it records the wrapper's pid looks for that wrapper on restart instead of starting a
second one. Every ``refresh_every_s`` the forecasts of queued jobs are fetched again and a job not
yet started is re-planned on the newer forecast. A job runs through the wrapper (see
:mod:`carbonwatch.scheduler.launcher`), so it is measured like any other; when it ends, its
measured gCO2e and the same energy profile costed as if run at submit time are stored.

A job is a :class:`~carbonwatch.scheduler.job.DeferredJob` (its status changes are checked in
:meth:`~carbonwatch.scheduler.job.DeferredJob.moved`). How it starts is the injected
:class:`~carbonwatch.scheduler.launcher.Launcher` of its ``via``: the local one (the wrapper, as
a process of this host, started by our triggers) or an untimed one such as Slurm's, which holds
the job until its start and is followed by :mod:`~carbonwatch.scheduler.follow`. Timing is
:class:`~carbonwatch.scheduler.triggers.Triggers`, in the scheduler's :class:`Clock`;
re-planning is :mod:`~carbonwatch.scheduler.replan`, picking up after a restart
:mod:`~carbonwatch.scheduler.restart`, costing against stored intensity
:mod:`~carbonwatch.scheduler.costing`. Persistence is our own ``deferred_jobs`` table, not a
scheduling library's job store, because (1) the row is the record users read (plan, expected and
realised carbon), and every store write goes through the daemon's one writer thread; (2) a
pickled job store ties stored rows to the code's layout; (3) triggers are derived data:
rebuilding them from each row's plan and status on start takes a few lines, and that is exactly
where a restart must decide what to do about events that passed while down.

Every method runs on the daemon's event loop; a per-job lock orders the transitions of one job.
"""

from __future__ import annotations

import asyncio
import logging
import os
import uuid
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

from carbonwatch.clock import Clock, SystemClock
from carbonwatch.config import Settings
from carbonwatch.errors import InputError
from carbonwatch.proc import exit_code
from carbonwatch.scheduler.costing import realised_baseline
from carbonwatch.scheduler.follow import Follow
from carbonwatch.scheduler.forecasts import (
    plan_deferred,
    plan_fields,
)
from carbonwatch.scheduler.job import ACTIVE, Conflict, DeferredJob, NotFound, Status, Submission
from carbonwatch.scheduler.launcher import (
    DAEMON_ENV,
    Launcher,
    LocalLauncher,
    ProcessLauncher,
    groups_of,
)
from carbonwatch.scheduler.replan import Replan
from carbonwatch.scheduler.restart import Restart, Running
from carbonwatch.scheduler.slurm import POLL_S, SlurmLauncher
from carbonwatch.scheduler.triggers import Triggers
from carbonwatch.store import deferred
from carbonwatch.times import iso_utc

log = logging.getLogger(__name__)
T = TypeVar("T")

# Reads and writes as the daemon offers them: ``read(fn)`` runs fn(store) on a read-only
# connection, ``write(fn)`` runs fn(store) as one transaction on the writer thread.
StoreCall = Callable[[Callable[[Any], T]], Awaitable[T]]


class SchedulerService(Replan, Restart, Follow):
    def __init__(
        self,
        settings: Settings,
        *,
        read: StoreCall[Any],
        write: StoreCall[Any],
        clock: Clock | None = None,
        refresh_every_s: float | None = None,
        grace_s: float = 5.0,
        poll_s: float = 0.25,
        launchers: Mapping[str, Launcher] | None = None,
        triggers: Triggers | None = None,
    ) -> None:
        """``launchers``: one per ``via`` ("" the local one, "slurm"); a missing one is the
        default. ``triggers``: the daemon's fire on their own; a test passes
        ``Triggers(clock, loop=False)`` and calls ``run_due()`` after moving a ManualClock."""
        self.settings = settings
        self._read = read
        self._write = write
        self.clock = clock or SystemClock()
        self.launchers: dict[str, Launcher] = {
            "": LocalLauncher(), "slurm": SlurmLauncher(), **(launchers or {})
        }
        local = self.launchers[""]
        if not isinstance(local, ProcessLauncher) or not local.timed:
            raise TypeError("the local launcher (via '') must be a timed ProcessLauncher")
        self.launcher: ProcessLauncher = local  # the processes this host runs
        self.refresh_every_s = refresh_every_s or float(
            settings.scheduler_refresh_s
        )
        self.grace_s = grace_s
        self.poll_s = poll_s
        self.log_dir = settings.db_path.parent / "deferred-logs"
        self.daemon_url = ""
        self.triggers = triggers or Triggers(self.clock)  # when events fire, in clock time
        self._running: dict[str, Running] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    # --- lifecycle ----------------------------------------------------------------------------

    async def start(self, daemon_url: str) -> None:
        """Arm the queued jobs of a previous run, reattach to the ones it left running, and
        start the periodic refresh. ``daemon_url`` is where launched wrappers report (on a
        wildcard address, through loopback: the daemon then knows the wrapper's uid)."""
        self.daemon_url = daemon_url.replace("://0.0.0.0:", "://127.0.0.1:").replace(
            "://[::]:", "://[::1]:"
        )
        self.triggers.start({
            "deferred:refresh": (self.refresh, self.refresh_every_s),
            "deferred:follow": (self.poll, POLL_S),  # untimed launchers' jobs (Slurm)
        })
        await self._restore()

    async def stop(self) -> None:
        """Stop timing. Launched jobs keep running in their own sessions; the next start
        reattaches to them."""
        self.triggers.stop()
        for running in self._running.values():
            if running.task is not None:
                running.task.cancel()
        self._running.clear()

    # --- the API ------------------------------------------------------------------------------

    async def submit(self, sub: Submission) -> dict[str, Any]:
        if not sub.command:
            raise InputError("no command given")
        now_s = self.clock.time()
        name = sub.name or os.path.basename(sub.command[0])
        count, mean_s, power_w = await self._read(lambda s: deferred.history(s.conn, name))
        duration_s = sub.duration_s
        if duration_s is None:
            if not count or mean_s is None:
                raise InputError(
                    f"--duration auto: no finished job named {name!r} in the store to take the "
                    "duration from; give it, e.g. --duration 2h"
                )
            duration_s = mean_s
        if sub.deadline_s < now_s + duration_s:
            raise InputError(
                f"the deadline {iso_utc(sub.deadline_s)} is before now + duration "
                f"({iso_utc(now_s + duration_s)}): the job could not finish in time"
            )
        zone = self.settings.zone if sub.zone is None else sub.zone
        provider = sub.provider or self.settings.provider
        url = sub.provider_url
        if url is not None and url != self.settings.provider_url and (
            url not in self.settings.allowed_provider_urls
        ):
            # The daemon fetches it with its own credentials, from inside the node: a request
            # choosing it could read the node's files or send the API key anywhere.
            raise InputError(
                "provider_url: a submitted job may not choose the URL or file the daemon reads "
                "its forecast from; it uses the daemon's provider_url, or one listed in its "
                "provider_urls setting"
            )
        if url is None:
            url = self.settings.provider_url if provider == self.settings.provider else ""
        fetched = await self._fetch(provider, url, zone)
        plan = plan_deferred(
            fetched.points,
            duration_s=duration_s,
            release_s=now_s,
            deadline_s=sub.deadline_s,
            interruptible=sub.interruptible,
            no_forecast_policy=self.settings.no_forecast_policy,
            error=fetched.error,
            sigmas=self.settings.defer_error_sigmas,
        )
        launcher = self.launchers.get(sub.via)
        if launcher is None:
            raise InputError(f"via: no launcher {sub.via!r} on this daemon")
        energy_j = power_w * duration_s if power_w else None
        job_id = uuid.uuid4().hex[:12]
        fields = plan_fields(plan, fetched, now_s, energy_j, self.settings.pue)
        if fetched.errors:
            fields["message"] = "forecast: " + "; ".join(fetched.errors)
        job = DeferredJob(
            id=job_id,
            name=name,
            kind=sub.kind,
            command=list(sub.command),
            cwd=sub.cwd,
            # carbonwatch's tokens never reach the store or the job
            env={k: v for k, v in sub.env.items() if k not in DAEMON_ENV},
            owner_uid=sub.owner_uid,
            owner_gid=sub.owner_gid,
            zone=zone,
            provider=fetched.provider,
            provider_url=url if fetched.provider else "",
            submitted_s=now_s,
            deadline_s=sub.deadline_s,
            duration_s=duration_s,
            interruptible=sub.interruptible,
            status=Status.QUEUED,
            expected_energy_j=energy_j,
            log_path=str(self.log_dir / f"{job_id}.log"),
            via=sub.via,
            plan=[(s, e) for s, e in fields.pop("plan")],
        ).moved(**fields)
        # An untimed launcher takes the job now and holds it until the planned start.
        job = job.moved(**await launcher.submit(job, self.daemon_url))
        row = job.to_row()
        await self._write(lambda s: deferred.insert(s.conn, row))
        self._arm(job)
        return {**job.view(), "warnings": fetched.errors}

    async def get(self, job_id: str) -> dict[str, Any]:
        return (await self.job(job_id)).view()

    async def queue(self, active_only: bool = False, limit: int = 1000) -> list[dict[str, Any]]:
        statuses = ACTIVE if active_only else None
        rows = await self._read(lambda s: deferred.rows(s.conn, statuses, limit))
        return [DeferredJob.from_row(r).view() for r in rows]

    async def cancel(self, job_id: str) -> dict[str, Any]:
        """A queued job is cancelled; a running or paused one is terminated (SIGTERM to its
        tree, SIGKILL after ``grace_s``) and then marked cancelled."""
        async with self._lock(job_id):
            job = await self.job(job_id)
            if job.ended:
                raise Conflict(f"deferred job {job_id} already ended (status {job.status})")
            if not self._timed(job):
                await self.launchers[job.via].cancel(job)  # where it is held (scancel)
                now_s = self.clock.time()
                job = await self._save(
                    job, status=Status.CANCELLED, ended_s=now_s, slurm_state="CANCELLED",
                    env={}, message=f"cancelled at {iso_utc(now_s)} (scancel {job.slurm_job_id})",
                )
                return job.view()
            running = self._running.get(job_id)
            if running is None:  # queued (or running under a process that is already gone)
                self._disarm(job_id)
                now_s = self.clock.time()
                job = await self._save(
                    job,
                    status=Status.CANCELLED,
                    ended_s=now_s,
                    env={},  # ended: its captured environment may hold secrets
                    message=f"cancelled at {iso_utc(now_s)} before it started",
                )
                return job.view()
            running.cancelling = True
            self._disarm(job_id)
            groups = self.launcher.terminate(running.pid)
            task = running.task
        if task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(task), self.grace_s)
            except TimeoutError:
                self.launcher.kill(groups)
                await asyncio.wait_for(asyncio.shield(task), self.grace_s)
        return await self.get(job_id)

    # --- triggers -----------------------------------------------------------------------------

    def _disarm(self, job_id: str) -> None:
        self.triggers.disarm(job_id)

    def _arm(self, job: DeferredJob) -> None:
        """Triggers for what is left of the job's plan: the launch of a queued job, and for an
        interruptible job a pause at each window's end and a resume at the next one's start (no
        pause after the last window: a job outrunning its estimate is left to finish). Only for
        a timed launcher's job: an untimed one is held (and moved) by its own system."""
        if not self.triggers.started or not self._timed(job):
            return
        job_id, windows = job.id, job.plan
        self._disarm(job_id)
        now_s = self.clock.time()
        if job.status == Status.QUEUED:
            self.triggers.at(windows[0][0], self._launch, job_id, "launch")
        if not job.interruptible:
            return
        for i, (start_s, end_s) in enumerate(windows):
            if i > 0 and start_s > now_s:
                self.triggers.at(start_s, self._resume, job_id, f"resume:{i}")
            if i < len(windows) - 1 and end_s > now_s:
                self.triggers.at(end_s, self._pause, job_id, f"pause:{i}")

    # --- events -------------------------------------------------------------------------------

    def _daemon_env(self, uid: int | None) -> dict[str, str]:
        """Where the wrapper reports. No token: it registers over the unix socket or loopback
        as its own user. The daemon's store only for a job of the daemon's own user (another
        user could not open it, and measures into its own if the daemon refuses it)."""
        env = {"CARBONWATCH_DAEMON_URL": self.daemon_url}
        if uid is None or uid == os.geteuid():
            env["CARBONWATCH_DB"] = str(self.settings.db_path)
        return env

    async def _launch(self, job_id: str) -> None:
        async with self._lock(job_id):
            job = await self._job(job_id)
            if job is None or job.status not in (Status.QUEUED, Status.LAUNCHING):
                return
            now_s = self.clock.time()
            # Stored before the wrapper starts: a restart finds the wrapper instead of
            # starting another (see _restore_launching).
            job = await self._save(job, status=Status.LAUNCHING, started_s=now_s)
            uid, gid = job.owner_uid, job.owner_gid
            try:
                proc = self.launcher.launch(
                    job.name,
                    job.kind or "training",
                    job.command,
                    cwd=job.cwd,
                    env=job.env,
                    daemon_env=self._daemon_env(uid),
                    log_path=Path(job.log_path or self.log_dir / f"{job_id}.log"),
                    deferred_id=job_id,
                    user=uid,
                    group=gid,
                    extra_groups=groups_of(uid, gid) if uid is not None and gid is not None
                    else None,
                )
            except Exception as exc:  # noqa: BLE001 - any failure to start ends the job
                # OSError (no such command), ValueError (a NUL stored by an older daemon),
                # TypeError (a malformed stored row): never a job stuck in 'launching'.
                self._disarm(job_id)
                await self._save(
                    job,
                    status=Status.FAILED,
                    ended_s=now_s,
                    env={},
                    message=f"could not start the wrapper: {type(exc).__name__}: {exc}",
                )
                return
            running = Running(proc.pid, self.launcher.created_s(proc.pid), proc)
            self._running[job_id] = running
            await self._save(
                job,
                status=Status.RUNNING,
                started_s=now_s,
                wrapper_pid=proc.pid,
                wrapper_created_s=running.created_s,
                runs=[[now_s, None]],
            )
            running.task = asyncio.create_task(self._watch(job_id))
        log.info("deferred job %s (%s) started", job_id, job.name)

    async def _pause(self, job_id: str) -> None:
        async with self._lock(job_id):
            running = self._running.get(job_id)
            job = await self._job(job_id)
            if running is None or job is None or job.status != Status.RUNNING:
                return
            running.groups = self.launcher.pause(running.pid)
            runs, ran_s = _close_run(job, self.clock.time())
            await self._save(job, status=Status.PAUSED, runs=runs, ran_s=ran_s)

    async def _resume(self, job_id: str) -> None:
        async with self._lock(job_id):
            running = self._running.get(job_id)
            job = await self._job(job_id)
            if running is None or job is None or job.status != Status.PAUSED:
                return
            self.launcher.resume(running.pid, running.groups)
            runs = [*job.runs, [self.clock.time(), None]]
            await self._save(job, status=Status.RUNNING, runs=runs)

    async def _watch(self, job_id: str) -> None:
        running = self._running[job_id]
        while True:
            if running.proc is not None:
                code = running.proc.poll()
                if code is not None:
                    break
            elif not self.launcher.alive(running.pid, running.created_s):
                code = None  # not our child: its exit code comes from the job's record
                break
            await asyncio.sleep(self.poll_s)
        try:
            await self._finish(job_id, code)
        except Exception:  # noqa: BLE001 - the task has nobody to report to
            log.exception("deferred job %s: recording its end failed", job_id)

    async def _finish(self, job_id: str, code: int | None) -> None:
        async with self._lock(job_id):
            self._disarm(job_id)
            running = self._running.pop(job_id, None)
            job = await self._job(job_id)
            if job is None or job.ended:
                return
            now_s = self.clock.time()
            runs, ran_s = _close_run(job, now_s)
            first_s = runs[0][0] if runs else (job.started_s or now_s)
            record = await self._read(
                lambda s: deferred.find_job(
                    s.conn, job.name, job.command, first_s - 1.0, now_s + 1.0
                )
            )
            if code is None and record is not None:
                code = record["exit_code"]
            if code is not None:
                code = exit_code(code)  # 128+N when signal N ended the wrapper itself
            fields: dict[str, Any] = {
                "ended_s": now_s,
                "runs": runs,
                "ran_s": ran_s,
                "exit_code": code,
                "env": {},  # ended: its captured environment may hold secrets
            }
            if running is not None and running.cancelling:
                fields["status"] = Status.CANCELLED
                fields["message"] = f"cancelled at {iso_utc(now_s)} while running"
            else:
                fields["status"] = Status.DONE if code == 0 else Status.FAILED
                if code is None:
                    fields["message"] = "it ended while no daemon watched it: exit code unknown"
            if record is None:
                fields["message"] = "no job record found for this run; see " + str(job.log_path)
            else:
                fields["job_id"] = record["id"]
                fields["realised_co2e_g"] = record["co2e_g"]
                fields["realised_baseline_co2e_g"] = await self._read(
                    lambda s: realised_baseline(s, self.settings, job, record["id"], runs)
                )
            await self._save(job, **fields)
        log.info("deferred job %s (%s) ended: %s", job_id, job.name, fields["status"])

    # --- helpers ------------------------------------------------------------------------------

    def _lock(self, job_id: str) -> asyncio.Lock:
        return self._locks.setdefault(job_id, asyncio.Lock())

    def _timed(self, job: DeferredJob) -> bool:
        launcher = self.launchers.get(job.via)
        return launcher is None or launcher.timed  # an unknown via: an older row, run here

    async def _job(self, job_id: str) -> DeferredJob | None:
        row = await self._read(lambda s: deferred.get(s.conn, job_id))
        return None if row is None else DeferredJob.from_row(row)

    async def job(self, job_id: str) -> DeferredJob:
        """The stored job; raises NotFound."""
        job = await self._job(job_id)
        if job is None:
            raise NotFound(f"no deferred job with id {job_id[:64]!r}")
        return job

    async def _save(self, job: DeferredJob, /, **changes: Any) -> DeferredJob:
        """Store ``changes`` to the job (a status change checked by ``DeferredJob.moved``);
        returns the job as stored. Only the changed columns are written."""
        new = job.moved(**changes)
        row = new.to_row()
        columns = {k: row[k] for k in changes}
        await self._write(lambda s: deferred.update(s.conn, job.id, **columns))
        return new


def _close_run(job: DeferredJob, now_s: float) -> tuple[list[list[Any]], float]:
    """The job's runs with the open one (if any) ended now, and the running time so far."""
    runs = [list(r) for r in job.runs]
    ran_s = job.ran_s
    if runs and runs[-1][1] is None:
        runs[-1][1] = now_s
        ran_s += now_s - runs[-1][0]
    return runs, ran_s
