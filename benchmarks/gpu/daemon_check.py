"""The sidecar part of benchmarks/gpu_check.py (``--daemon``): a real ``carbonwatch daemon --backend
nvml``, a training job through ``carbonwatch run`` and an inference server decorated with
``carbonwatch.inference`` at the same time; prints the per-phase split, per-call energy by batch
size and the counter delta against the attributed, stored total. Needs the GPU, like the check."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

WORKLOAD = Path(__file__).resolve().parent / "workload.py"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=10) as r:  # noqa: S310 - loopback only
        return json.loads(r.read())


def daemon_check(seconds: float, workdir: Path) -> None:
    from carbonwatch.collectors.nvml import NvmlBackend

    nvml = NvmlBackend()
    counter0_mj = nvml.device(0).total_energy_mj()
    port = _free_port()
    env = dict(os.environ, CARBONWATCH_DB=str(workdir / "gpu-check.db"),
               CARBONWATCH_DAEMON_URL=f"http://127.0.0.1:{port}", CARBONWATCH_PORT=str(port))
    daemon = subprocess.Popen([sys.executable, "-m", "carbonwatch", "daemon", "--backend", "nvml",
                               "--port", str(port)], env=env)
    try:
        base = f"http://127.0.0.1:{port}"
        for _ in range(100):
            try:
                _get(base + "/healthz")
                break
            except OSError:
                time.sleep(0.2)
        train = subprocess.Popen([sys.executable, "-m", "carbonwatch", "run", "--kind", "training",
                                  "--name", "gpu-check-train", "--model", "mlp-8192", "--",
                                  sys.executable, str(WORKLOAD), "train", "--seconds",
                                  str(seconds)], env=env)
        infer = subprocess.Popen([sys.executable, str(WORKLOAD), "infer", "--seconds",
                                  str(seconds)], env=env)
        train.wait()
        infer.wait()
        time.sleep(8)  # let the daemon settle the last calls
        print("per phase:", json.dumps(_get(base + "/v1/summary?group_by=phase"), indent=1))
        print("per model:", json.dumps(_get(base + "/v1/summary?group_by=model"), indent=1))
        print("devices:", json.dumps(_get(base + "/v1/devices"), indent=1))
    finally:
        daemon.terminate()
        daemon.wait(timeout=30)
    counter_j = (nvml.device(0).total_energy_mj() - counter0_mj) / 1000
    import sqlite3

    with sqlite3.connect(workdir / "gpu-check.db") as db:
        (stored_j,) = db.execute(
            "SELECT COALESCE(SUM(energy_j), 0) FROM energy_minute WHERE device_id = 'gpu0'"
        ).fetchone()
    # The counter spans the daemon's start-up and shutdown too, so it is a little larger.
    print(f"gpu0 counter delta over the daemon's life {counter_j:.1f} J; attributed and stored "
          f"{stored_j:.1f} J ({100 * (stored_j - counter_j) / counter_j:+.2f} %)")
    with sqlite3.connect(workdir / "gpu-check.db") as db:
        rows = db.execute("SELECT tags, COUNT(*), AVG(energy_j) FROM calls "
                          "WHERE energy_j IS NOT NULL GROUP BY tags").fetchall()
    print("per-call energy by batch (raw call log):")
    for tags, n, mean_j in rows:
        print(f"  {tags:<20} {n:6d} calls  {mean_j * 1000:9.3f} mJ/call")
