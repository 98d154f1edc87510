"""What a deferred job is, independent of how it is served: the request (``Submission``), its
states (``Status``) and the scheduler's domain errors. No aiohttp, no APScheduler: the daemon's
routes import this without loading the scheduler's timing."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from carbonwatch.errors import CarbonwatchError
from carbonwatch.times import iso_utc


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
    """iso_utc, or None for a stored time no datetime can hold (rows of older daemons)."""
    try:
        return iso_utc(t_s)
    except (ValueError, OverflowError, OSError, TypeError):
        return None


def view(row: Mapping[str, Any]) -> dict[str, Any]:
    """The API's (and ``carbonwatch queue --json``'s) picture of a deferred job. The captured
    environment is never shown: it may hold secrets."""
    plan = row.get("plan") or []
    saving = _pct(row.get("plan_intensity_g_per_kwh"), row.get("baseline_intensity_g_per_kwh"))
    base, band = row.get("baseline_intensity_g_per_kwh"), row.get("saving_band_g_per_kwh")
    return {
        "id": row["id"],
        "name": row["name"],
        "kind": row.get("kind"),
        "status": row["status"],
        "command": row["command"],
        "cwd": row.get("cwd"),
        "owner_uid": row.get("owner_uid"),
        "zone": row.get("zone"),
        "provider": row.get("provider"),
        "interruptible": bool(row.get("interruptible")),
        "submitted": _iso(row["submitted_s"]),
        "deadline": _iso(row["deadline_s"]),
        "deadline_s": row["deadline_s"],
        "duration_s": row["duration_s"],
        "plan": [
            {"start": _iso(s), "end": _iso(e), "start_s": s, "end_s": e} for s, e in plan
        ],
        "plan_basis": row.get("plan_basis"),
        "plan_signal": row.get("plan_signal"),  # average | marginal: what the plan minimised
        "forecast_via": row.get("forecast_via"),
        "planned_at": None if row.get("planned_at_s") is None else _iso(row["planned_at_s"]),
        "plan_intensity_g_per_kwh": row.get("plan_intensity_g_per_kwh"),
        "baseline_intensity_g_per_kwh": row.get("baseline_intensity_g_per_kwh"),
        "expected_energy_j": row.get("expected_energy_j"),
        "expected_co2e_g": row.get("expected_co2e_g"),
        "expected_baseline_co2e_g": row.get("expected_baseline_co2e_g"),
        "expected_saving_pct": saving,
        # One sigma of the expected saving from the provider's measured forecast error, in
        # points of the same percentage (None: the error is unknown).
        "saving_band_pct": None if band is None or not base else 100.0 * band / base,
        "via": row.get("via") or "",
        "slurm_job_id": row.get("slurm_job_id"),
        "slurm_state": row.get("slurm_state"),
        "started_s": row.get("started_s"),
        "ended_s": row.get("ended_s"),
        "runs": row.get("runs") or [],
        "exit_code": row.get("exit_code"),
        "job_id": row.get("job_id"),
        "realised_co2e_g": row.get("realised_co2e_g"),
        "realised_baseline_co2e_g": row.get("realised_baseline_co2e_g"),
        "realised_saving_pct": _pct(
            row.get("realised_co2e_g"), row.get("realised_baseline_co2e_g")
        ),
        "message": row.get("message"),
        "log_path": row.get("log_path"),
    }
