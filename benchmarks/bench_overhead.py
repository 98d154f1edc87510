"""Collector overhead: % of one core and peak RSS of carbonwatch's sampling loop with 8 replayed
GPUs (power at 10 Hz, energy counter at 1 Hz) plus a 1 Hz CPU/RAM collection scanning ~300
processes; side by side, codecarbon's OfflineEmissionsTracker at a 1 s interval on the same machine.

    .venv/bin/python benchmarks/bench_overhead.py [--seconds 30] [--processes 300]

Each side runs in its own fresh process; CPU time is counted from after set-up (imports, tracker
start) to the end of the measured window, so both figures are steady-state costs.

What the replay cannot show: a replayed GPU answers in microseconds, a real one does not. On the
H200 a real energy-counter read (``nvmlDeviceGetTotalEnergyConsumption``) took about 3.8 ms, so 8
GPUs read once a second spend ~30 ms of each second in the driver, which this figure leaves out
(whether that time is CPU or waiting was not measured: at worst ~3 % of one core). In the daemon
those reads run on the dedicated ``carbonwatch-sampler`` thread (daemon/sampling.py), never on the
aiohttp event loop, and pynvml's ctypes calls release the GIL while they wait, so a slow read
delays only the sampling thread: the 8 counters of one collect are read one after another, up to
~30 ms of each GPU's energy can land in the neighbouring interval (none is lost), and that second's
power polls wait as long. See docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

TRACE = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "h200-shared-gpu"


def _cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_carbonwatch(seconds: float) -> dict:
    from carbonwatch.clock import SystemClock
    from carbonwatch.collectors.cpu_model import TdpCpuCollector
    from carbonwatch.collectors.detect import default_process_scanner
    from carbonwatch.collectors.gpu import GpuCollector
    from carbonwatch.collectors.ram import RamModelCollector
    from carbonwatch.collectors.trace import load_trace
    from carbonwatch.collectors.trace_gpu import ReplayGpuBackend
    from carbonwatch.grid.static import StaticSource, world_average
    from carbonwatch.ledger import EnergyLedger
    from carbonwatch.pricing import Pricing
    from carbonwatch.sampler import Sampler

    clock = SystemClock()
    trace = load_trace(TRACE)
    gpus = GpuCollector(ReplayGpuBackend(trace, clock, devices=8, start_at_s=clock.time()))
    scanner = default_process_scanner()
    collectors = [gpus, TdpCpuCollector(processes=scanner), RamModelCollector(processes=scanner)]
    ledger = EnergyLedger(Pricing())
    sampler = Sampler(collectors, intensity=StaticSource(world_average()), owners=dict,
                      sinks=[ledger])
    sampler.start(clock.time())
    cpu0, t0 = _cpu_s(), time.monotonic()
    deadline = t0 + seconds
    while (now := time.monotonic()) < deadline:
        next_s = sampler.step(clock.time())
        time.sleep(max(0.0, min(next_s - clock.time(), deadline - now)))
    cpu1, t1 = _cpu_s(), time.monotonic()
    scanned = len(scanner.snapshot(clock.time()).procs)
    return {"cpu_pct_of_core": 100 * (cpu1 - cpu0) / (t1 - t0), "peak_rss_mb": _peak_rss_mb(),
            "processes_scanned": scanned, "intervals_total_j": ledger.device_total_j()}


def run_codecarbon(seconds: float) -> dict:
    import logging

    from codecarbon import OfflineEmissionsTracker

    logging.getLogger("codecarbon").setLevel(logging.ERROR)
    tracker = OfflineEmissionsTracker(country_iso_code="USA", measure_power_secs=1,
                                      save_to_file=False, log_level="error")
    tracker.start()
    cpu0, t0 = _cpu_s(), time.monotonic()
    time.sleep(seconds)
    cpu1, t1 = _cpu_s(), time.monotonic()
    tracker.stop()
    return {"cpu_pct_of_core": 100 * (cpu1 - cpu0) / (t1 - t0), "peak_rss_mb": _peak_rss_mb()}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--processes", type=int, default=300)
    parser.add_argument("--side", choices=["carbonwatch", "codecarbon"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.side:
        fn = run_carbonwatch if args.side == "carbonwatch" else run_codecarbon
        print(json.dumps(fn(args.seconds)))
        return
    # ~N idle processes so the 1 Hz scan has a realistic node's worth of work.
    lifetime_s = str(args.seconds * 3 + 60)
    sleepers = [subprocess.Popen(["sleep", lifetime_s]) for _ in range(args.processes)]
    try:
        results = {}
        for side in ("carbonwatch", "codecarbon"):
            out = subprocess.run([sys.executable, __file__, "--side", side, "--seconds",
                                  str(args.seconds)], capture_output=True, text=True, check=True)
            results[side] = json.loads(out.stdout.strip().splitlines()[-1])
    finally:
        for p in sleepers:
            p.kill()
    cw, cc = results["carbonwatch"], results["codecarbon"]
    print(f"window {args.seconds:.0f} s, {cw['processes_scanned']} processes on the machine")
    print(f"carbonwatch (8 replayed GPUs 10 Hz power + 1 Hz counter, CPU+RAM 1 Hz with process "
          f"scan): {cw['cpu_pct_of_core']:.2f} % of one core, peak RSS {cw['peak_rss_mb']:.0f} MB")
    print(f"codecarbon OfflineEmissionsTracker (1 s, whole machine only): "
          f"{cc['cpu_pct_of_core']:.2f} % of one core, peak RSS {cc['peak_rss_mb']:.0f} MB")
    print(f"ratio codecarbon/carbonwatch CPU: {cc['cpu_pct_of_core'] / cw['cpu_pct_of_core']:.2f}x")
    print("not included (replayed GPUs answer in microseconds): a real energy-counter read took "
          "~3.8 ms on an H200, ~30 ms a second for 8 GPUs, spent on the daemon's sampling thread "
          "with the GIL released, never on its event loop")


if __name__ == "__main__":
    main()
