"""``carbonwatch run -- CMD``: run a command, measure its whole process tree, record the job.

The command is started directly (never through a shell) in its own process group, so a signal
forwarded to the group reaches every process of the tree. SIGINT, SIGTERM and SIGHUP sent to the
wrapper are forwarded; the wrapper then waits for the command, closes the measurement and writes
the record before exiting with the command's own exit code (128+N when a signal N ended it)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import psutil

from carbonwatch.accounting import Pricing
from carbonwatch.attribution import IDLE
from carbonwatch.clock import Clock, SystemClock
from carbonwatch.collectors.base import Collector
from carbonwatch.collectors.processes import ProcessScanner
from carbonwatch.collectors.visible import GpusGiven, gpus_given_to_job
from carbonwatch.config import Settings
from carbonwatch.grid.types import IntensitySource
from carbonwatch.identity import JOIN_TAG, Members, claim_job, run_member
from carbonwatch.ledger import Ledger
from carbonwatch.model import DeviceInfo
from carbonwatch.sampler import Sampler
from carbonwatch.store import Store

FORWARDED_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


@dataclass
class JobResult:
    job_id: str
    name: str
    kind: str
    argv: list[str]
    started_s: float
    ended_s: float
    exit_code: int
    energy_j: float
    energy_j_by_device: dict[str, float]
    energy_j_by_class: dict[str, float]
    device_energy_j: float  # everything the devices used meanwhile (idle and others included)
    idle_energy_j: float
    co2e_g: float
    cost: float | None
    currency: str
    provenance: dict[str, Any]
    devices: list[DeviceInfo] = field(default_factory=list)
    pids: list[int] = field(default_factory=list)
    cpu_time_s: float | None = None  # CPU seconds of the whole tree, when a scanner saw it
    # Beside co2e_g (carbonwatch.embodied, carbonwatch.grid.signals): None is unknown, not 0.
    embodied_co2e_g: float | None = None
    co2e_g_marginal: float | None = None
    embodied_without_figure: list[str] = field(default_factory=list)

    @property
    def duration_s(self) -> float:
        return self.ended_s - self.started_s

    def as_json(self) -> dict[str, Any]:
        return {
            "job_id": self.job_id,
            "name": self.name,
            "kind": self.kind,
            "command": self.argv,
            "started": _iso(self.started_s),
            "ended": _iso(self.ended_s),
            "duration_s": self.duration_s,
            "exit_code": self.exit_code,
            "energy_j": self.energy_j,
            "energy_kwh": self.energy_j / 3.6e6,
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


def _iso(t_s: float) -> str:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(t_s, UTC).isoformat().replace("+00:00", "Z")


class ProcessTree:
    """The pids of a command's tree, children that appear later included. Pids that exited stay
    members, so the energy of a short-lived child seen once is still owned by the job."""

    def __init__(self, root_pid: int) -> None:
        self.root_pid = root_pid
        self.pids: set[int] = {root_pid}

    def refresh(self, children: Mapping[int, Sequence[int]] | None = None) -> set[int]:
        """Add descendants seen now. With ``children`` (from :func:`children_map`, built once per
        tick) several trees share one pass over the process table instead of one pass each."""
        if children is None:
            with contextlib.suppress(psutil.Error):
                root = psutil.Process(self.root_pid)
                for child in root.children(recursive=True):
                    self.pids.add(child.pid)
            return self.pids
        stack = [self.root_pid]
        while stack:
            for child in children.get(stack.pop(), ()):
                if child not in self.pids:
                    self.pids.add(child)
                    stack.append(child)
        return self.pids


def children_map() -> dict[int, list[int]]:
    """ppid -> child pids of every process now, in one pass over the process table."""
    out: dict[int, list[int]] = {}
    for proc in psutil.process_iter(["ppid"]):
        ppid = proc.info.get("ppid")
        if ppid:
            out.setdefault(ppid, []).append(proc.pid)
    return out


def _exited(pid: int) -> bool:
    """Whether ``pid`` has exited, without reaping it (WNOWAIT)."""
    try:
        return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    except ChildProcessError:
        return True


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
) -> JobResult:
    """Run ``argv`` and measure it; with ``child``, measure that already started command
    instead (a daemon refused to: its energy before now is not seen)."""
    clock = clock or SystemClock()
    if not argv:
        raise ValueError("no command given: use `carbonwatch run -- CMD ARGS...`")
    argv = list(argv)
    name = name or os.path.basename(argv[0])
    pricing = Pricing.from_settings(settings)
    # --- job identity (carbonwatch.identity): the ranks of one job on this node are one job. The
    # first wrapper leads and measures every rank's tree; a later one joins and only runs.
    members: Members | None = None
    claimed_id: str | None = None
    if store is not None and identity:
        claim = claim_job(
            store,
            identity,
            {
                "name": name,
                "kind": kind,
                "model": model,
                "command": argv,
                "pids": [],
                "source": "run",
                "status": "running",
                "started_s": clock.time(),
                "currency": pricing.currency,
            },
        )
        if not claim.leader:
            exit_code, row = run_member(argv, claim, store)
            return _member_result(row, argv, exit_code, claim.leader_pid, pricing.currency)
        claimed_id, members = claim.job_id, Members(store, claim.job_id)
    # --- end of the job identity hook
    consumer_holder: dict[str, str] = {}

    def phase_of(consumer: str) -> tuple[str, str]:
        if consumer == IDLE:
            return "idle", ""
        if consumer == consumer_holder.get("key"):
            return kind, model or ""
        return "other", ""

    ledger = Ledger(pricing, phase_of)
    tree: ProcessTree | None = None

    def owners() -> dict[int | str, str]:
        if tree is None:
            return {}
        key = consumer_holder["key"]
        return {pid: key for pid in tree.refresh() | (members.pids() if members else set())}

    sampler = Sampler(
        collectors,
        intensity=intensity,
        owners=owners,
        sinks=[ledger],
        idle_policy=settings.idle_policy,
        power_interval_s=settings.power_interval_s,
        counter_interval_s=settings.counter_interval_s,
    )
    started_s = clock.time()
    sampler.start(started_s)
    # Handlers go in before the child starts: a signal that arrives while the job row is being
    # written (a slow store on a busy node) must still reach the command, not kill the wrapper and
    # orphan the command. A signal received before the child exists is delivered right after.
    received: list[int] = []
    early: list[int] = []  # received before the child existed
    child_pid: list[int] = []

    def forward(signum: int, _frame: object) -> None:
        received.append(signum)
        if not child_pid:
            early.append(signum)
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(child_pid[0], signum)

    previous = {sig: signal.signal(sig, forward) for sig in FORWARDED_SIGNALS}
    try:
        if child is None:
            child = subprocess.Popen(argv, process_group=0)  # noqa: S603 - argv, never a shell
    except OSError as exc:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if store is not None and claimed_id is not None:  # job identity hook: no orphan row
            store.update_job(claimed_id, status="failed", ended_s=clock.time(), exit_code=127)
        raise FileNotFoundError(f"cannot start {argv[0]!r}: {exc.strerror}") from exc
    # Python runs signal handlers between bytecodes of this thread: each signal lands either in
    # ``early`` (before this line) or is forwarded by the handler itself (after it), never both.
    child_pid.append(child.pid)
    for signum in early:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(child.pid, signum)
    tree = ProcessTree(child.pid)
    job_id = None
    if store is not None and claimed_id is not None:  # job identity hook: inserted by claim_job
        job_id = claimed_id
        store.update_job(job_id, pids=[child.pid], started_s=started_s)
    elif store is not None:
        job_id = store.insert_job(
            name=name,
            kind=kind,
            model=model,
            command=argv,
            pids=[child.pid],
            identity=identity,
            source="run",
            status="running",
            started_s=started_s,
            currency=pricing.currency,
        )
    consumer_holder["key"] = f"job:{job_id or child.pid}"
    try:
        while not _exited(child.pid):
            next_s = sampler.step(clock.time())
            time.sleep(max(0.0, min(next_s - clock.time(), 0.05)))
        while members is not None and (members.running() or not members.close()):  # identity
            next_s = sampler.step(clock.time())
            time.sleep(max(0.0, min(next_s - clock.time(), 0.05)))
        # The child is a zombie now: its final CPU times are still readable, so the last interval
        # is attributed to it before it is reaped (after reaping, its time would show up only in
        # the wrapper's own children counters, outside the job's tree).
        ended_s = clock.time()
        sampler.flush(ended_s)
        returncode = child.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    exit_code = returncode if returncode >= 0 else 128 - returncode

    gpus_given = gpus_given_to_job(collectors, os.environ)  # the child's environment is ours
    result = _result(
        job_id or str(child.pid),
        name,
        kind,
        argv,
        started_s,
        ended_s,
        exit_code,
        ledger,
        consumer_holder["key"],
        pricing,
        sampler.devices(),
        sorted(tree.pids | (members.pids() if members else set())),
        gpus_given,
    )
    if processes is not None:
        result.cpu_time_s = sum(processes.cpu_seconds(pid) for pid in tree.pids)
    if store is not None and job_id is not None:
        status = "finished" if exit_code == 0 else ("interrupted" if received else "failed")
        if status == "finished" and members is not None and any(members.exit_codes()):
            status = "failed"  # job identity hook: a rank that joined failed
        store.add_energy_minutes(ledger.drain_minute_rows())
        from carbonwatch.embodied import record_devices  # the models embodied carbon needs

        with store.transaction():
            record_devices(store.conn, sampler.devices(), ended_s)
        store.update_job(
            job_id,
            status=status,
            ended_s=ended_s,
            exit_code=exit_code,
            pids=result.pids,
            energy_j=result.energy_j,
            energy_by_device=result.energy_j_by_device,
            co2e_g=result.co2e_g,
            cost=result.cost,
            provenance=result.provenance,
        )
        from carbonwatch.footprint import job_footprint  # embodied and marginal, read back

        (result.embodied_co2e_g, result.embodied_without_figure,
         result.co2e_g_marginal) = job_footprint(store.conn, settings, result.job_id)
    return result


def _result(
    job_id: str,
    name: str,
    kind: str,
    argv: list[str],
    started_s: float,
    ended_s: float,
    exit_code: int,
    ledger: Ledger,
    key: str,
    pricing: Pricing,
    devices: list[DeviceInfo],
    pids: list[int],
    gpus_given: GpusGiven | None = None,
) -> JobResult:
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
    return JobResult(
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


def _member_result(
    row: dict[str, Any], argv: list[str], exit_code: int, leader_pid: int, currency: str
) -> JobResult:
    """A wrapper that joined a running job (carbonwatch.identity): the whole job's figures, as its
    leading wrapper recorded them."""
    joined = {
        "job_id": row.get("id"),
        "identity": row.get("identity"),
        "leader_pid": leader_pid,
        "status": row.get("status"),
    }
    members = ((row.get("tags") or {}).get(JOIN_TAG) or {}).get("members", [])
    return JobResult(
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


def format_summary(result: JobResult) -> str:
    """The human summary printed after a run."""
    lines = [
        f"carbonwatch: {result.name} ({result.kind}) exited {result.exit_code} "
        f"after {result.duration_s:.1f} s  [job {result.job_id}]",
    ]
    joined = result.provenance.get("joined")
    if joined:  # job identity: this wrapper joined a job that another wrapper measures
        lines.append(
            f"  joined the running job with identity {joined['identity']}, measured by "
            f"wrapper pid {joined['leader_pid']}: figures are all its ranks' "
            f"(job {joined['status']})"
        )
        lines.append(
            f"  energy total  {result.energy_j:12.1f} J  {result.energy_j / 3.6e6:.6f}"
            f" kWh, emissions {result.co2e_g:.4g} gCO2e"
        )
        return "\n".join(lines)
    prov = result.provenance["energy"]
    for device_id, energy_j in sorted(result.energy_j_by_device.items()):
        lines.append(
            f"  energy {device_id:<6} {energy_j:12.1f} J  {energy_j / 3.6e6:.6f} kWh"
            f"  ({prov.get(device_id, 'unknown')})"
        )
    lines.append(f"  energy total  {result.energy_j:12.1f} J  {result.energy_j / 3.6e6:.6f} kWh")
    lines.append(
        f"  devices meanwhile {result.device_energy_j:.1f} J, of which idle "
        f"{result.idle_energy_j:.1f} J (kept separate) and other processes "
        f"{max(0.0, result.device_energy_j - result.idle_energy_j - result.energy_j):.1f} J"
    )
    carbon = result.provenance["carbon"]
    lines.append(
        f"  emissions {result.co2e_g:.4g} gCO2e  ({carbon['kind']} intensity from "
        f"{carbon['intensity']}, PUE {carbon['pue']})"
    )
    if result.embodied_co2e_g is not None or result.embodied_without_figure:
        lines.append(
            "  embodied "
            + ("unknown" if result.embodied_co2e_g is None
               else f"{result.embodied_co2e_g:.4g} gCO2e")
            + " (hardware manufacture, beside the emissions"
            + (f"; no sourced figure for {', '.join(result.embodied_without_figure)}"
               if result.embodied_without_figure else "") + ")"
        )
    if result.co2e_g_marginal is not None:
        lines.append(f"  marginal emissions {result.co2e_g_marginal:.4g} gCO2e (WattTime MOER)")
    if result.cost is None:
        lines.append(
            "  cost unknown (set energy_price_per_kwh in the config, "
            "or CARBONWATCH_ENERGY_PRICE_PER_KWH)"
        )
    else:
        lines.append(f"  cost {result.cost:.4g} {result.currency}  ({result.provenance['cost']})")
    return "\n".join(lines)
