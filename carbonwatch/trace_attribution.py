"""Run the real collectors and attribution over a recorded trace, in recorded time.

``carbonwatch replay`` uses this to let users check attribution on their own recordings, and the
tests use it to exercise the GPU path without a GPU: the same GpuCollector, Sampler and
EnergyLedger as on a live node, with a ManualClock stepping through the trace."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from carbonwatch.clock import ManualClock
from carbonwatch.collectors.gpu import GpuCollector
from carbonwatch.collectors.gpushare import GpuOptions
from carbonwatch.collectors.trace import load_trace
from carbonwatch.collectors.trace_gpu import Fault, ReplayGpuBackend
from carbonwatch.grid.static import StaticSource, world_average
from carbonwatch.grid.types import IntensitySource
from carbonwatch.ledger import EnergyLedger
from carbonwatch.model import IDLE, OTHER
from carbonwatch.pricing import Pricing
from carbonwatch.sampler import AttributedInterval, Sampler, Sink


@dataclass
class ReplayReport:
    trace_dir: str
    gpu_name: str
    counter_delta_j: float
    total_energy_j: float
    idle_energy_j: float
    unattributed_energy_j: float
    processes: list[dict[str, Any]]
    intervals: list[AttributedInterval]
    idle_policy: str
    provenance: str
    idle_baseline: dict[str, Any] = field(default_factory=dict)

    def split_methods(self) -> dict[str, dict[str, float]]:
        """How the intervals' active energy was split: method -> intervals, active energy."""
        out: dict[str, dict[str, float]] = {}
        for item in self.intervals:
            iv = item.interval
            row = out.setdefault(
                iv.split_method or "unknown", {"intervals": 0, "active_energy_j": 0.0}
            )
            row["intervals"] += 1
            row["active_energy_j"] += iv.active_energy_j
        return out

    @property
    def error_pct(self) -> float:
        return 100.0 * (self.total_energy_j - self.counter_delta_j) / self.counter_delta_j

    def as_json(self) -> dict[str, Any]:
        return {
            "trace_dir": self.trace_dir,
            "gpu": self.gpu_name,
            "counter_delta_j": self.counter_delta_j,
            "total_energy_j": self.total_energy_j,
            "error_vs_counter_pct": self.error_pct,
            "idle_energy_j": self.idle_energy_j,
            "unattributed_energy_j": self.unattributed_energy_j,
            "processes": self.processes,
            "intervals": len(self.intervals),
            "idle_policy": self.idle_policy,
            "provenance": self.provenance,
            "idle_baseline": self.idle_baseline,
            "split_methods": self.split_methods(),
            "interval_splits": [
                {
                    "start_s": i.interval.start_s,
                    "end_s": i.interval.end_s,
                    "energy_j": i.interval.energy_j,
                    "idle_energy_j": i.interval.idle_energy_j,
                    "split_method": i.interval.split_method,
                }
                for i in self.intervals
            ],
        }


def replay_trace(
    trace_dir: str | Path,
    *,
    idle_policy: str = "separate",
    power_interval_s: float = 0.1,
    counter_interval_s: float = 1.0,
    intensity: IntensitySource | None = None,
    pricing: Pricing | None = None,
    faults: Sequence[Fault] = (),
    gpu_options: GpuOptions | None = None,
    sinks: Sequence[Sink] = (),
) -> ReplayReport:
    """``gpu_options``: the idle baseline (configured, or learned earlier for the trace's GPU
    UUID) and the share window, as on a live node; by default everything is learned afresh.
    ``sinks`` also receive every attributed interval, in time order."""
    trace = load_trace(trace_dir)
    clock = ManualClock(trace.start_s)
    backend = ReplayGpuBackend(trace, clock, faults=faults)
    collector = GpuCollector(backend, options=gpu_options)
    roles = {pid: role for role, pid in trace.pids.items()}
    ledger = EnergyLedger(pricing or Pricing())
    intervals: list[AttributedInterval] = []
    sampler = Sampler(
        [collector],
        intensity=intensity or StaticSource(world_average()),
        # Every pid of the trace is its own consumer, so the report is per process.
        owners=lambda: {pid: f"pid:{pid}" for pid in roles},
        sinks=[ledger, intervals.append, *sinks],
        idle_policy=idle_policy,
        power_interval_s=power_interval_s,
        counter_interval_s=counter_interval_s,
    )
    sampler.start(trace.start_s)
    now_s = trace.start_s
    while True:
        now_s = sampler.step(now_s)
        if now_s >= trace.end_s:
            break
        clock.set(now_s)
    clock.set(trace.end_s)
    sampler.flush(trace.end_s)

    processes = []
    for pid, role in sorted(roles.items()):
        totals = ledger.totals.get(f"pid:{pid}")
        processes.append({"pid": pid, "role": role, "energy_j": totals.energy_j if totals else 0.0})
    idle = ledger.totals.get(IDLE)
    other = ledger.totals.get(OTHER)
    device = collector.devices()[0]
    return ReplayReport(
        trace_dir=str(trace_dir),
        gpu_name=trace.gpu_name,
        counter_delta_j=trace.energy_j,
        total_energy_j=math.fsum(i.interval.energy_j for i in intervals),
        idle_energy_j=idle.energy_j if idle else 0.0,
        unattributed_energy_j=other.energy_j if other else 0.0,
        processes=processes,
        intervals=intervals,
        idle_policy=idle_policy,
        provenance=f"{device.provenance.value} ({device.method})",
        idle_baseline={
            "uuid": device.uuid,
            "power_w": device.idle_power_w,
            "source": device.idle_source,
            "detail": device.detail,
        },
    )
