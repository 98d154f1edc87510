"""What a deferred job is, independent of how it is served: the request (``Submission``), its
states (``Status``) and the scheduler's domain errors. No aiohttp, no APScheduler: the daemon's
routes import this without loading the scheduler's timing."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from carbonwatch.errors import CarbonwatchError


class Status(enum.StrEnum):
    """``deferred_jobs.status``. A StrEnum: stored and served as the plain string."""

    QUEUED = "queued"
    LAUNCHING = "launching"
    RUNNING = "running"
    PAUSED = "paused"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"


ACTIVE = (Status.QUEUED, Status.LAUNCHING, Status.RUNNING, Status.PAUSED)
FINAL = (Status.DONE, Status.FAILED, Status.CANCELLED)


class NotFound(CarbonwatchError):
    """No deferred job has this id."""


class Conflict(CarbonwatchError):
    """The job is in a state that does not allow the request (already finished)."""


@dataclass(frozen=True)
class Submission:
    """A job to defer, as the API received it. None means "the daemon's setting"."""

    command: list[str]
    deadline_s: float
    duration_s: float | None  # None: the mean of the name's finished runs ("auto")
    name: str = ""
    kind: str = "training"
    interruptible: bool = False
    zone: str | None = None
    provider: str | None = None
    provider_url: str | None = None
    cwd: str | None = None
    env: dict[str, str] = field(default_factory=dict)
    owner_uid: int | None = None  # who asked: the command runs as this uid and gid
    owner_gid: int | None = None
    via: str = ""  # "": the daemon launches it; "slurm": sbatch --begin (command: sbatch args)
