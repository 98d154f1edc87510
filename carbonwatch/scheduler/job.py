"""What a deferred job is, independent of how it is served: the request (``Submission``), the
stored job (``DeferredJob``, its ``Status`` and the transitions between them) and the
scheduler's domain errors. No aiohttp, no timing: the daemon's routes import this without
loading the scheduler's service."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any

from carbonwatch.errors import CarbonwatchError
from carbonwatch.times import iso_utc_or_none


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


def _pct(part: float | None, whole: float | None) -> float | None:
    if part is None or whole is None or whole <= 0:
        return None
    return 100.0 * (1.0 - part / whole)


def _iso(t_s: Any) -> str | None:
    return iso_utc_or_none(t_s, exact=False)


# Which status may follow which. A final status has no successor; ``launching`` may repeat (a
# restart launches a job whose wrapper never started); ``queued -> running`` and ``queued ->
# done`` are Slurm's (it starts the job; a poll may first see it ended).
_NEXT: dict[Status, frozenset[Status]] = {
    Status.QUEUED: frozenset({Status.LAUNCHING, Status.RUNNING, *FINAL}),
    Status.LAUNCHING: frozenset({Status.LAUNCHING, Status.RUNNING, *FINAL}),
    Status.RUNNING: frozenset({Status.PAUSED, *FINAL}),
    Status.PAUSED: frozenset({Status.RUNNING, *FINAL}),
    **{s: frozenset() for s in FINAL},
}


class BadTransition(Conflict):
    """A status change the job's life does not allow (a bug, or a race lost to a cancel)."""


@dataclass(frozen=True)
class DeferredJob:
    """One ``deferred_jobs`` row, typed. The store keeps plain columns (JSON for the lists);
    :meth:`from_row` and :meth:`to_row` convert, so the encoding at rest is unchanged."""

    id: str
    name: str
    command: list[str]
    submitted_s: float
    deadline_s: float
    duration_s: float
    status: Status
    plan: list[tuple[float, float]]  # [(start_s, end_s), ...]: the windows it may run in
    kind: str = "training"
    cwd: str | None = None
    env: dict[str, str] = field(default_factory=dict)  # emptied once it ends (secrets)
    zone: str | None = None
    interruptible: bool = False
    owner_uid: int | None = None
    owner_gid: int | None = None
    via: str = ""  # "": the daemon launches it; "slurm": sbatch --begin
    log_path: str | None = None
    # what the plan was made on and what it expects
    provider: str = ""
    provider_url: str = ""
    plan_basis: str | None = None  # forecast | no_forecast
    plan_signal: str | None = None  # average | marginal
    forecast_via: str | None = None  # provider | cache | static
    planned_at_s: float | None = None
    forecast_fetched_at_s: float | None = None
    plan_intensity_g_per_kwh: float | None = None
    baseline_intensity_g_per_kwh: float | None = None
    saving_band_g_per_kwh: float | None = None
    expected_energy_j: float | None = None
    expected_co2e_g: float | None = None
    expected_baseline_co2e_g: float | None = None
    # what happened
    started_s: float | None = None
    ended_s: float | None = None
    runs: list[list[float | None]] = field(default_factory=list)  # [[start_s, end_s|None]]
    ran_s: float = 0.0
    exit_code: int | None = None
    wrapper_pid: int | None = None
    wrapper_created_s: float | None = None
    slurm_job_id: str | None = None
    slurm_state: str | None = None
    job_id: str | None = None  # the measured ``jobs`` row
    realised_co2e_g: float | None = None
    realised_baseline_co2e_g: float | None = None
    message: str | None = None

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> DeferredJob:
        """From a row as :mod:`carbonwatch.store.deferred` returns it (JSON decoded). Columns
        this version does not know are left out; NULLs of defaulted columns take the default."""
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in row.items() if k in known and v is not None}
        values["status"] = Status(row["status"])
        # Taken as stored: a malformed plan of an older daemon's row is still shown (its times
        # as None), and restarting it fails the job with the reason.
        values["plan"] = [(s, e) for s, e in row.get("plan") or []]
        values["interruptible"] = bool(row.get("interruptible"))
        values["runs"] = [list(r) for r in row.get("runs") or []]
        values["env"] = dict(row.get("env") or {})
        values["ran_s"] = float(row.get("ran_s") or 0.0)
        return cls(**values)

    def to_row(self) -> dict[str, Any]:
        """The row's columns, as :func:`carbonwatch.store.deferred.insert` stores them."""
        row = {f.name: getattr(self, f.name) for f in fields(self)}
        row["status"] = str(self.status)
        row["plan"] = [[s, e] for s, e in self.plan]
        row["interruptible"] = int(self.interruptible)
        return row

    def moved(self, **changes: Any) -> DeferredJob:
        """This job with ``changes`` applied; a ``status`` change must be one its life allows
        (raises :class:`BadTransition`). The one place status transitions are checked."""
        unknown = set(changes) - {f.name for f in fields(self)}
        if unknown:
            raise TypeError(f"not a deferred_jobs column: {', '.join(sorted(unknown))}")
        new = changes.get("status")
        if new is not None:
            new = changes["status"] = Status(new)
            if new not in _NEXT[self.status]:
                raise BadTransition(
                    f"deferred job {self.id}: {self.status} cannot become {new}"
                )
        if "plan" in changes:
            changes["plan"] = [(float(s), float(e)) for s, e in changes["plan"]]
        return replace(self, **changes)

    @property
    def ended(self) -> bool:
        return self.status in FINAL

    def view(self) -> dict[str, Any]:
        """The API's (and ``carbonwatch queue --json``'s) picture of the job. The captured
        environment is never shown: it may hold secrets."""
        base, band = self.baseline_intensity_g_per_kwh, self.saving_band_g_per_kwh
        return {
            "id": self.id,
            "name": self.name,
            "kind": self.kind,
            "status": str(self.status),
            "command": self.command,
            "cwd": self.cwd,
            "owner_uid": self.owner_uid,
            "zone": self.zone,
            "provider": self.provider,
            "interruptible": self.interruptible,
            "submitted": _iso(self.submitted_s),
            "deadline": _iso(self.deadline_s),
            "deadline_s": self.deadline_s,
            "duration_s": self.duration_s,
            "plan": [
                {"start": _iso(s), "end": _iso(e), "start_s": s, "end_s": e} for s, e in self.plan
            ],
            "plan_basis": self.plan_basis,
            "plan_signal": self.plan_signal,  # average | marginal: what the plan minimised
            "forecast_via": self.forecast_via,
            "planned_at": _iso(self.planned_at_s),
            "plan_intensity_g_per_kwh": self.plan_intensity_g_per_kwh,
            "baseline_intensity_g_per_kwh": base,
            "expected_energy_j": self.expected_energy_j,
            "expected_co2e_g": self.expected_co2e_g,
            "expected_baseline_co2e_g": self.expected_baseline_co2e_g,
            "expected_saving_pct": _pct(self.plan_intensity_g_per_kwh, base),
            # One sigma of the expected saving from the provider's measured forecast error, in
            # points of the same percentage (None: the error is unknown).
            "saving_band_pct": None if band is None or not base else 100.0 * band / base,
            "via": self.via,
            "slurm_job_id": self.slurm_job_id,
            "slurm_state": self.slurm_state,
            "started_s": self.started_s,
            "ended_s": self.ended_s,
            "runs": self.runs,
            "exit_code": self.exit_code,
            "job_id": self.job_id,
            "realised_co2e_g": self.realised_co2e_g,
            "realised_baseline_co2e_g": self.realised_baseline_co2e_g,
            "realised_saving_pct": _pct(self.realised_co2e_g, self.realised_baseline_co2e_g),
            "message": self.message,
            "log_path": self.log_path,
        }
