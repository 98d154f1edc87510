"""The daemon's own cost at rest and its API's latency, with eight replayed H200s sampled at the
default cadence (power at 10 Hz, energy counter at 1 Hz), twice in one run: reads answered from the
trace at once, then every read taking what it took on a real H200 (``--replay-latency h200``:
energy counter 3.8 ms, power 1.2 us, process list 10 us). Reports, for each, the daemon's CPU as %
of one core and its RSS with no requests, then the p50/p99 of small API requests (a 10-call
``POST /v1/calls`` acknowledged after commit, and ``GET /v1/devices``) sent while it samples.

    .venv/bin/python benchmarks/bench_daemon_rest.py [--seconds 60] [--gpus 8] [--warmup 5]
        [--probe-seconds 20] [--probe-rate 20]

The 29.6 s trace is stretched (replay speed < 1) so that it lasts the whole measurement, and the
sampling cadence scaled with it, so the daemon polls at 10 Hz and reads counters at 1 Hz of real
time all the way through, as on a live node."""

from __future__ import annotations

import argparse
import http.client
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlparse

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_ingest import TRACE, bodies, start_daemon  # noqa: E402

from carbonwatch.collectors.trace import load_trace  # noqa: E402


def probe(url: str, seconds: float, rate_hz: float, start_s: float) -> dict[str, list[float]]:
    """Request latencies (s) per endpoint, ``rate_hz`` requests a second, one connection."""
    parsed = urlparse(url)
    conn = http.client.HTTPConnection(parsed.hostname, parsed.port, timeout=30)
    payloads = bodies(10, 64, start_s)
    out: dict[str, list[float]] = {"POST /v1/calls (10 calls)": [], "GET /v1/devices": []}
    t0 = time.monotonic()
    k = 0
    while time.monotonic() - t0 < seconds:
        due = t0 + k / rate_hz
        time.sleep(max(0.0, due - time.monotonic()))
        t = time.perf_counter()
        if k % 2 == 0:
            key = "POST /v1/calls (10 calls)"
            conn.request("POST", "/v1/calls", body=payloads[k // 2 % len(payloads)],
                         headers={"Content-Type": "application/json"})
        else:
            key = "GET /v1/devices"
            conn.request("GET", "/v1/devices")
        resp = conn.getresponse()
        resp.read()
        if resp.status != 200:
            raise RuntimeError(f"{key}: {resp.status}")
        out[key].append(time.perf_counter() - t)
        k += 1
    conn.close()
    return out


def measure(args: argparse.Namespace, latency: str) -> list[str]:
    trace = load_trace(TRACE)
    span_s = args.seconds + args.warmup + args.probe_seconds + 4
    speed = (trace.end_s - trace.start_s) / span_s
    lines = []
    with tempfile.TemporaryDirectory() as tmp:
        # Cadences are in trace seconds: scale them so the real cadence stays 10 Hz / 1 Hz.
        cadence = {"CARBONWATCH_POWER_INTERVAL_S": f"{0.1 * speed:.6f}",
                   "CARBONWATCH_COUNTER_INTERVAL_S": f"{1.0 * speed:.6f}"}
        proc, url = start_daemon(Path(tmp) / "rest.db", "--replay-gpus", str(args.gpus),
                                 "--replay-speed", f"{speed:.6f}", "--replay-latency", latency,
                                 extra_env=cadence)
        try:
            daemon = psutil.Process(proc.pid)
            time.sleep(args.warmup)
            cpu0, t0 = daemon.cpu_times(), time.monotonic()
            rss_peak = 0
            while time.monotonic() - t0 < args.seconds:
                time.sleep(min(1.0, args.seconds - (time.monotonic() - t0)))
                rss_peak = max(rss_peak, daemon.memory_info().rss)
            cpu1, elapsed = daemon.cpu_times(), time.monotonic() - t0
            latencies = probe(url, args.probe_seconds, args.probe_rate, trace.start_s)
        finally:
            proc.terminate()
            proc.wait(60)
    cpu_s = (cpu1.user + cpu1.system) - (cpu0.user + cpu0.system)
    lines.append(f"reads {'as on an H200' if latency == 'h200' else 'instant (no latency)'}: "
                 f"at rest {elapsed:.0f} s, CPU {cpu_s / elapsed * 100:.2f} % of one core "
                 f"({cpu_s:.2f} s), RSS peak {rss_peak / 2**20:.0f} MB")
    for key, values in latencies.items():
        q = statistics.quantiles(values, n=100)
        lines.append(f"  {key}: {len(values)} requests, p50 {q[49] * 1e3:.2f} ms, "
                     f"p99 {q[98] * 1e3:.2f} ms, max {max(values) * 1e3:.2f} ms")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="seconds at rest, measured")
    parser.add_argument("--gpus", type=int, default=8)
    parser.add_argument("--warmup", type=float, default=5.0, help="seconds before measuring")
    parser.add_argument("--probe-seconds", type=float, default=20.0,
                        help="seconds of API requests after the rest measurement")
    parser.add_argument("--probe-rate", type=float, default=20.0, help="API requests a second")
    args = parser.parse_args()

    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"Python {platform.python_version()}, load average {os.getloadavg()[0]:.2f}")
    print(f"daemon with {args.gpus} replayed GPUs, power 10 Hz, counter 1 Hz")
    for latency in ("none", "h200"):
        for line in measure(args, latency):
            print(line, flush=True)


if __name__ == "__main__":
    main()
