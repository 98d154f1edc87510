"""GPU check: carbonwatch's GPU energy and its split per process, against truths it did not produce.

Needs an NVIDIA GPU, its driver, nvidia-ml-py and PyTorch with CUDA
(``pip install 'carbonwatch[gpu-check]'``). On a machine without them it stops at once, exit 2.

    python benchmarks/gpu_check.py [--gpu 0] [--seconds 20] [--gap 4] [--daemon]
    python benchmarks/gpu_check.py --replay DIR   # the same checks over a recorded phased trace

What runs: the real NVML backend, GpuCollector and Sampler (idle policy ``separate``) in this
process, while a thread polls the GPU's power through pynvml every 5 ms, independently of the
collector. Phases: idle; training alone; idle; inference alone; idle; both together; idle
(benchmarks/gpu/workload.py, PyTorch). The Sampler is flushed at every launch and exit, so each
interval lies inside one phase.

Checks (exit 1 if any fails):
- total: the collector's GPU energy over its whole window against the 5 ms power integral over the
  same window (limit 0.5 %; on an H200 that integral was within 0.03 % of the energy counter).
- solo split: in each phase with one process (at least 2 s long), the energy attributed to that
  process against its true active energy there: the power integral minus the idle power (measured
  by the same integral in the first idle phase) times the phase's length (limit 5 %).
- shared phase (reported, no limit): each process's attributed energy against a reference that
  splits the phase's active energy by the processes' solo-phase active power. Processes slow each
  other down when they share a GPU, so this is a reference, not a truth.

``--replay DIR`` runs the same collector and checks over a trace recorded with ``carbonwatch
record`` (its ``power.csv`` at 10 ms stands in for the 5 ms poll; phases come from the
``<role>_launch`` / ``<role>_exit`` events), so a phased recording can be checked anywhere.
``--daemon`` then also runs the sidecar end to end (a real daemon, a job through ``carbonwatch run``
and a decorated inference server) and prints what it recorded.
"""

from __future__ import annotations

import argparse
import bisect
import math
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
WORKLOAD = HERE / "gpu" / "workload.py"
TOTAL_LIMIT_PCT = 0.5
SOLO_LIMIT_PCT = 5.0
MIN_SOLO_S = 2.0
POLL_S = 0.005


# --- the pure part: segments, integrals, checks, report -------------------------------------------


@dataclass(frozen=True)
class Segment:
    start_s: float
    end_s: float
    roles: frozenset[str]  # processes running: none (idle), one (solo) or several (shared)

    @property
    def name(self) -> str:
        if not self.roles:
            return "idle"
        return " + ".join(sorted(self.roles)) + (" alone" if len(self.roles) == 1 else "")


@dataclass
class CheckRun:
    """What a run saw: independent power samples, the collector's attributed GPU intervals
    (``(start_s, end_s, device energy, {consumer: J})``) and the phases."""

    power: list[tuple[float, float]]  # (t_s, W), independent of the collector
    intervals: list[tuple[float, float, float, dict[str, float]]]
    segments: list[Segment]
    power_source: str = "5 ms power integral"


@dataclass(frozen=True)
class Check:
    name: str
    measured_j: float
    truth_j: float | None  # None: no truth could be formed (said in the report)
    limit_pct: float | None  # None: reported, not judged

    @property
    def error_pct(self) -> float | None:
        if self.truth_j is None or self.truth_j == 0:
            return None
        return 100.0 * (self.measured_j - self.truth_j) / self.truth_j

    @property
    def passed(self) -> bool | None:
        if self.limit_pct is None:
            return None
        err = self.error_pct
        return err is not None and abs(err) <= self.limit_pct


def segments_from_events(
    events: Sequence[tuple[float, str]], start_s: float, end_s: float
) -> list[Segment]:
    """Cut [start_s, end_s] at every ``<role>_launch`` / ``<role>_exit`` event."""
    cuts: list[tuple[float, str, bool]] = []
    for t, event in events:
        role, _, what = event.rpartition("_")
        if role and what in ("launch", "exit") and start_s < t < end_s:
            cuts.append((t, role, what == "launch"))
    cuts.sort()
    out: list[Segment] = []
    running: set[str] = set()
    t0 = start_s
    for t, role, launch in cuts:
        if t > t0:
            out.append(Segment(t0, t, frozenset(running)))
        (running.add if launch else running.discard)(role)
        t0 = t
    if end_s > t0:
        out.append(Segment(t0, end_s, frozenset(running)))
    return out


def power_integral_j(samples: Sequence[tuple[float, float]], t0: float, t1: float) -> float:
    """Trapezoid integral of (t_s, W) samples over [t0, t1], power interpolated linearly at the
    edges (held flat beyond the first or last sample)."""
    if t1 <= t0 or not samples:
        return 0.0
    times = [t for t, _ in samples]

    def at(t: float) -> float:
        i = bisect.bisect_right(times, t)
        if i == 0:
            return samples[0][1]
        if i == len(samples):
            return samples[-1][1]
        (ta, pa), (tb, pb) = samples[i - 1], samples[i]
        return pa + (pb - pa) * (t - ta) / (tb - ta) if tb > ta else pb

    lo, hi = bisect.bisect_right(times, t0), bisect.bisect_left(times, t1)
    points = [(t0, at(t0)), *samples[lo:hi], (t1, at(t1))]
    pairs = zip(points, points[1:], strict=False)
    return math.fsum((b[0] - a[0]) * (a[1] + b[1]) / 2 for a, b in pairs)


def _in(seg: Segment, iv: tuple[float, float, float, dict[str, float]]) -> bool:
    return seg.start_s <= (iv[0] + iv[1]) / 2 < seg.end_s


def evaluate(
    run: CheckRun,
    total_limit_pct: float = TOTAL_LIMIT_PCT,
    solo_limit_pct: float = SOLO_LIMIT_PCT,
    min_solo_s: float = MIN_SOLO_S,
    expect_solo: Sequence[str] = (),
) -> list[Check]:
    """The checks of a run. A role in ``expect_solo`` without a solo phase of ``min_solo_s`` is a
    failed check of its own (a workload that died early must not pass by having nothing judged)."""
    if not run.intervals:
        return [Check("total: no GPU interval was collected", 0.0, None, total_limit_pct)]
    start_s = min(iv[0] for iv in run.intervals)
    end_s = max(iv[1] for iv in run.intervals)
    checks = [Check(
        f"total: collector vs {run.power_source}",
        math.fsum(iv[2] for iv in run.intervals),
        power_integral_j(run.power, start_s, end_s),
        total_limit_pct,
    )]
    idle = next((s for s in run.segments if not s.roles), None)
    idle_w = (
        power_integral_j(run.power, idle.start_s, idle.end_s) / (idle.end_s - idle.start_s)
        if idle is not None else None
    )

    def attributed(seg: Segment, role: str) -> float:
        return math.fsum(iv[3].get(role, 0.0) for iv in run.intervals if _in(seg, iv))

    def active_j(seg: Segment) -> float | None:
        """Energy above idle in the segment; None without an idle phase, or when there is none
        above idle (a process still starting): no truth to judge a split against."""
        if idle_w is None:
            return None
        energy = power_integral_j(run.power, seg.start_s, seg.end_s)
        active = energy - idle_w * (seg.end_s - seg.start_s)
        return active if active > 0 else None

    solo_rate_w: dict[str, float] = {}  # role -> active power alone, from its longest solo phase
    solo_len: dict[str, float] = {}
    for seg in run.segments:
        length = seg.end_s - seg.start_s
        if len(seg.roles) != 1 or length < min_solo_s:
            continue
        (role,) = seg.roles
        truth = active_j(seg)
        checks.append(Check(
            f"{seg.name} ({length:.1f} s): {role} vs its active energy",
            attributed(seg, role), truth, solo_limit_pct,
        ))
        if truth is not None and length > solo_len.get(role, 0.0):
            solo_len[role], solo_rate_w[role] = length, truth / length
    for role in expect_solo:
        if role not in solo_len and not any(c.name.endswith(f"{role} vs its active energy")
                                            for c in checks):
            checks.append(Check(f"{role} alone: no solo phase of {min_solo_s:g} s or more",
                                0.0, None, solo_limit_pct))
    for seg in run.segments:
        if len(seg.roles) < 2:
            continue
        active = active_j(seg)
        rates = {r: solo_rate_w.get(r) for r in seg.roles}
        known = active is not None and all(v is not None and v > 0 for v in rates.values())
        total_w = math.fsum(v for v in rates.values() if v) if known else 0.0
        for role in sorted(seg.roles):
            ref = active * rates[role] / total_w if known and active is not None else None
            checks.append(Check(
                f"{seg.name} ({seg.end_s - seg.start_s:.1f} s): {role} vs solo-rate reference",
                attributed(seg, role), ref, None,
            ))
    return checks


def format_report(checks: Sequence[Check]) -> str:
    head = f"{'check':<58} {'carbonwatch J':>13} {'truth J':>10} {'error':>8} {'limit':>7}"
    lines = [head + "  result"]
    for c in checks:
        truth = f"{c.truth_j:10.1f}" if c.truth_j is not None else f"{'unknown':>10}"
        err = f"{c.error_pct:+7.2f}%" if c.error_pct is not None else f"{'-':>8}"
        limit = f"{c.limit_pct:6.1f}%" if c.limit_pct is not None else f"{'-':>7}"
        result = {True: "PASS", False: "FAIL", None: "info"}[c.passed]
        lines.append(f"{c.name:<58} {c.measured_j:13.1f} {truth} {err} {limit}  {result}")
    failed = sum(c.passed is False for c in checks)
    lines.append(f"{'FAILED' if failed else 'PASSED'}: {failed} of "
                 f"{sum(c.passed is not None for c in checks)} judged checks failed")
    return "\n".join(lines)


def exit_code(checks: Sequence[Check]) -> int:
    return 1 if any(c.passed is False for c in checks) else 0


# --- running the collector -----------------------------------------------------------------------


class IntervalSink:
    """A Sampler sink keeping one GPU's attributed intervals."""

    def __init__(self, device_id: str) -> None:
        self.device_id = device_id
        self.intervals: list[tuple[float, float, float, dict[str, float]]] = []

    def __call__(self, item: Any) -> None:
        iv = item.interval
        if iv.device_id == self.device_id:
            self.intervals.append((iv.start_s, iv.end_s, iv.energy_j, dict(item.parts)))


def _sampler(collector: Any, owners: Callable[[], dict], sink: IntervalSink) -> Any:
    from carbonwatch.grid.static import StaticSource, world_average
    from carbonwatch.sampler import Sampler

    return Sampler([collector], intensity=StaticSource(world_average()), owners=owners,
                   sinks=[sink], idle_policy="separate")


def replay_run(trace_dir: str | Path) -> CheckRun:
    """The checks' inputs from a recorded trace: the real collector over the replay backend, the
    trace's own power readings as the independent integral."""
    from carbonwatch.clock import ManualClock
    from carbonwatch.collectors.gpu import GpuCollector
    from carbonwatch.collectors.trace import load_trace
    from carbonwatch.collectors.trace_gpu import ReplayGpuBackend

    trace = load_trace(trace_dir)
    clock = ManualClock(trace.start_s)
    collector = GpuCollector(ReplayGpuBackend(trace, clock))
    sink = IntervalSink("gpu0")
    owners = {pid: role for role, pid in trace.pids.items()}
    sampler = _sampler(collector, lambda: owners, sink)
    segments = segments_from_events(trace.events, trace.start_s, trace.end_s)
    cuts = sorted({s.end_s for s in segments[:-1]})
    sampler.start(trace.start_s)
    t = trace.start_s
    while t < trace.end_s:
        step_end = min(sampler.step(t), trace.end_s)
        while cuts and cuts[0] <= step_end:
            cut = cuts.pop(0)
            clock.set(cut)
            sampler.flush(cut)  # each interval inside one phase
        t = max(step_end, t + 1e-6)
        clock.set(min(t, trace.end_s))
    sampler.flush(trace.end_s)
    power = [(t, mw / 1000.0) for t, mw in zip(trace.power_t_s, trace.power_mw, strict=True)]
    return CheckRun(power, sink.intervals, segments, "the trace's 10 ms power integral")


# --- the live check (needs the GPU) --------------------------------------------------------------


def nvml_preflight(gpu_index: int, nvml: Any = None) -> str | None:
    """Why NVML cannot be read on GPU ``gpu_index`` here, or None. ``nvml``: the pynvml module
    (default: nvidia-ml-py's), the seam a test passes a fake through."""
    if nvml is None:
        try:
            import pynvml as nvml
        except ImportError:
            return "nvidia-ml-py is not installed (pip install 'carbonwatch[gpu-check]')"
    try:
        nvml.nvmlInit()
    except nvml.NVMLError as exc:
        return f"no NVIDIA GPU here: nvmlInit failed ({exc})"
    try:
        count = nvml.nvmlDeviceGetCount()
    finally:
        nvml.nvmlShutdown()
    if not 0 <= gpu_index < count:
        return f"no GPU {gpu_index}: NVML sees {count}"
    return None


def torch_preflight() -> str | None:
    """Why the PyTorch workloads cannot run here, or None."""
    # In a child, so this process never creates a CUDA context of its own on the GPU it measures.
    code = "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 3)"
    probe = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True, text=True, timeout=300,
    )
    if probe.returncode == 3:
        return "PyTorch is installed but sees no CUDA device"
    if probe.returncode != 0:
        return "PyTorch with CUDA is needed (pip install 'carbonwatch[gpu-check]'): " + (
            probe.stderr.strip().splitlines() or ["import failed"])[-1]
    return None


def preflight(gpu_index: int) -> str | None:
    """Why the live check cannot run here, or None."""
    return nvml_preflight(gpu_index) or torch_preflight()


@dataclass
class PowerPoller:
    """Polls one GPU's power through pynvml every ``every_s`` on its own thread."""

    nvml: Any  # the pynvml module
    handle: Any
    every_s: float = POLL_S
    samples: list[tuple[float, float]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)

    def _run(self) -> None:
        read = self.nvml.nvmlDeviceGetPowerUsage
        t0, k = time.monotonic(), 0
        while not self._stop.is_set():
            self.samples.append((time.time(), read(self.handle) / 1000))
            k += 1
            time.sleep(max(0.0, t0 + k * self.every_s - time.monotonic()))

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="power-5ms", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def workload_argv(role: str, seconds: float) -> list[str]:
    return [sys.executable, str(WORKLOAD), role, "--seconds", str(seconds)]


def live_run(
    gpu_index: int,
    seconds: float,
    gap_s: float,
    nvml: Any = None,
    workload: Callable[[str, float], list[str]] = workload_argv,
) -> CheckRun:
    """Idle, training alone, idle, inference alone, idle, both, idle, on GPU ``gpu_index``.
    ``nvml`` (default: pynvml) and ``workload`` (role, seconds -> argv) are the seams a test uses
    to run this orchestration without a GPU."""
    if nvml is None:
        import pynvml as nvml

    from carbonwatch.collectors.gpu import GpuCollector
    from carbonwatch.collectors.gpurefs import gpu_device_id
    from carbonwatch.collectors.nvml import NvmlBackend

    collector = GpuCollector(NvmlBackend(nvml))
    uuids = [d.uuid for d in collector.devices() if d.device_id == gpu_device_id(gpu_index)]
    if not uuids:
        raise RuntimeError(f"GPU {gpu_index} could not be opened (see `carbonwatch devices`)")
    uuid = uuids[0]
    nvml.nvmlInit()  # the poller's own reference (NVML's init is reference counted)
    poller = PowerPoller(nvml, nvml.nvmlDeviceGetHandleByIndex(gpu_index))
    roles: dict[int, str] = {}
    sink = IntervalSink(gpu_device_id(gpu_index))
    sampler = _sampler(collector, lambda: dict(roles), sink)
    env = dict(os.environ, CUDA_VISIBLE_DEVICES=uuid)  # the workloads run on the GPU checked
    events: list[tuple[float, str]] = []

    def wait(until: Callable[[], bool]) -> None:
        while not until():
            next_s = sampler.step(time.time())
            time.sleep(max(0.0, min(next_s - time.time(), 0.02)))

    poller.start()
    time.sleep(0.05)
    start_s = time.time()
    sampler.start(start_s)
    for phase in (("train",), ("infer",), ("train", "infer")):
        idle_end = time.time() + gap_s
        wait(lambda end=idle_end: time.time() >= end)  # noqa: B023 - bound by default
        now = time.time()
        sampler.flush(now)
        running = {}
        for role in phase:
            p = subprocess.Popen(workload(role, seconds), env=env)  # noqa: S603 - our argv
            roles[p.pid] = role
            running[role] = p
            events.append((now, f"{role}_launch"))
        while running:
            wait(lambda: any(p.poll() is not None for p in running.values()))  # noqa: B023
            now = time.time()
            sampler.flush(now)
            for role, p in list(running.items()):
                if p.poll() is not None:
                    events.append((now, f"{role}_exit"))
                    del running[role]
                    if p.returncode != 0:
                        raise RuntimeError(f"the {role} workload exited {p.returncode}")
        print(f"phase {' + '.join(phase)}: done", flush=True)
    end = time.time() + gap_s
    wait(lambda: time.time() >= end)
    end_s = time.time()
    sampler.flush(end_s)
    time.sleep(0.05)
    poller.stop()
    collector.close()
    nvml.nvmlShutdown()
    return CheckRun(poller.samples, sink.intervals, segments_from_events(events, start_s, end_s))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--gpu", type=int, default=0, help="NVML index of the GPU to check")
    parser.add_argument("--seconds", type=float, default=20.0, help="length of each workload")
    parser.add_argument("--gap", type=float, default=4.0, help="idle seconds between phases")
    parser.add_argument("--replay", metavar="DIR", help="check a recorded phased trace instead")
    parser.add_argument("--daemon", action="store_true", help="also run the sidecar check")
    parser.add_argument("--workdir", default="/tmp")
    args = parser.parse_args(argv)
    if args.replay:
        run = replay_run(args.replay)
    else:
        why = preflight(args.gpu)
        if why is not None:
            print(f"gpu_check: cannot run here: {why}", file=sys.stderr)
            return 2
        try:
            run = live_run(args.gpu, args.seconds, args.gap)
        except RuntimeError as exc:
            print(f"gpu_check: could not complete the run: {exc}", file=sys.stderr)
            return 2
    checks = evaluate(run, expect_solo=() if args.replay else ("train", "infer"))
    print(format_report(checks))
    if args.daemon and not args.replay:
        from gpu.daemon_check import daemon_check  # benchmarks/gpu/, beside this script

        daemon_check(args.seconds, Path(args.workdir))
    return exit_code(checks)


if __name__ == "__main__":
    sys.exit(main())
