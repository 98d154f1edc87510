"""``carbonwatch run -- CMD``: run a command, measure its whole process tree, record the job.

The command is started directly (never through a shell) in its own process group, so a signal
forwarded to the group reaches every process of the tree. SIGINT, SIGTERM and SIGHUP sent to the
wrapper are forwarded; the wrapper then waits for the command, closes the measurement and writes
the record before exiting with the command's own exit code (128+N when a signal N ended it).
Processes are handled by ``proc.py``; the ranks of one job are joined by ``ranks.py``; what is
reported is ``jobreport.JobReport``."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from carbonwatch.clock import Clock, SystemClock
from carbonwatch.collectors.base import Collector
from carbonwatch.collectors.processes import ProcessScanner
from carbonwatch.collectors.visible import GpusGiven, gpus_given_to_job
from carbonwatch.config import Settings
from carbonwatch.grid.types import IntensitySource
from carbonwatch.jobreport import JobReport, format_summary
from carbonwatch.ledger import EnergyLedger
from carbonwatch.model import IDLE, DeviceInfo, job_consumer
from carbonwatch.pricing import Pricing
from carbonwatch.proc import ProcessTree, SignalForwarder, exit_code, exited, spawn
from carbonwatch.ranks import JOIN_TAG, Members, claim_job, run_member
from carbonwatch.sampler import Sampler
from carbonwatch.store import Store

__all__ = ["JobReport", "format_summary", "run_command"]

POLL_S = 0.05  # longest sleep between sampler steps while the command runs


@dataclass
class _Measurement:
    """The sampler and ledger of one run, and whose energy is the job's: the command's tree and,
    when this wrapper leads a job of several ranks, the members' trees."""

    sampler: Sampler
    ledger: EnergyLedger
    members: Members | None
    tree: ProcessTree | None = None
    key: str = ""  # the job's consumer key, known once the job has an id
    pids: set[int] = field(default_factory=set)

    def owners(self) -> dict[int | str, str]:
        if self.tree is None:
            return {}
        pids = self.tree.refresh() | (self.members.pids() if self.members else set())
        return dict.fromkeys(pids, self.key)

    def all_pids(self) -> list[int]:
        assert self.tree is not None
        return sorted(self.tree.pids | (self.members.pids() if self.members else set()))


def _measurement(
    settings: Settings,
    collectors: Sequence[Collector],
    intensity: IntensitySource,
    pricing: Pricing,
    kind: str,
    model: str | None,
    members: Members | None,
) -> _Measurement:
    holder: list[_Measurement] = []

    def phase_of(consumer: str) -> tuple[str, str]:
        if consumer == IDLE:
            return "idle", ""
        if holder and consumer == holder[0].key:
            return kind, model or ""
        return "other", ""

    ledger = EnergyLedger(pricing, phase_of)
    sampler = Sampler(
        collectors,
        intensity=intensity,
        owners=lambda: holder[0].owners(),
        sinks=[ledger],
        idle_policy=settings.idle_policy,
        power_interval_s=settings.power_interval_s,
        counter_interval_s=settings.counter_interval_s,
    )
    holder.append(_Measurement(sampler, ledger, members))
    return holder[0]


@dataclass
class _JobRow:
    """The job's row in the store (when there is one): claimed up front by a leading rank, or
    inserted once the command runs."""

    store: Store | None
    fields: dict[str, Any]  # name, kind, model, command, currency
    claimed_id: str | None = None

    def open(self, pid: int, started_s: float, identity: str | None) -> str | None:
        if self.store is None:
            return None
        if self.claimed_id is not None:  # inserted by claim_job
            self.store.update_job(self.claimed_id, pids=[pid], started_s=started_s)
            return self.claimed_id
        return self.store.insert_job(
            **self.fields, pids=[pid], identity=identity, source="run", status="running",
            started_s=started_s,
        )

    def failed_to_start(self, ended_s: float) -> None:
        if self.store is not None and self.claimed_id is not None:  # no orphan running row
            self.store.update_job(self.claimed_id, status="failed", ended_s=ended_s, exit_code=127)


def run_command(
    argv: Sequence[str],
    *,
    settings: Settings,
    collectors: Sequence[Collector],
    intensity: IntensitySource,
    store: Store | None,
    name: str | None = None,
    kind: str = "other",
    model: str | None = None,
    identity: str | None = None,
    clock: Clock | None = None,
    processes: ProcessScanner | None = None,
    child: subprocess.Popen[Any] | None = None,
) -> JobReport:
    """Run ``argv`` and measure it; with ``child``, measure that already started command
    instead (a daemon refused to: its energy before now is not seen)."""
    clock = clock or SystemClock()
    if not argv:
        raise ValueError("no command given: use `carbonwatch run -- CMD ARGS...`")
    argv = list(argv)
    name = name or os.path.basename(argv[0])
    pricing = Pricing.from_settings(settings)
    row = _JobRow(store, {"name": name, "kind": kind, "model": model, "command": argv,
                          "currency": pricing.currency})
    # The ranks of one job on this node are one job: the first wrapper leads and measures every
    # rank's tree; a later one joins and only runs its command.
    members: Members | None = None
    if store is not None and identity:
        claim = claim_job(store, identity, {**row.fields, "pids": [], "source": "run",
                                            "status": "running", "started_s": clock.time()})
        if not claim.leader:
            code, joined = run_member(argv, claim, store)
            return _member_report(joined, argv, code, claim.leader_pid, pricing.currency)
        row.claimed_id, members = claim.job_id, Members(store, claim.job_id)

    measure = _measurement(settings, collectors, intensity, pricing, kind, model, members)
    started_s = clock.time()
    measure.sampler.start(started_s)
    # Handlers go in before the child starts: a signal that arrives while the job row is being
    # written (a slow store on a busy node) must still reach the command, not kill the wrapper and
    # orphan the command. A signal received before the child exists is delivered right after.
    with SignalForwarder() as forwarder:
        if child is None:
            try:
                child = spawn(argv)
            except FileNotFoundError:
                row.failed_to_start(clock.time())
                raise
        forwarder.attach(child.pid)
        measure.tree = ProcessTree(child.pid)
        job_id = row.open(child.pid, started_s, identity)
        measure.key = job_consumer(job_id or child.pid)
        ended_s, returncode = _measure_until_exit(child, measure, clock)
    code = exit_code(returncode)
    report = _result(
        job_id or str(child.pid), name, kind, argv, started_s, ended_s, code, measure.ledger,
        measure.key, pricing, measure.sampler.devices(), measure.all_pids(),
        gpus_given_to_job(collectors, os.environ),  # the child's environment is ours
    )
    if processes is not None:
        report.cpu_time_s = sum(processes.cpu_seconds(pid) for pid in measure.tree.pids)
    if store is not None and job_id is not None:
        _record(store, job_id, report, measure, interrupted=bool(forwarder.received))
        from carbonwatch.footprint import job_footprint  # embodied and marginal, read back

        (report.embodied_co2e_g, report.embodied_without_figure,
         report.co2e_g_marginal) = job_footprint(store.conn, settings, report.job_id)
    return report


def _measure_until_exit(
    child: subprocess.Popen[Any], measure: _Measurement, clock: Clock
) -> tuple[float, int]:
    """Step the sampler until the command (and any rank that joined) has exited; (end time, the
    command's return code)."""
    sampler, members = measure.sampler, measure.members

    def step() -> None:
        next_s = sampler.step(clock.time())
        time.sleep(max(0.0, min(next_s - clock.time(), POLL_S)))

    while not exited(child.pid):
        step()
    while members is not None and (members.running() or not members.close()):
        step()
    # The child is a zombie now: its final CPU times are still readable, so the last interval is
    # attributed to it before it is reaped (after reaping, its time would show up only in the
    # wrapper's own children counters, outside the job's tree).
    ended_s = clock.time()
    sampler.flush(ended_s)
    return ended_s, child.wait()


def _record(
    store: Store, job_id: str, report: JobReport, measure: _Measurement, *, interrupted: bool
) -> None:
    """Write the job's minutes and its final row."""
    status = "finished" if report.exit_code == 0 else ("interrupted" if interrupted else "failed")
    if status == "finished" and measure.members is not None and any(measure.members.exit_codes()):
        status = "failed"  # a rank that joined failed
    store.add_energy_minutes(measure.ledger.drain_minute_rows())
    from carbonwatch.embodied import record_devices  # the models embodied carbon needs

    with store.transaction():
        record_devices(store.conn, measure.sampler.devices(), report.ended_s)
    store.update_job(
        job_id,
        status=status,
        ended_s=report.ended_s,
        exit_code=report.exit_code,
        pids=report.pids,
        energy_j=report.energy_j,
        energy_by_device=report.energy_j_by_device,
        co2e_g=report.co2e_g,
        cost=report.cost,
        provenance=report.provenance,
    )


def _result(
    job_id: str,
    name: str,
    kind: str,
    argv: list[str],
    started_s: float,
    ended_s: float,
    exit_code: int,
    ledger: EnergyLedger,
    key: str,
    pricing: Pricing,
    devices: list[DeviceInfo],
    pids: list[int],
    gpus_given: GpusGiven | None = None,
) -> JobReport:
    mine = ledger.totals.get(key)
    energy_by_device = dict(mine.energy_by_device) if mine else {}
    energy_by_class = dict(mine.energy_by_class) if mine else {}
    # Device-hours: the job held each device it was given (GPUs named by CUDA_VISIBLE_DEVICES),
    # else each device it drew energy from, for its whole duration.
    hours = (ended_s - started_s) / 3600
    given = gpus_given.device_ids if gpus_given is not None else None
    device_hours: dict[str, float] = {}
    for d in devices:
        cls = d.device_class.value
        if given is not None and cls == "gpu":
            held = d.device_id in given
        else:
            held = bool(energy_by_device.get(d.device_id))
        if held and pricing.device_hour_rates.get(cls):
            device_hours[cls] = device_hours.get(cls, 0.0) + hours
    cost = None
    if pricing.known:
        cost = (mine.cost if mine else 0.0) + pricing.device_hours_cost(device_hours)
    idle = ledger.totals.get(IDLE)
    # Where the job drew nothing, the devices' intervals still say which intensity applied.
    seen = mine if mine and mine.intensity_providers else next(iter(ledger.totals.values()), None)
    intensity_kinds = sorted(seen.intensity_kinds) if seen else []
    provenance = {
        "energy": {d.device_id: f"{d.provenance.value} ({d.method})" for d in devices},
        "energy_by_class": dict(mine.provenance_by_class) if mine else {},
        "carbon": {
            "intensity": ", ".join(sorted(seen.intensity_providers)) if seen else "unknown",
            "kind": ", ".join(intensity_kinds),
            "pue": pricing.pue,
        },
        "cost": (
            f"energy at {pricing.price_per_kwh} {pricing.currency}/kWh"
            + (f" + device-hours {device_hours}" if any(device_hours.values()) else "")
            if pricing.known
            else "unknown: no energy_price_per_kwh configured"
        ),
        "attribution": "the tree's share of each device's active energy (GPU: all of it when "
        "alone, else by fitted marginal power x SM activity, or SM share; CPU time; RSS); idle "
        "energy reported separately",
    }
    if gpus_given is not None:
        provenance["gpus_given"] = gpus_given.how
    return JobReport(
        job_id=job_id,
        name=name,
        kind=kind,
        argv=argv,
        started_s=started_s,
        ended_s=ended_s,
        exit_code=exit_code,
        energy_j=mine.energy_j if mine else 0.0,
        energy_j_by_device=energy_by_device,
        energy_j_by_class=energy_by_class,
        device_energy_j=ledger.device_total_j(),
        idle_energy_j=idle.energy_j if idle else 0.0,
        co2e_g=mine.co2e_g if mine else 0.0,
        cost=cost,
        currency=pricing.currency,
        provenance=provenance,
        devices=devices,
        pids=pids,
    )


def _member_report(
    row: dict[str, Any], argv: list[str], exit_code: int, leader_pid: int, currency: str
) -> JobReport:
    """A wrapper that joined a running job (carbonwatch.ranks): the whole job's figures, as its
    leading wrapper recorded them."""
    joined = {
        "job_id": row.get("id"),
        "identity": row.get("identity"),
        "leader_pid": leader_pid,
        "status": row.get("status"),
    }
    members = ((row.get("tags") or {}).get(JOIN_TAG) or {}).get("members", [])
    return JobReport(
        job_id=str(row.get("id")),
        name=row.get("name") or os.path.basename(argv[0]),
        kind=row.get("kind") or "other",
        argv=argv,
        started_s=row.get("started_s") or 0.0,
        ended_s=row.get("ended_s") or time.time(),
        exit_code=exit_code,
        energy_j=row.get("energy_j") or 0.0,
        energy_j_by_device=dict(row.get("energy_by_device") or {}),
        energy_j_by_class={},
        device_energy_j=0.0,
        idle_energy_j=0.0,
        co2e_g=row.get("co2e_g") or 0.0,
        cost=row.get("cost"),
        currency=row.get("currency") or currency,
        provenance={**(row.get("provenance") or {}), "joined": joined},
        pids=sorted({*(row.get("pids") or []), *(m["pid"] for m in members if m.get("pid"))}),
    )
