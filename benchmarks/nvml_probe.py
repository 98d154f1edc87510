"""NVML probe: what each read carbonwatch makes costs on a real GPU, and whether the driver's
sample buffers (``nvmlDeviceGetSamples``) could replace the 10 Hz power and utilisation polls.

    python benchmarks/nvml_probe.py [--gpu 0] [--seconds 10] [--calls 200]
                                    [--load none|train|infer] [--out FILE]

Needs an NVIDIA GPU, its driver and nvidia-ml-py (``--load`` also PyTorch with CUDA); without them
it exits 2 at once with a one-line reason. A short summary goes to stdout; the whole result as JSON
to ``--out FILE``, or without ``--out`` as the last line of stdout. On one GPU it measures:
a. each read's cost, median and p90 over ``--calls`` calls (50 for the ~3.8 ms counter): wall time
   and this thread's CPU. CPU far below wall: the call waits in the driver (``ReadLatency``).
b. each sample buffer (power, utilisation): read from timestamp 0 (count, span, spacing, value
   type, the newest sample's age: are timestamps Unix us?), then once a second from the last seen:
   new samples per read, the gap before the first new one (over 1.5x the spacing: samples were
   lost), NOT_FOUND reads. An unsupported call is recorded, not a crash.
c. against the energy counter (the truth), per second between counter reads: the buffer's and
   10 Hz polls' mean power; mean absolute error in W, whole-window energy and the lag (-2..2 s)
   that fits best. The counter moves every ~100 ms, so one second holds up to ~10 % of its noise.
``--load train|infer`` runs ``benchmarks/gpu/workload.py`` in a child through a, b and c.
This file reads the GPU; ``gpu/probe_report.py`` summarises, compares and prints (pure).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from gpu.probe_report import (
    against_counter,
    buffer_follow_summary,
    format_summary,
    spacing_s,
    spread_us,
)
from gpu_check import nvml_preflight, torch_preflight, workload_argv  # beside this script

POLL_HZ = 10
COUNTER_CALLS = 50
READ_BUDGET_S = 5.0  # per read kind in (a): a call dearer than expected cuts its count, not the run
RAW_SAMPLES = 50_000  # per buffer kept in the JSON (~1.5 MB): 10 s at 0.2 ms spacing
# Answers that say nothing about whether the call works: counted, and the reads go on. Any other
# error (NOT_SUPPORTED, FUNCTION_NOT_FOUND, NO_PERMISSION, ...) ends that read and is recorded.
PASSING = ("NOT_FOUND", "INSUFFICIENT_SIZE", "TIMEOUT")
UNIX_AGE_S = (-5.0, 60.0)  # a newest sample this old is on the Unix clock
VALUE_FIELDS = ("dVal", "uiVal", "ulVal", "ullVal", "sllVal", "siVal", "usVal")  # by value type
VALUE_TYPES = ("double", "unsigned int", "unsigned long", "unsigned long long",
               "signed long long", "signed int", "unsigned short")
BUFFERS = {"power": "NVML_TOTAL_POWER_SAMPLES", "utilization": "NVML_GPU_UTILIZATION_SAMPLES"}


@dataclass
class Env:
    """The seams: the pynvml module, one handle, and the clocks (tests pass simulated ones)."""

    nv: Any
    handle: Any
    now: Callable[[], float] = time.time  # Unix seconds, the base sample timestamps are judged on
    sleep: Callable[[float], None] = time.sleep
    perf: Callable[[], float] = time.perf_counter
    cpu: Callable[[], float] = time.thread_time


def error_name(nv: Any, exc: BaseException) -> str:
    """``NOT_FOUND`` for an NVMLError of that code; the class name for anything else."""
    code = getattr(exc, "value", None)
    if isinstance(exc, nv.NVMLError) and isinstance(code, int):
        for name in dir(nv):
            if name.startswith("NVML_ERROR_") and getattr(nv, name) == code:
                return name.removeprefix("NVML_ERROR_")
        return f"NVML error {code}"
    return type(exc).__name__


# --- a. the cost of each read --------------------------------------------------------------------


def time_read(env: Env, call: Callable[[], Any], calls: int) -> dict[str, Any]:
    """Run ``call`` up to ``calls`` times (within READ_BUDGET_S), each timed on the wall and on this
    thread's CPU. NOT_FOUND (nothing new) is a normal answer, timed and counted."""
    wall: list[float] = []
    cpu: list[float] = []
    not_found, passing, error = 0, 0, None
    start = env.perf()
    for _ in range(calls):
        w0, c0 = env.perf(), env.cpu()
        try:
            call()
        except Exception as exc:
            name = error_name(env.nv, exc)
            if name not in PASSING:
                error = name
                break
            not_found += name == "NOT_FOUND"
            passing += name != "NOT_FOUND"
        w1, c1 = env.perf(), env.cpu()
        wall.append(w1 - w0)
        cpu.append(c1 - c0)
        if w1 - start > READ_BUDGET_S:
            break
    return {"calls": len(wall), "wall_us": spread_us(wall), "cpu_us": spread_us(cpu),
            "not_found": not_found, "other_passing_errors": passing, "error": error}


def read_costs(env: Env, calls: int, newest_us: dict[str, int]) -> dict[str, dict[str, Any]]:
    """Each read carbonwatch's NVML collector makes, and the sample reads that could replace the
    polls: from timestamp 0 (the whole buffer) and from a second before now (what a once-a-second
    reader gets), now told from the newest sample of the snapshot (``newest_us``) and the clock."""
    nv, h = env.nv, env.handle
    last_us = [0]
    t_snap = env.now()

    def second_ago_us(kind: str) -> int:
        if kind not in newest_us:
            return 0
        return int(newest_us[kind] + (env.now() - t_snap - 1.0) * 1e6)

    def process_util() -> None:  # as the collector reads it: from the newest sample seen
        samples = nv.nvmlDeviceGetProcessUtilization(h, last_us[0])
        last_us[0] = max([last_us[0], *(int(s.timeStamp) for s in samples)])

    reads: dict[str, tuple[Callable[[], Any], int]] = {
        "power": (lambda: nv.nvmlDeviceGetPowerUsage(h), calls),
        "utilization": (lambda: nv.nvmlDeviceGetUtilizationRates(h), calls),
        "energy_counter": (lambda: nv.nvmlDeviceGetTotalEnergyConsumption(h),
                           min(calls, COUNTER_CALLS)),
        "process_utilization": (process_util, calls),
        "compute_processes": (lambda: nv.nvmlDeviceGetComputeRunningProcesses(h), calls),
        "mps_processes": (lambda: nv.nvmlDeviceGetMPSComputeRunningProcesses(h), calls),
    }
    for kind, const in BUFFERS.items():
        sampling = getattr(nv, const)
        reads[f"samples_{kind}_all"] = (
            lambda s=sampling: nv.nvmlDeviceGetSamples(h, s, 0), calls)
        reads[f"samples_{kind}_1s"] = (
            lambda s=sampling, k=kind: nv.nvmlDeviceGetSamples(h, s, second_ago_us(k)), calls)
    return {name: time_read(env, call, n) for name, (call, n) in reads.items()}


# --- b. the sample buffers -----------------------------------------------------------------------


def read_buffer(env: Env, kind: str, since_us: int) -> tuple[int, list[tuple[int, float]]]:
    """One ``nvmlDeviceGetSamples`` read: (value type, [(timestamp us, value)]), each value read
    from the union member the value type names. Raises what pynvml raises."""
    value_type, samples = env.nv.nvmlDeviceGetSamples(
        env.handle, getattr(env.nv, BUFFERS[kind]), since_us)
    member = VALUE_FIELDS[value_type]
    return value_type, [(int(s.timeStamp), float(getattr(s.sampleValue, member))) for s in samples]


def snapshot(env: Env, kind: str) -> tuple[dict[str, Any], list[tuple[int, float]]]:
    """The whole buffer, read from timestamp 0: what it holds and on which clock."""
    try:
        value_type, samples = read_buffer(env, kind, 0)
    except Exception as exc:
        return {"error": error_name(env.nv, exc), "count": 0}, []
    if not samples:  # pynvml returns an empty list when the size query said 0 without an error
        return {"error": "empty, no error", "count": 0}, []
    now = env.now()
    age_s = now - samples[-1][0] / 1e6
    unix = UNIX_AGE_S[0] <= age_s <= UNIX_AGE_S[1]
    return {
        "error": None, "count": len(samples),
        "span_s": (samples[-1][0] - samples[0][0]) / 1e6,
        "spacing_s": spacing_s(samples),
        "value_type": VALUE_TYPES[value_type] if value_type < len(VALUE_TYPES) else value_type,
        "newest_age_s": age_s, "oldest_age_s": now - samples[0][0] / 1e6,
        "timestamp_base": "unix_us" if unix else "not Unix time",
        # Off the Unix clock, the comparison with the counter assumes the newest sample is fresh.
        "offset_s": 0.0 if unix else age_s,
        "first": samples[:3], "last": samples[-3:],
    }, samples


@dataclass
class Follow:
    """What the once-a-second follow window saw."""

    polls: list[tuple[float, float]] = field(default_factory=list)  # (Unix s, W)
    counter: list[tuple[float, int]] = field(default_factory=list)  # (Unix s mid-call, mJ)
    reads: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    samples: dict[str, list[tuple[int, float]]] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)


def follow(env: Env, seconds: int, last_seen_us: dict[str, int]) -> Follow:
    """Poll power at POLL_HZ; once a second read the counter and each buffer from its last seen
    timestamp. One thread, so the reads never overlap and the clocks are the ones injected. The
    first buffer read catches up on whatever came since ``last_seen_us`` (the reads of a took
    seconds); a last one, half a second after the last counter read, covers the last window's
    end. Both are kept for the comparison and left out of the per-read figures."""
    nv, h = env.nv, env.handle
    out = Follow(reads={k: [] for k in BUFFERS}, samples={k: [] for k in BUFFERS})
    seen = dict(last_seen_us)
    t0 = env.now()
    last_tick = seconds * POLL_HZ + POLL_HZ // 2
    for tick in range(last_tick + 1):
        env.sleep(max(0.0, t0 + tick / POLL_HZ - env.now()))
        if "poll" not in out.errors:
            try:
                out.polls.append((env.now(), nv.nvmlDeviceGetPowerUsage(h) / 1000.0))
            except Exception as exc:
                out.errors["poll"] = error_name(nv, exc)
        if tick % POLL_HZ and tick != last_tick:
            continue
        if "counter" not in out.errors and tick != last_tick:
            try:
                a = env.now()
                energy_mj = int(nv.nvmlDeviceGetTotalEnergyConsumption(h))
                out.counter.append(((a + env.now()) / 2, energy_mj))
            except Exception as exc:
                out.errors["counter"] = error_name(nv, exc)
        for kind in BUFFERS:
            if kind in out.errors:
                continue
            w0, c0 = env.perf(), env.cpu()
            read: dict[str, Any] = {"since_us": seen.get(kind, 0), "new": 0, "error": None,
                                    "edge": tick in (0, last_tick)}
            try:
                _, new = read_buffer(env, kind, seen.get(kind, 0))
            except Exception as exc:
                read["error"], new = error_name(nv, exc), []
                if read["error"] not in PASSING:
                    out.errors[kind] = read["error"]
                    continue
            read["wall_s"], read["cpu_s"] = env.perf() - w0, env.cpu() - c0
            if new:
                read.update(new=len(new), first_us=new[0][0], last_us=new[-1][0])
                seen[kind] = new[-1][0]
                out.samples[kind].extend(new)
            out.reads[kind].append(read)
    return out


# --- the whole probe -----------------------------------------------------------------------------


def probe(env: Env, seconds: int, calls: int) -> dict[str, Any]:
    """a, b and c on one device: a JSON-ready dict."""
    buffers: dict[str, Any] = {}
    initial: dict[str, list[tuple[int, float]]] = {}
    for kind in BUFFERS:
        buffers[kind], initial[kind] = snapshot(env, kind)
    newest_us = {k: s[-1][0] for k, s in initial.items() if s}
    costs = read_costs(env, calls, newest_us)
    run = follow(env, seconds, newest_us)
    for kind in BUFFERS:
        spacing = (buffers[kind].get("spacing_s") or spacing_s(run.samples[kind]) or {})
        if kind in run.errors:
            buffers[kind]["follow"] = {"error": run.errors[kind]}
        else:
            buffers[kind]["follow"] = buffer_follow_summary(run.reads[kind], spacing.get("median"))
    power = sorted([*initial["power"], *run.samples["power"]])  # in time order, whatever NVML does
    offset_s = buffers["power"].get("offset_s", 0.0)
    sources = {"polls_10hz": run.polls}
    if power and "power" not in run.errors:
        sources["buffer"] = [(ts / 1e6 + offset_s, mw / 1000.0) for ts, mw in power]
    vs = against_counter(run.counter, sources) if "counter" not in run.errors else {}
    # The raw readings too: a GPU session is rare, and they can be re-analysed without one.
    raw = {"polls": run.polls, "counter": run.counter, "reads": run.reads,
           "samples": {k: [*initial[k], *run.samples[k]][-RAW_SAMPLES:] for k in BUFFERS}}
    return {"read_cost": costs, "buffers": buffers, "vs_counter": vs, "follow_errors": run.errors,
            "raw": raw}


def start_load(env: Env, argv: list[str], child_env: dict[str, str],
               wait_s: float = 60.0) -> tuple[subprocess.Popen, dict[str, Any]]:
    """Start a workload and wait until the GPU lists a compute process (CUDA start-up takes
    seconds), or ``wait_s`` (20 s where the list cannot be read); then a second more so its work,
    not its start, is measured."""
    child = subprocess.Popen(argv, env=child_env)  # noqa: S603 - our own argv
    t0 = env.now()
    seen: bool | None = False
    while env.now() - t0 < wait_s and child.poll() is None:
        seen = None
        for name in ("nvmlDeviceGetComputeRunningProcesses",  # _v2: a driver without _v3
                     "nvmlDeviceGetComputeRunningProcesses_v2"):
            try:
                seen = bool(getattr(env.nv, name)(env.handle))
                break
            except Exception:
                continue
        if seen or (seen is None and env.now() - t0 >= 20.0):
            break
        env.sleep(0.2)
    env.sleep(1.0)
    return child, {"argv": argv, "seen_on_gpu": seen, "waited_s": round(env.now() - t0, 2),
                   "exited_early": child.poll()}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--gpu", type=int, default=0, help="NVML index of the GPU to probe")
    parser.add_argument("--seconds", type=int, default=10, help="length of the follow window")
    parser.add_argument("--calls", type=int, default=200, help="calls per read timed in (a)")
    parser.add_argument("--load", choices=["none", "train", "infer"], default="none")
    parser.add_argument("--out", help="write the JSON here (default: last line of stdout)")
    args = parser.parse_args(argv)
    if args.seconds < 2 or args.calls < 1:
        parser.error("--seconds must be at least 2 and --calls at least 1")
    why = nvml_preflight(args.gpu) or (torch_preflight() if args.load != "none" else None)
    if why is not None:
        print(f"nvml_probe: cannot run here: {why}", file=sys.stderr)
        return 2
    import pynvml

    # A time limit's SIGTERM (device_check.sh) unwinds the finally blocks: the workload stops.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    pynvml.nvmlInit()
    child = None
    try:
        env = Env(pynvml, pynvml.nvmlDeviceGetHandleByIndex(args.gpu))
        uuid = pynvml.nvmlDeviceGetUUID(env.handle)
        result: dict[str, Any] = {
            "gpu": {"index": args.gpu, "name": pynvml.nvmlDeviceGetName(env.handle), "uuid": uuid,
                    "driver": pynvml.nvmlSystemGetDriverVersion()},
            "args": vars(args), "started_unix_s": time.time(), "load": None,
        }
        if args.load != "none":  # runs through a and b/c; stopped below
            work_s = args.seconds + 60  # a: ~1 s, 50 s at its budgets; it is stopped after c
            child, result["load"] = start_load(env, workload_argv(args.load, work_s),
                                               dict(os.environ, CUDA_VISIBLE_DEVICES=str(uuid)))
        result.update(probe(env, args.seconds, args.calls))
    except pynvml.NVMLError as exc:  # the preflight passed: this is the driver refusing mid-way
        print(f"nvml_probe: NVML failed during the probe: {exc}", file=sys.stderr)
        return 1
    finally:
        if child is not None:
            child.terminate()
            try:
                child.wait(timeout=15)
            except subprocess.TimeoutExpired:
                child.kill()
        pynvml.nvmlShutdown()
    print(format_summary(result))
    text = json.dumps(result, default=str)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")
        print(f"nvml_probe: JSON written to {args.out}")
    else:
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
