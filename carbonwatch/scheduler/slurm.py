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

:class:`SlurmCli` is the seam to the commands; :class:`SlurmLauncher` the scheduler's
launcher for ``via="slurm"``; what the row does on each poll is
:mod:`carbonwatch.scheduler.follow`.
"""

from __future__ import annotations

import asyncio
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
from carbonwatch.scheduler.job import Status
from carbonwatch.scheduler.launcher import DAEMON_ENV, Seen, groups_of
from carbonwatch.times import iso_utc

if TYPE_CHECKING:
    from carbonwatch.scheduler.job import DeferredJob

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


def _status(state: str) -> Status:
    """What a Slurm JobState means for the deferred row."""
    if state in _PENDING:
        return Status.QUEUED
    if state in _RUNNING:
        return Status.RUNNING
    if state in _DONE:
        return Status.DONE
    return Status.CANCELLED if state in _CANCELLED else Status.FAILED


class SlurmLauncher:
    """The ``via="slurm"`` :class:`~carbonwatch.scheduler.launcher.Launcher`: untimed, Slurm
    holds the job until its planned start. ``cli`` is the seam to the Slurm commands."""

    timed = False

    def __init__(self, cli: SlurmCli | None = None) -> None:
        self.cli = cli or SlurmCli()

    def identity(self, job: DeferredJob) -> str:
        return f"slurm:{job.slurm_job_id}"  # opened by deploy/slurm/prolog.sh

    async def submit(self, job: DeferredJob, daemon_url: str) -> dict[str, Any]:
        """sbatch the job for its planned start, as its owner; the fields to store (raises
        InputError with Slurm's own message when sbatch refuses)."""
        env = {k: v for k, v in job.env.items() if k not in DAEMON_ENV}
        # `carbonwatch run` in the job reports to this daemon's address (on another node, the
        # same address is that node's daemon when it listens there too); no token, no store.
        env["CARBONWATCH_DAEMON_URL"] = daemon_url
        if "SLURM_CONF" not in env and os.environ.get("SLURM_CONF"):
            env["SLURM_CONF"] = os.environ["SLURM_CONF"]  # the cluster the daemon was given
        begin_s = job.plan[0][0]
        try:
            job_id = await asyncio.to_thread(
                self.cli.submit, job.command, begin_s=begin_s, deadline_s=job.deadline_s,
                duration_s=job.duration_s, env=env, cwd=job.cwd, user=job.owner_uid,
                group=job.owner_gid,
            )
        except SlurmError as exc:
            raise InputError(f"Slurm refused the job: {exc}") from exc
        return {"slurm_job_id": job_id, "slurm_state": "PENDING",
                "message": f"submitted to Slurm as job {job_id}, to begin at "
                           f"{iso_utc(math.ceil(begin_s))}"}

    async def move(self, job: DeferredJob) -> None:
        if job.slurm_job_id:
            await asyncio.to_thread(self.cli.move, job.slurm_job_id, job.plan[0][0])

    async def cancel(self, job: DeferredJob) -> None:
        if job.slurm_job_id:
            try:
                await asyncio.to_thread(self.cli.cancel, job.slurm_job_id)
            except SlurmError as exc:
                raise InputError(f"scancel {job.slurm_job_id}: {exc}") from exc

    async def look(self, job: DeferredJob) -> Seen | None:
        if not job.slurm_job_id:
            return None
        found = await asyncio.to_thread(self.cli.show, job.slurm_job_id)
        if found is None:
            return None
        note = None
        if found.state == "DEADLINE":
            note = ("Slurm cancelled it: it could not end by its deadline (its time limit, whole "
                    "minutes, did not fit)")
        return Seen(found.state, _status(found.state), found.start_s, found.end_s,
                    found.exit_code, note)
