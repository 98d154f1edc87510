"""Deferral through Slurm: the plan's start becomes ``sbatch --begin``; Slurm starts the job.

``carbonwatch submit --via slurm --deadline D --duration T -- SBATCH-ARGS...`` plans the window
as for any deferred job, then submits ``sbatch --parsable --begin=START --deadline=D
[--time=T] SBATCH-ARGS`` (``--time`` only when the arguments give none: ``--deadline`` needs
a time limit to judge by). The Slurm job id is stored on the row. Afterwards:

- a newer forecast that moves the plan moves the job: ``scontrol update JobId=ID
  StartTime=START`` (only while Slurm still holds it pending);
- ``carbonwatch cancel`` is ``scancel ID``;
- the daemon polls ``scontrol show job`` every few seconds: the row follows the job
  (pending: queued; running; completed: done; failed, timeout, ...: failed; cancelled) and
  ``queue`` shows Slurm's state;
- energy: the node's Slurm prolog opens a carbonwatch job with the identity
  ``slurm:<job id>`` (deploy/slurm/prolog.sh) and the epilog ends it; the finished row takes
  that job's measured gCO2e, as a daemon-launched job takes its wrapper's.

Slurm reads absolute times in the caller's local time. sbatch exports its environment to the
job, so it keeps the submitter's and gets relative times (``--begin=now+N``, N rounded up, so the
job never starts before its window; ``--deadline=now+M``, M rounded down, never after its
deadline); scontrol and scancel run with ``TZ=UTC`` and absolute UTC times.

:class:`SlurmCli` is the seam (the commands); :class:`SlurmDeferral` the policy.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import shutil
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from carbonwatch.errors import CarbonwatchError, InputError
from carbonwatch.scheduler.costing import realised_baseline
from carbonwatch.scheduler.job import ACTIVE, Status
from carbonwatch.scheduler.launcher import DAEMON_ENV, groups_of
from carbonwatch.store import deferred
from carbonwatch.times import iso_utc

if TYPE_CHECKING:
    from carbonwatch.scheduler.service import SchedulerService

log = logging.getLogger(__name__)
POLL_S = 2.0
_TIMEOUT_S = 30.0
# Slurm job states and what they mean for the deferred row.
_PENDING = {"PENDING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "RESV_DEL_HOLD", "SUSPENDED"}
_RUNNING = {"RUNNING", "CONFIGURING", "COMPLETING", "STAGE_OUT", "SIGNALING", "RESIZING"}
_DONE = {"COMPLETED"}
_CANCELLED = {"CANCELLED", "DEADLINE", "REVOKED"}
# Anything else that is final (FAILED, TIMEOUT, NODE_FAIL, OUT_OF_MEMORY, BOOT_FAIL,
# PREEMPTED) is a failure.


class SlurmError(CarbonwatchError):
    """A Slurm command failed; the message is its own."""


def slurm_time(t_s: float) -> str:
    """Unix seconds as Slurm's ``YYYY-MM-DDTHH:MM:SS`` in UTC, rounded up (never early)."""
    return datetime.fromtimestamp(math.ceil(t_s), UTC).strftime("%Y-%m-%dT%H:%M:%S")


def _gives_time(args: Sequence[str]) -> bool:
    return any(a in ("-t", "--time") or a.startswith(("--time=", "-t")) for a in args)


@dataclass(frozen=True)
class SlurmJob:
    job_id: str
    state: str  # Slurm's JobState (PENDING, RUNNING, COMPLETED, ...)
    start_s: float | None
    end_s: float | None
    exit_code: int | None


def _parse_time(raw: str | None) -> float | None:
    if not raw or raw in ("Unknown", "None", "N/A"):
        return None
    try:
        return datetime.fromisoformat(raw).replace(tzinfo=UTC).timestamp()
    except ValueError:
        return None


class SlurmCli:
    """sbatch, scontrol and scancel as subprocesses (argv, never a shell), times in UTC.

    ``env``: extra environment for every command (e.g. ``SLURM_CONF``)."""

    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        self.env = dict(env or {})

    def _run(
        self, argv: list[str], *, env: Mapping[str, str] | None = None, cwd: str | None = None,
        user: int | None = None, group: int | None = None,
    ) -> str:
        path = shutil.which(argv[0])
        if path is None:
            raise SlurmError(f"{argv[0]} not found: is Slurm installed on the daemon's host?")
        if env is None:  # scontrol, scancel: the daemon's environment, times in UTC
            full = {**os.environ, **self.env, "TZ": "UTC"}
        else:
            # sbatch exports its environment to the job: the submitter's only, never the
            # daemon's (it may hold the daemon's tokens).
            full = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **env, **self.env}
        drop: dict[str, Any] = {}
        if user is not None and user != os.geteuid():
            # A root daemon submits as the submitter, never as root for someone else: the Slurm
            # job is theirs (their limits, their accounting, their files).
            extra = groups_of(user, group) if group is not None else None
            drop = {"user": user, "group": group, "extra_groups": extra or []}
        try:
            done = subprocess.run(  # noqa: S603 - argv, never a shell
                [path, *argv[1:]], env=full, cwd=cwd or None, capture_output=True, text=True,
                timeout=_TIMEOUT_S, check=False, **drop,
            )
        except (OSError, subprocess.SubprocessError) as exc:
            raise SlurmError(f"{argv[0]}: {exc}") from exc
        if done.returncode != 0:
            message = (done.stderr or done.stdout).strip().splitlines()
            raise SlurmError(f"{argv[0]}: {message[-1] if message else f'exit {done.returncode}'}")
        return done.stdout

    def submit(
        self, args: Sequence[str], *, begin_s: float, deadline_s: float, duration_s: float,
        env: Mapping[str, str], cwd: str | None, user: int | None = None,
        group: int | None = None,
    ) -> str:
        now_s = time.time()
        begin = math.ceil(begin_s - now_s)
        argv = ["sbatch", "--parsable", f"--begin=now+{begin}" if begin > 0 else "--begin=now",
                f"--deadline=now+{max(0, math.floor(deadline_s - now_s))}"]
        if not _gives_time(args):
            argv.append(f"--time={max(1, math.ceil(duration_s / 60.0))}")
        out = self._run([*argv, *args], env=env, cwd=cwd, user=user, group=group)
        job_id = out.strip().split(";")[0]
        if not job_id.isdigit():
            raise SlurmError(f"sbatch answered {out.strip()[:200]!r}, not a job id")
        return job_id

    def move(self, job_id: str, begin_s: float) -> None:
        self._run(["scontrol", "update", f"JobId={job_id}", f"StartTime={slurm_time(begin_s)}"])

    def cancel(self, job_id: str) -> None:
        self._run(["scancel", job_id])

    def show(self, job_id: str) -> SlurmJob | None:
        """The job as ``scontrol show job`` has it; None once Slurm has forgotten it."""
        try:
            out = self._run(["scontrol", "show", "job", "--oneliner", job_id])
        except SlurmError as exc:
            if "Invalid job id" in str(exc):
                return None
            raise
        fields: dict[str, str] = {}
        for token in out.split():
            key, sep, value = token.partition("=")
            if sep and key not in fields:
                fields[key] = value
        code = fields.get("ExitCode", "")
        exit_code: int | None = None
        if ":" in code:
            status, signal = code.split(":", 1)
            if status.isdigit() and signal.isdigit():
                exit_code = 128 + int(signal) if int(signal) else int(status)
        return SlurmJob(
            job_id,
            fields.get("JobState", "UNKNOWN"),
            _parse_time(fields.get("StartTime")),
            _parse_time(fields.get("EndTime")),
            exit_code,
        )


class SlurmDeferral:
    """The scheduler service's Slurm side: submit, move, cancel, and follow jobs to their end."""

    def __init__(self, service: SchedulerService, cli: SlurmCli | None = None) -> None:
        self.service = service
        self.cli = cli or SlurmCli()
        self._moving: set[asyncio.Task[None]] = set()

    async def submit(self, row: dict[str, Any]) -> dict[str, Any]:
        """sbatch the row's job for its planned start, as its owner; the fields to store (raises
        InputError with Slurm's own message when sbatch refuses)."""
        env = {k: v for k, v in (row.get("env") or {}).items() if k not in DAEMON_ENV}
        # `carbonwatch run` in the job reports to this daemon's address (on another node, the
        # same address is that node's daemon when it listens there too); no token, no store.
        env["CARBONWATCH_DAEMON_URL"] = self.service.daemon_url
        if "SLURM_CONF" not in env and os.environ.get("SLURM_CONF"):
            env["SLURM_CONF"] = os.environ["SLURM_CONF"]  # the cluster the daemon was given
        try:
            job_id = await asyncio.to_thread(
                self.cli.submit,
                row["command"],
                begin_s=row["plan"][0][0],
                deadline_s=row["deadline_s"],
                duration_s=row["duration_s"],
                env=env,
                cwd=row.get("cwd"),
                user=row.get("owner_uid"),
                group=row.get("owner_gid"),
            )
        except SlurmError as exc:
            raise InputError(f"Slurm refused the job: {exc}") from exc
        return {"slurm_job_id": job_id, "slurm_state": "PENDING",
                "message": f"submitted to Slurm as job {job_id}, to begin at "
                           f"{iso_utc(math.ceil(row['plan'][0][0]))}"}

    def moved(self, row: dict[str, Any]) -> None:
        """A re-plan moved the row's start: move the Slurm job (in the background)."""
        if not row.get("slurm_job_id") or row.get("status") != Status.QUEUED:
            return
        task = asyncio.get_running_loop().create_task(self._move(row))
        self._moving.add(task)
        task.add_done_callback(self._moving.discard)

    async def _move(self, row: dict[str, Any]) -> None:
        start_s = row["plan"][0][0]
        try:
            await asyncio.to_thread(self.cli.move, row["slurm_job_id"], start_s)
        except SlurmError as exc:
            log.warning("deferred job %s: could not move Slurm job %s: %s",
                        row["id"], row["slurm_job_id"], exc)
            await self.service._update(row["id"], message=f"re-planned, but Slurm kept the "
                                       f"old start: {exc}")
            return
        log.info("deferred job %s: Slurm job %s moved to %s", row["id"], row["slurm_job_id"],
                 iso_utc(start_s))

    async def cancel(self, row: dict[str, Any]) -> None:
        job_id = row.get("slurm_job_id")
        if job_id:
            try:
                await asyncio.to_thread(self.cli.cancel, job_id)
            except SlurmError as exc:
                raise InputError(f"scancel {job_id}: {exc}") from exc
        now_s = self.service.clock.time()
        await self.service._update(
            row["id"], status=Status.CANCELLED, ended_s=now_s, slurm_state="CANCELLED", env={},
            message=f"cancelled at {iso_utc(now_s)} (scancel {job_id})",
        )

    async def poll(self) -> None:
        """Follow every active Slurm-deferred row's job (one scontrol call each)."""
        rows = await self.service._read(lambda s: deferred.rows(s.conn, ACTIVE))
        for row in rows:
            if row.get("via") != "slurm" or not row.get("slurm_job_id"):
                continue
            try:
                job = await asyncio.to_thread(self.cli.show, row["slurm_job_id"])
                await self._follow(row, job)
            except Exception:  # noqa: BLE001 - one job's trouble must not stop the others
                log.exception("deferred job %s: following Slurm job failed", row["id"])

    async def _follow(self, row: dict[str, Any], job: SlurmJob | None) -> None:
        update: dict[str, Any] = {}
        state = "UNKNOWN" if job is None else job.state
        if state != row.get("slurm_state"):
            update["slurm_state"] = state
        if job is not None and state in _RUNNING and row["status"] == Status.QUEUED:
            started = job.start_s or self.service.clock.time()
            update.update(status=Status.RUNNING, started_s=started, runs=[[started, None]])
        if state in _PENDING or state in _RUNNING:
            if update:
                await self.service._update(row["id"], **update)
            return
        # Final (or forgotten by Slurm): record the end and the measured job.
        now_s = self.service.clock.time()
        started = (job.start_s if job else None) or row.get("started_s")
        ended = (job.end_s if job else None) or now_s
        status = (Status.DONE if state in _DONE else Status.CANCELLED if state in _CANCELLED
                  else "failed")
        runs = [[started, ended]] if started is not None else []
        update.update(status=status, ended_s=ended, runs=runs, env={},  # may hold secrets
                      ran_s=(ended - started) if started is not None else 0.0,
                      exit_code=job.exit_code if job else None)
        if job is None:
            update["message"] = "Slurm no longer knows the job (MinJobAge passed): state unknown"
        elif state == "DEADLINE":
            update["message"] = ("Slurm cancelled it: it could not end by its deadline (its time "
                                 "limit, whole minutes, did not fit)")
        record = await self.service._read(
            lambda s: s.conn.execute(
                "SELECT id, co2e_g, energy_j, status FROM jobs WHERE identity = ?"
                " ORDER BY started_s DESC LIMIT 1", [f"slurm:{row['slurm_job_id']}"],
            ).fetchone()
        )
        if record is not None and record[3] != Status.RUNNING:
            job_id = record[0]
            update.update(job_id=job_id, realised_co2e_g=record[1])
            update["realised_baseline_co2e_g"] = await self.service._read(
                lambda s: realised_baseline(s, self.service.settings, row, job_id, runs)
            )
        elif started is not None and status != Status.CANCELLED:
            # Ended in Slurm, but the epilog has not ended the carbonwatch job yet: look again.
            if now_s - ended < 60.0:
                if update.get("slurm_state"):
                    await self.service._update(row["id"], slurm_state=state)
                return
            update["message"] = (f"no measured job slurm:{row['slurm_job_id']} on this node "
                                 "(is deploy/slurm/prolog.sh configured as the Prolog?)")
        await self.service._update(row["id"], **update)
