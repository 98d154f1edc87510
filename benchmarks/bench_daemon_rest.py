"""The daemon's own cost at rest: eight replayed H200s sampled at the default cadence (power at
10 Hz, energy counter at 1 Hz), no requests. Reports the daemon's CPU as % of one core and its RSS.

    .venv/bin/python benchmarks/bench_daemon_rest.py [--seconds 60] [--gpus 8] [--warmup 5]

The 29.6 s trace is stretched (replay speed < 1) so that it lasts the whole measurement, and the
sampling cadence scaled with it, so the daemon polls at 10 Hz and reads counters at 1 Hz of real
time all the way through, as on a live node."""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_ingest import TRACE, start_daemon  # noqa: E402

from carbonwatch.collectors.trace import load_trace  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--gpus", type=int, default=8)
    parser.add_argument("--warmup", type=float, default=5.0, help="seconds before measuring")
    args = parser.parse_args()

    trace = load_trace(TRACE)
    speed = (trace.end_s - trace.start_s) / (args.seconds + args.warmup + 2)
    with tempfile.TemporaryDirectory() as tmp:
        # Cadences are in trace seconds: scale them so the real cadence stays 10 Hz / 1 Hz.
        cadence = {"CARBONWATCH_POWER_INTERVAL_S": f"{0.1 * speed:.6f}",
                   "CARBONWATCH_COUNTER_INTERVAL_S": f"{1.0 * speed:.6f}"}
        proc, _url = start_daemon(Path(tmp) / "rest.db", "--replay-gpus", str(args.gpus),
                                  "--replay-speed", f"{speed:.6f}", extra_env=cadence)
        try:
            daemon = psutil.Process(proc.pid)
            time.sleep(args.warmup)
            cpu0, t0 = daemon.cpu_times(), time.monotonic()
            rss_peak = 0
            while time.monotonic() - t0 < args.seconds:
                time.sleep(min(1.0, args.seconds - (time.monotonic() - t0)))
                rss_peak = max(rss_peak, daemon.memory_info().rss)
            cpu1, elapsed = daemon.cpu_times(), time.monotonic() - t0
        finally:
            proc.terminate()
            proc.wait(60)

    cpu_s = (cpu1.user + cpu1.system) - (cpu0.user + cpu0.system)
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"Python {platform.python_version()}")
    print(f"daemon at rest, {args.gpus} replayed GPUs, power 10 Hz, counter 1 Hz, "
          f"{elapsed:.0f} s: CPU {cpu_s / elapsed * 100:.2f} % of one core "
          f"({cpu_s:.2f} s), RSS peak {rss_peak / 2**20:.0f} MB")


if __name__ == "__main__":
    main()
