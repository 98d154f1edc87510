"""What ``carbonwatch run`` reports about one job, whoever measured it: the wrapper itself
(``runner.py``), the wrapper that leads a job this rank joined (``ranks.py``), or the node's
daemon (``daemon/attach.py``). One type, one JSON form, one human summary."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from carbonwatch.model import J_PER_KWH, DeviceInfo
from carbonwatch.times import iso_utc_exact


@dataclass
class JobReport:
    job_id: str
    name: str
    kind: str
    argv: list[str]
    started_s: float
    ended_s: float
    exit_code: int
    energy_j: float
    energy_j_by_device: dict[str, float]
    co2e_g: float
    cost: float | None
    currency: str
    provenance: dict[str, Any]
    energy_j_by_class: dict[str, float] = field(default_factory=dict)
    # Everything the devices used meanwhile (idle and others included), and of it idle: known
    # only to a wrapper that measured the node itself (None otherwise).
    device_energy_j: float | None = None
    idle_energy_j: float | None = None
    devices: list[DeviceInfo] = field(default_factory=list)
    pids: list[int] = field(default_factory=list)
    cpu_time_s: float | None = None  # CPU seconds of the whole tree, when a scanner saw it
    measured_by: str | None = None  # the daemon's URL when the daemon measured it
    # Beside co2e_g (carbonwatch.embodied, carbonwatch.grid.signals): None is unknown, not 0.
    embodied_co2e_g: float | None = None
    co2e_g_marginal: float | None = None
    embodied_without_figure: list[str] = field(default_factory=list)

    @property
    def duration_s(self) -> float:
        return self.ended_s - self.started_s

    @classmethod
    def from_daemon_job(
        cls, job: Mapping[str, Any], argv: list[str], exit_code: int, url: str
    ) -> JobReport:
        """The daemon's job record (``GET /v1/jobs/{id}``), plus what the wrapper saw."""
        return cls(
            job_id=str(job["id"]),
            name=job["name"],
            kind=job["kind"],
            argv=argv,
            started_s=job["started_s"],
            ended_s=job["ended_s"],
            exit_code=exit_code,
            energy_j=job["energy_j"],
            energy_j_by_device=dict(job["energy_j_by_device"]),
            co2e_g=job["co2e_g"],
            cost=job["cost"],
            currency=job["currency"],
            provenance=dict(job["provenance"]),
            pids=list(job["pids"]),
            measured_by=url,
            embodied_co2e_g=job.get("embodied_co2e_g"),
            co2e_g_marginal=job.get("co2e_g_marginal"),
            embodied_without_figure=list(job.get("embodied_devices_without_figure") or []),
        )

    def as_json(self) -> dict[str, Any]:
        out = {
            "job_id": self.job_id,
            "name": self.name,
            "kind": self.kind,
            "command": self.argv,
            "started": iso_utc_exact(self.started_s),
            "ended": iso_utc_exact(self.ended_s),
            "duration_s": self.duration_s,
            "exit_code": self.exit_code,
            "energy_j": self.energy_j,
            "energy_kwh": self.energy_j / J_PER_KWH,
            "energy_j_by_device": self.energy_j_by_device,
            "energy_j_by_class": self.energy_j_by_class,
            "device_energy_j": self.device_energy_j,
            "idle_energy_j": self.idle_energy_j,
            "co2e_g": self.co2e_g,
            "cost": self.cost,
            "currency": self.currency,
            "provenance": self.provenance,
            "pids": self.pids,
            "cpu_time_s": self.cpu_time_s,
            "embodied_co2e_g": self.embodied_co2e_g,
            "embodied_devices_without_figure": self.embodied_without_figure,
            "co2e_g_marginal": self.co2e_g_marginal,
        }
        if self.measured_by is not None:
            out["measured_by"] = self.measured_by
        return out


def format_summary(report: JobReport) -> str:
    """The human summary printed after a run (on stderr: stdout stays the command's)."""
    by = f", measured by the daemon at {report.measured_by}" if report.measured_by else ""
    lines = [
        f"carbonwatch: {report.name} ({report.kind}) exited {report.exit_code} "
        f"after {report.duration_s:.1f} s  [job {report.job_id}{by}]",
    ]
    joined = report.provenance.get("joined")
    if joined:  # this wrapper joined a job that another wrapper measures (ranks.py)
        lines.append(
            f"  joined the running job with identity {joined['identity']}, measured by "
            f"wrapper pid {joined['leader_pid']}: figures are all its ranks' "
            f"(job {joined['status']})"
        )
        lines.append(
            f"  energy total  {report.energy_j:12.1f} J  {report.energy_j / J_PER_KWH:.6f}"
            f" kWh, emissions {report.co2e_g:.4g} gCO2e"
        )
        return "\n".join(lines)
    prov = report.provenance.get("energy", {})
    for device_id, energy_j in sorted(report.energy_j_by_device.items()):
        lines.append(
            f"  energy {device_id:<6} {energy_j:12.1f} J  {energy_j / J_PER_KWH:.6f} kWh"
            f"  ({prov.get(device_id, 'unknown')})"
        )
    lines.append(
        f"  energy total  {report.energy_j:12.1f} J  {report.energy_j / J_PER_KWH:.6f} kWh"
    )
    if report.device_energy_j is not None and report.idle_energy_j is not None:
        others_j = max(0.0, report.device_energy_j - report.idle_energy_j - report.energy_j)
        lines.append(
            f"  devices meanwhile {report.device_energy_j:.1f} J, of which idle "
            f"{report.idle_energy_j:.1f} J (kept separate) and other processes {others_j:.1f} J"
        )
    carbon = report.provenance.get("carbon", {})
    lines.append(
        f"  emissions {report.co2e_g:.4g} gCO2e  ({carbon.get('kind', '?')} intensity from "
        f"{carbon.get('intensity', '?')}, PUE {carbon.get('pue', '?')})"
    )
    if report.embodied_co2e_g is not None or report.embodied_without_figure:
        lines.append(
            "  embodied "
            + ("unknown" if report.embodied_co2e_g is None
               else f"{report.embodied_co2e_g:.4g} gCO2e")
            + " (hardware manufacture, beside the emissions"
            + (f"; no sourced figure for {', '.join(report.embodied_without_figure)}"
               if report.embodied_without_figure else "") + ")"
        )
    if report.co2e_g_marginal is not None:
        lines.append(f"  marginal emissions {report.co2e_g_marginal:.4g} gCO2e (WattTime MOER)")
    if report.cost is None:
        lines.append(
            "  cost unknown (no energy price configured on the daemon)"
            if report.measured_by
            else "  cost unknown (set energy_price_per_kwh in the config, "
            "or CARBONWATCH_ENERGY_PRICE_PER_KWH)"
        )
    else:
        how = report.provenance.get("cost")
        lines.append(
            f"  cost {report.cost:.4g} {report.currency}" + (f"  ({how})" if how else "")
        )
    return "\n".join(lines)
