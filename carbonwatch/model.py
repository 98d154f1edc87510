"""Plain value types shared by collectors, attribution, accounting and the store.

Units are in the names: ``energy_j`` joules, ``power_w`` watts, ``*_s`` Unix seconds (UTC) for
points in time and seconds for durations."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TypeVar

V = TypeVar("V")


class Provenance(StrEnum):
    MEASURED = "measured"    # read from a hardware counter
    ESTIMATED = "estimated"  # derived from a model or from integrating power samples
    UNKNOWN = "unknown"


class DeviceClass(StrEnum):
    GPU = "gpu"
    CPU = "cpu"
    RAM = "ram"


class DeviceState(StrEnum):
    OK = "ok"
    LOST = "lost"        # vanished mid-run; its last intervals are kept
    DEGRADED = "degraded"  # answering, but on a fallback path


J_PER_KWH = 3.6e6  # joules in one kilowatt-hour: the one definition of the conversion

# Consumer keys: who a share of a device's energy is attributed to (``energy_minute.consumer``).
# Activity on a device that belongs to no known process or job:
OTHER = "other"
# Energy below the device's idle baseline (and all of it when nothing runs):
IDLE = "idle"
JOB_PREFIX = "job:"


def job_consumer(job_id: str | int) -> str:
    """The consumer key of a job: ``job:<id>``."""
    return f"{JOB_PREFIX}{job_id}"


def job_of_consumer(consumer: str) -> str | None:
    """The job id in a consumer key, or None when the key is not a job's (idle, other, a pid)."""
    return consumer[len(JOB_PREFIX):] if consumer.startswith(JOB_PREFIX) else None


def per_job(
    query: Callable[[str, str, list[str]], dict[str, V]], job_ids: Sequence[str]
) -> dict[str, V]:
    """``query(key, where, args)``, an aggregate over the energy table aliased ``e`` grouped by
    ``key`` (``embodied_by``, ``marginal_by``), run for these jobs and keyed by job id; a job
    with no rows is absent."""
    if not job_ids:
        return {}
    marks = ", ".join("?" for _ in job_ids)
    got = query("e.consumer", f"e.consumer IN ({marks})", [job_consumer(j) for j in job_ids])
    return {job_of_consumer(k) or k: v for k, v in got.items()}


@dataclass(frozen=True)
class DeviceInfo:
    """What a collector measures and how."""

    device_id: str  # stable within a node: "gpu0", "cpu0", "ram"
    device_class: DeviceClass
    name: str
    # e.g. "nvml-energy-counter", "nvml-power-integral", "rapl", "tdp-model", "ram-model"
    method: str
    provenance: Provenance
    uuid: str | None = None
    state: DeviceState = DeviceState.OK
    detail: str = ""
    # GPUs: the idle baseline in use and its source (learned-from-counter, configured,
    # lowest-power-reading, unknown); None/"" where the collector has no such notion.
    idle_power_w: float | None = None
    idle_source: str = ""


@dataclass(frozen=True)
class EnergyInterval:
    """Energy one device used between two readings, with who was active on it.

    ``idle_energy_j`` is the part below the device's idle baseline; the rest is active energy, to be
    split over ``shares`` (consumer key -> non-negative weight; pids as ints from collectors). Empty
    shares mean no process was seen active: the active part is then unattributed (key OTHER).
    ``segments`` shapes the energy in time: (segment_end_s, energy_j) pairs, ascending, summing to
    ``energy_j``; the first segment starts at ``start_s``. Used to split an interval over inference
    calls that cover only part of it.
    """

    device_id: str
    device_class: DeviceClass
    start_s: float
    end_s: float
    energy_j: float
    idle_energy_j: float
    provenance: Provenance
    method: str
    shares: Mapping[int | str, float] = field(default_factory=dict)
    segments: tuple[tuple[float, float], ...] = ()
    # How ``shares`` were made (GPUs: solo, power-fit, sm-share, even, none); "" where not told.
    split_method: str = ""

    @property
    def duration_s(self) -> float:
        return self.end_s - self.start_s

    @property
    def active_energy_j(self) -> float:
        return self.energy_j - self.idle_energy_j
