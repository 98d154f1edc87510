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

Timing is APScheduler 3's AsyncIOScheduler on the daemon's event loop: one date trigger per
event (launch, pause, resume). Persistence is our own ``deferred_jobs`` table, not an APScheduler
job store, because (1) the row is the record users read (plan, expected and realised carbon),
and every store write goes through the daemon's one writer thread, whereas a job store writes
from its own connection; (2) APScheduler's SQLAlchemy job store pickles the callable and its
arguments, tying stored rows to the code's layout (and needs SQLAlchemy); (3) triggers are
derived data: rebuilding them from each row's plan and status on start takes a few lines, and
that is exactly where a restart must decide what to do about events that passed while down.

Every method runs on the daemon's event loop; a per-job lock orders the transitions of one job.
"""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.date import DateTrigger

from carbonwatch.clock import Clock, SystemClock
from carbonwatch.config import Settings
from carbonwatch.errors import CarbonwatchError, InputError
from carbonwatch.grid.accounting import (
    cached_points,
    static_point,
    update_with_actuals,
)
from carbonwatch.grid.parse import iso_utc
from carbonwatch.grid.series import SeriesSource
from carbonwatch.grid.static import StaticSource
from carbonwatch.scheduler import deferred, launcher
from carbonwatch.scheduler.forecasts import (
    Fetched,
    fetch_forecast,
    plan_deferred,
    plan_fields,
    same_windows,
)
from carbonwatch.scheduler.job import ACTIVE, FINAL, Conflict, NotFound, Status, Submission
from carbonwatch.scheduler.realised import baseline_co2e_g
from carbonwatch.scheduler.slurm import POLL_S, SlurmDeferral

log = logging.getLogger(__name__)
T = TypeVar("T")

# Reads and writes as the daemon offers them: ``read(fn)`` runs fn(store) on a read-only
# connection, ``write(fn)`` runs fn(store) as one transaction on the writer thread.
StoreCall = Callable[[Callable[[Any], T]], Awaitable[T]]


@dataclass
class _Running:
    """A launched wrapper: ``proc`` is None when a previous daemon started it."""

    pid: int
    created_s: float | None
    proc: subprocess.Popen[bytes] | None
    groups: list[int] = field(default_factory=list)
    cancelling: bool = False
    task: asyncio.Task[None] | None = None


def _when(t_s: float) -> datetime:
    return datetime.fromtimestamp(t_s, UTC)


class SchedulerService:
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
    ) -> None:
        self.settings = settings
        self._read = read
        self._write = write
        self.clock = clock or SystemClock()
        self.refresh_every_s = refresh_every_s or float(
            settings.scheduler_refresh_s
        )
        self.grace_s = grace_s
        self.poll_s = poll_s
        self.log_dir = settings.db_path.parent / "deferred-logs"
        self.daemon_url = ""
        self._scheduler: AsyncIOScheduler | None = None
        self._running: dict[str, _Running] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self.slurm = SlurmDeferral(self)  # jobs deferred through Slurm (see scheduler.slurm)

    # --- lifecycle ----------------------------------------------------------------------------

    async def start(self, daemon_url: str) -> None:
        """Arm the queued jobs of a previous run, reattach to the ones it left running, and
        start the periodic refresh. ``daemon_url`` is where launched wrappers report (on a
        wildcard address, through loopback: the daemon then knows the wrapper's uid)."""
        self.daemon_url = daemon_url.replace("://0.0.0.0:", "://127.0.0.1:").replace(
            "://[::]:", "://[::1]:"
        )
        self._scheduler = AsyncIOScheduler(
            event_loop=asyncio.get_running_loop(),
            timezone=UTC,
            # Run however late (the loop may be busy, the trigger may be "now"); never twice.
            job_defaults={"misfire_grace_time": None, "coalesce": True, "max_instances": 1},
        )
        self._scheduler.start()
        self._scheduler.add_job(
            self.refresh, "interval", seconds=self.refresh_every_s, id="deferred:refresh"
        )
        self._scheduler.add_job(self.slurm.poll, "interval", seconds=POLL_S, id="deferred:slurm")
        await self._restore()

    async def stop(self) -> None:
        """Stop timing. Launched jobs keep running in their own sessions; the next start
        reattaches to them."""
        if self._scheduler is not None:
            self._scheduler.shutdown(wait=False)
            self._scheduler = None
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
        energy_j = power_w * duration_s if power_w else None
        job_id = uuid.uuid4().hex[:12]
        row: dict[str, Any] = {
            "id": job_id,
            "name": name,
            "kind": sub.kind,
            "command": list(sub.command),
            "cwd": sub.cwd,
            # carbonwatch's tokens never reach the store or the job
            "env": {k: v for k, v in sub.env.items() if k not in launcher.DAEMON_ENV},
            "owner_uid": sub.owner_uid,
            "owner_gid": sub.owner_gid,
            "zone": zone,
            "provider": fetched.provider,
            "provider_url": url if fetched.provider else "",
            "submitted_s": now_s,
            "deadline_s": sub.deadline_s,
            "duration_s": duration_s,
            "interruptible": int(sub.interruptible),
            "status": Status.QUEUED,
            "expected_energy_j": energy_j,
            "log_path": str(self.log_dir / f"{job_id}.log"),
            **plan_fields(plan, fetched, now_s, energy_j, self.settings.pue),
        }
        if fetched.errors:
            row["message"] = "forecast: " + "; ".join(fetched.errors)
        row["via"] = sub.via
        if sub.via == "slurm":  # Slurm holds it until the planned start; nothing to arm here
            row.update(await self.slurm.submit(row))
        await self._write(lambda s: deferred.insert(s.conn, row))
        if sub.via != "slurm":
            self._arm(row)
        return {**deferred.view(row), "warnings": fetched.errors}

    async def get(self, job_id: str) -> dict[str, Any]:
        row = await self._row(job_id)
        if row is None:
            raise NotFound(f"no deferred job with id {job_id[:64]!r}")
        return deferred.view(row)

    async def queue(self, active_only: bool = False, limit: int = 1000) -> list[dict[str, Any]]:
        statuses = ACTIVE if active_only else None
        rows = await self._read(lambda s: deferred.rows(s.conn, statuses, limit))
        return [deferred.view(r) for r in rows]

    async def cancel(self, job_id: str) -> dict[str, Any]:
        """A queued job is cancelled; a running or paused one is terminated (SIGTERM to its
        tree, SIGKILL after ``grace_s``) and then marked cancelled."""
        async with self._lock(job_id):
            row = await self._row(job_id)
            if row is None:
                raise NotFound(f"no deferred job with id {job_id[:64]!r}")
            if row["status"] in FINAL:
                raise Conflict(f"deferred job {job_id} already ended (status {row['status']})")
            if row.get("via") == "slurm":
                await self.slurm.cancel(row)
                return await self.get(job_id)
            running = self._running.get(job_id)
            if running is None:  # queued (or running under a process that is already gone)
                self._disarm(job_id)
                now_s = self.clock.time()
                await self._update(
                    job_id,
                    status=Status.CANCELLED,
                    ended_s=now_s,
                    env={},  # ended: its captured environment may hold secrets
                    message=f"cancelled at {iso_utc(now_s)} before it started",
                )
                return await self.get(job_id)
            running.cancelling = True
            self._disarm(job_id)
            groups = launcher.terminate(running.pid)
            task = running.task
        if task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(task), self.grace_s)
            except TimeoutError:
                launcher.kill(groups)
                await asyncio.wait_for(asyncio.shield(task), self.grace_s)
        return await self.get(job_id)

    # --- forecasts and plans ------------------------------------------------------------------

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
            await self._correct_with_actuals()
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

    async def _correct_with_actuals(self) -> None:
        """The node's accounting provider: minutes costed with its forecast, now with actuals."""
        settings = self.settings
        if settings.provider.strip().lower() in ("", "static") or not settings.zone:
            return
        from carbonwatch.grid.registry import make_provider

        provider = make_provider(settings, clock=self.clock)
        if provider is None:
            return
        changed = await self._write(
            lambda s: update_with_actuals(s, settings.zone, provider.name, pue=settings.pue)
        )
        if changed:
            log.info("corrected %d forecast-costed minutes with actuals", changed)

    # --- triggers -----------------------------------------------------------------------------

    def _at(
        self, t_s: float, fn: Callable[[str], Awaitable[None]], job_id: str, event: str
    ) -> None:
        assert self._scheduler is not None
        self._scheduler.add_job(
            fn,
            DateTrigger(run_date=_when(max(t_s, self.clock.time()))),
            args=[job_id],
            id=f"{job_id}:{event}",
            replace_existing=True,
        )

    def _disarm(self, job_id: str) -> None:
        if self._scheduler is None:
            return
        for job in self._scheduler.get_jobs():
            if job.id.startswith(f"{job_id}:"):
                job.remove()

    def _arm(self, row: dict[str, Any]) -> None:
        """Triggers for what is left of the row's plan: the launch of a queued job, and for an
        interruptible job a pause at each window's end and a resume at the next one's start (no
        pause after the last window: a job outrunning its estimate is left to finish)."""
        if self._scheduler is None:
            return
        if row.get("via") == "slurm":  # Slurm starts it: move the Slurm job instead
            self.slurm.moved(row)
            return
        job_id, windows = row["id"], row["plan"]
        self._disarm(job_id)
        now_s = self.clock.time()
        if row["status"] == Status.QUEUED:
            self._at(windows[0][0], self._launch, job_id, "launch")
        if not row["interruptible"]:
            return
        for i, (start_s, end_s) in enumerate(windows):
            if i > 0 and start_s > now_s:
                self._at(start_s, self._resume, job_id, f"resume:{i}")
            if i < len(windows) - 1 and end_s > now_s:
                self._at(end_s, self._pause, job_id, f"pause:{i}")

    # --- restart ------------------------------------------------------------------------------

    async def _restore(self) -> None:
        rows = await self._read(lambda s: deferred.rows(s.conn, ACTIVE))
        now_s = self.clock.time()
        for row in rows:
            if row.get("via") == "slurm":
                continue  # Slurm keeps it; the poll follows it to its end
            try:
                await self._restore_one(row, now_s)
            except Exception as exc:  # noqa: BLE001 - one bad row must not stop the daemon
                # A row no current daemon would store (a deadline in year 33658, a NUL in its
                # argv): it is failed, with the reason, and the others are restored.
                log.error("deferred job %s cannot be restored (%s: %s); marked failed",
                          row["id"], type(exc).__name__, exc)
                self._disarm(row["id"])
                self._running.pop(row["id"], None)
                await self._update(row["id"], status=Status.FAILED, ended_s=now_s, env={},
                                   message=f"failed at restart: {type(exc).__name__}: {exc}")
        if rows:
            log.info("deferred jobs: restored %d", len(rows))

    async def _restore_one(self, row: dict[str, Any], now_s: float) -> None:
        if row["status"] == Status.QUEUED:
            await self._restore_queued(row, now_s)
        elif row["status"] == Status.LAUNCHING:
            await self._restore_launching(row, now_s)
        elif launcher.alive(row["wrapper_pid"] or 0, row.get("wrapper_created_s")):
            await self._reattach(row, now_s)
        else:  # it ended while no daemon watched it
            self._running[row["id"]] = _Running(
                row["wrapper_pid"] or 0, row.get("wrapper_created_s"), None
            )
            await self._finish(row["id"], None)

    async def _restore_queued(self, row: dict[str, Any], now_s: float) -> None:
        start_s = row["plan"][0][0]
        if start_s >= now_s:
            self._arm(row)
            return
        # Its start passed while the daemon was down: start now, as one contiguous run.
        late_s = now_s + row["duration_s"] - row["deadline_s"]
        message = (
            f"the daemon was down at the planned start {iso_utc(start_s)}; started at "
            f"{iso_utc(now_s)}"
        )
        if late_s > 0:
            message += f"; it will end about {late_s:.0f} s after its deadline"
        plan = [[now_s, now_s + row["duration_s"]]]
        await self._update(row["id"], plan=plan, message=message)
        self._arm({**row, "plan": plan})

    async def _restore_launching(self, row: dict[str, Any], now_s: float) -> None:
        """A previous daemon stopped between storing the launch and storing the wrapper's pid:
        adopt the wrapper if it started, else launch the job now (once)."""
        job_id = row["id"]
        found = launcher.find(job_id)
        if found is not None:
            pid, created = found
            fields = {
                "status": Status.RUNNING,
                "wrapper_pid": pid,
                "wrapper_created_s": created,
                "runs": [[row.get("started_s") or created, None]],
            }
            await self._update(job_id, **fields)
            log.info("deferred job %s: adopted its wrapper (pid %d)", job_id, pid)
            await self._reattach({**row, **fields}, now_s)
            return
        started_s = row.get("started_s") or now_s
        job = await self._read(
            lambda s: deferred.find_job(
                s.conn, row["name"], row["command"], started_s - 1.0, now_s + 1.0
            )
        )
        if job is not None:  # the wrapper started, ran and ended while no daemon watched it
            self._running[job_id] = _Running(0, None, None)
            await self._finish(job_id, None)
            return
        await self._launch(job_id)
        self._arm(row)  # an interruptible job's pauses and resumes

    async def _reattach(self, row: dict[str, Any], now_s: float) -> None:
        """A wrapper a previous daemon started is still alive: watch it, and put an
        interruptible one in the state its plan says for now."""
        job_id = row["id"]
        running = _Running(row["wrapper_pid"], row.get("wrapper_created_s"), None)
        self._running[job_id] = running
        running.task = asyncio.create_task(self._watch(job_id))
        if not row["interruptible"]:
            return
        windows = row["plan"]
        inside = any(s <= now_s < e for s, e in windows) or now_s >= windows[-1][1]
        if row["status"] == Status.PAUSED and inside:
            await self._resume(job_id)
        elif row["status"] == Status.RUNNING and not inside:
            await self._pause(job_id)
        self._arm(row)

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
            row = await self._row(job_id)
            if row is None or row["status"] not in (Status.QUEUED, Status.LAUNCHING):
                return
            now_s = self.clock.time()
            # Stored before the wrapper starts: a restart finds the wrapper instead of
            # starting another (see _restore_launching).
            await self._update(job_id, status=Status.LAUNCHING, started_s=now_s)
            uid, gid = row.get("owner_uid"), row.get("owner_gid")
            try:
                proc = launcher.launch(
                    row["name"],
                    row.get("kind") or "training",
                    row["command"],
                    cwd=row["cwd"],
                    env=row["env"] or {},
                    daemon_env=self._daemon_env(uid),
                    log_path=Path(row["log_path"]),
                    deferred_id=job_id,
                    user=uid,
                    group=gid,
                    extra_groups=launcher.groups_of(uid, gid) if uid is not None and gid is not None
                    else None,
                )
            except Exception as exc:  # noqa: BLE001 - any failure to start ends the job
                # OSError (no such command), ValueError (a NUL stored by an older daemon),
                # TypeError (a malformed stored row): never a job stuck in 'launching'.
                self._disarm(job_id)
                await self._update(
                    job_id,
                    status=Status.FAILED,
                    ended_s=now_s,
                    env={},
                    message=f"could not start the wrapper: {type(exc).__name__}: {exc}",
                )
                return
            running = _Running(proc.pid, launcher.created_s(proc.pid), proc)
            self._running[job_id] = running
            await self._update(
                job_id,
                status=Status.RUNNING,
                started_s=now_s,
                wrapper_pid=proc.pid,
                wrapper_created_s=running.created_s,
                runs=[[now_s, None]],
            )
            running.task = asyncio.create_task(self._watch(job_id))
        log.info("deferred job %s (%s) started", job_id, row["name"])

    async def _pause(self, job_id: str) -> None:
        async with self._lock(job_id):
            running = self._running.get(job_id)
            row = await self._row(job_id)
            if running is None or row is None or row["status"] != Status.RUNNING:
                return
            running.groups = launcher.pause(running.pid)
            now_s = self.clock.time()
            runs, ran_s = _close_run(row, now_s)
            await self._update(job_id, status=Status.PAUSED, runs=runs, ran_s=ran_s)

    async def _resume(self, job_id: str) -> None:
        async with self._lock(job_id):
            running = self._running.get(job_id)
            row = await self._row(job_id)
            if running is None or row is None or row["status"] != Status.PAUSED:
                return
            launcher.resume(running.pid, running.groups)
            runs = [*row["runs"], [self.clock.time(), None]]
            await self._update(job_id, status=Status.RUNNING, runs=runs)

    async def _watch(self, job_id: str) -> None:
        running = self._running[job_id]
        while True:
            if running.proc is not None:
                code = running.proc.poll()
                if code is not None:
                    break
            elif not launcher.alive(running.pid, running.created_s):
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
            row = await self._row(job_id)
            if row is None:
                return
            now_s = self.clock.time()
            runs, ran_s = _close_run(row, now_s)
            first_s = runs[0][0] if runs else (row.get("started_s") or now_s)
            job = await self._read(
                lambda s: deferred.find_job(
                    s.conn, row["name"], row["command"], first_s - 1.0, now_s + 1.0
                )
            )
            if code is None and job is not None:
                code = job["exit_code"]
            if code is not None and code < 0:
                code = 128 - code  # a signal ended the wrapper itself
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
            if job is None:
                fields["message"] = "no job record found for this run; see " + str(
                    row.get("log_path")
                )
            else:
                fields["job_id"] = job["id"]
                fields["realised_co2e_g"] = job["co2e_g"]
                fields["realised_baseline_co2e_g"] = await self._read(
                    lambda s: self._realised_baseline(s, row, job["id"], runs)
                )
            await self._update(job_id, **fields)
        log.info("deferred job %s (%s) ended: %s", job_id, row["name"], fields["status"])

    def _realised_baseline(
        self, store: Any, row: dict[str, Any], job_id: str, runs: list[list[float]]
    ) -> float | None:
        """The job's measured energy profile costed as if it had run from submit."""
        if not runs:
            return None
        minutes = deferred.job_minutes(store.conn, job_id)
        if not minutes:
            return 0.0  # no energy measured: nothing to cost at any time
        fallback = StaticSource(static_point(self.settings, row["zone"] or ""))
        source: Any = fallback
        if row["provider"]:
            lo_s = row["submitted_s"] - 3600.0
            hi_s = row["submitted_s"] + sum(e - s for s, e in runs) + 3600.0
            source = SeriesSource(
                cached_points(store, row["zone"] or "", row["provider"], lo_s, hi_s), fallback
            )
        return baseline_co2e_g(
            minutes, [(s, e) for s, e in runs], row["submitted_s"], source, self.settings.pue
        )

    # --- helpers ------------------------------------------------------------------------------

    def _lock(self, job_id: str) -> asyncio.Lock:
        return self._locks.setdefault(job_id, asyncio.Lock())

    async def _row(self, job_id: str) -> dict[str, Any] | None:
        return await self._read(lambda s: deferred.get(s.conn, job_id))

    async def _update(self, deferred_id: str, /, **fields: Any) -> None:
        await self._write(lambda s: deferred.update(s.conn, deferred_id, **fields))


def _close_run(row: dict[str, Any], now_s: float) -> tuple[list[list[float]], float]:
    """The row's runs with the open one (if any) ended now, and the running time so far."""
    runs = [list(r) for r in row.get("runs") or []]
    ran_s = float(row.get("ran_s") or 0.0)
    if runs and runs[-1][1] is None:
        runs[-1][1] = now_s
        ran_s += now_s - runs[-1][0]
    return runs, ran_s
