"""Load: many concurrent clients posting call batches to one daemon (clients only to 127.0.0.1,
bounded in number and time): nothing acknowledged is lost; p99 latency and the daemon's peak
memory are reported."""

from __future__ import annotations

import json
import resource
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest

from .harness import TRACE, ChaosDaemon, replay_args
from .steady import Acks, check, probe_health

FAMILY = "load"
LOADGEN = Path(__file__).with_name("loadgen.py")


def _load(tmp_path, experiment, clients: int, seconds: float, speed: float) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = min(hard, 65536) if hard != resource.RLIM_INFINITY else 65536
    if soft < want:  # a socket per client on both sides; inherited by the children
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    acks = Acks()
    daemon = ChaosDaemon(tmp_path, *replay_args(speed=speed)).start()
    peak = {"rss": 0}
    sampling = threading.Event()

    def watch_memory() -> None:
        proc = psutil.Process(daemon.pid)
        while not sampling.is_set():
            peak["rss"] = max(peak["rss"], proc.memory_info().rss)
            time.sleep(0.1)

    rss_before = psutil.Process(daemon.pid).memory_info().rss
    watcher = threading.Thread(target=watch_memory, daemon=True)
    watcher.start()
    out = subprocess.run(
        [sys.executable, str(LOADGEN), daemon.url, str(clients), str(seconds),
         str(TRACE.start_s), str(speed)],
        capture_output=True, text=True, timeout=seconds + 120)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    status, health = probe_health(daemon)
    assert daemon.stop(timeout_s=60) == 0  # the final flush settles every call
    sampling.set()
    watcher.join()
    acks.batches.update({int(b): n for b, n in result["acks"].items()})
    accepted = sum(acks.batches.values())
    with sqlite3.connect(f"file:{daemon.db}?mode=ro", uri=True) as conn:
        stored = conn.execute("SELECT COALESCE(SUM(calls), 0) FROM call_batches").fetchone()[0]
        settled = conn.execute("SELECT COALESCE(SUM(calls), 0) FROM call_minute").fetchone()[0]
    experiment.figure("clients x seconds", f"{clients} x {seconds:g}")
    experiment.figure("requests", result["requests"])
    experiment.figure("batches acknowledged", len(acks.batches))
    experiment.figure("calls accepted / stored / settled", f"{accepted} / {stored} / {settled}")
    experiment.figure("throughput (calls/s)", round(accepted / result["wall_s"]))
    experiment.figure("p50 latency (ms)", round(result["p50_s"] * 1000, 1))
    experiment.figure("p99 latency (ms)", round(result["p99_s"] * 1000, 1))
    experiment.figure("max latency (ms)", round(result["max_s"] * 1000, 1))
    experiment.figure("daemon RSS before / peak (MiB)",
                      f"{rss_before / 2**20:.0f} / {peak['rss'] / 2**20:.0f}")
    experiment.figure("refused", result["refused"])
    experiment.observe(
        f"{clients} clients for {seconds:g} s: {result['requests']} requests, {accepted} calls "
        f"accepted, {stored} stored, {settled} settled; p99 {result['p99_s'] * 1000:.0f} ms; "
        f"daemon peak RSS {peak['rss'] / 2**20:.0f} MiB" +
        (f"; refused {result['refused']} {result['messages']}" if result["refused"] else ""))
    assert accepted == stored == settled
    check(experiment, daemon.db, acks, health=(status, health), interval_log=daemon.interval_log,
          trace=TRACE, counter_devices=["gpu0"])


def test_100_clients_for_5_s(tmp_path, experiment):
    """With 100 concurrent clients posting batches of 20 calls for 5 s, every accepted call is
    stored and settled (accepted = stored = settled), the stored energy still equals the trace's
    counter, and /healthz answers; p99 latency and peak memory are reported."""
    _load(tmp_path, experiment, clients=100, seconds=5.0, speed=1.0)


@pytest.mark.slow
def test_1000_clients_for_60_s(tmp_path, experiment):
    """With 1,000 concurrent clients posting batches of 20 calls for 60 s, every accepted call
    is stored and settled (accepted = stored = settled), the stored energy still equals the
    trace's counter, and /healthz answers; p99 latency and peak memory are reported."""
    _load(tmp_path, experiment, clients=1000, seconds=60.0, speed=0.45)
