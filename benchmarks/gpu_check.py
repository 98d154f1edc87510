"""GPU check on a real NVIDIA GPU (needs the NVIDIA driver, nvidia-ml-py and PyTorch with CUDA).

Part 1, the collector: the real NVML GpuCollector, Sampler and attribution run in this process
while a training loop runs alone, then an inference loop alone, then both together. Prints the
energy counter's delta (read directly through NVML) against the attributed total, the split per
process, and the sampling loop's CPU overhead.

Part 2, the sidecar (``--daemon``): a real ``carbonwatch daemon --backend nvml``, a training job
through ``carbonwatch run`` and an inference server decorated with ``carbonwatch.inference`` at the
same time; prints the per-phase split, per-call energy by batch size and the counter delta against
the attributed total.

    python benchmarks/gpu_check.py [--seconds 10] [--daemon]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
WORKLOAD = HERE / "gpu" / "workload.py"


def _cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def collector_check(seconds: float) -> None:
    from carbonwatch.accounting import Pricing
    from carbonwatch.attribution import IDLE
    from carbonwatch.clock import SystemClock
    from carbonwatch.collectors.gpu import GpuCollector
    from carbonwatch.collectors.nvml import NvmlBackend
    from carbonwatch.grid.static import StaticSource, world_average
    from carbonwatch.ledger import Ledger
    from carbonwatch.model import OTHER
    from carbonwatch.sampler import Sampler

    backend = NvmlBackend()
    device = backend.device(0)
    collector = GpuCollector(backend)
    print(f"GPU: {device.name} ({device.uuid}), {backend.device_count()} device(s); "
          f"methods: {[d.method for d in collector.devices()]}")
    clock = SystemClock()
    roles: dict[int, str] = {}
    ledger = Ledger(Pricing())
    sampler = Sampler([collector], intensity=StaticSource(world_average()),
                      owners=lambda: {pid: f"pid:{pid}" for pid in roles}, sinks=[ledger])

    def phase(name: str, procs: list[subprocess.Popen]) -> None:
        while any(p.poll() is None for p in procs):
            next_s = sampler.step(clock.time())
            time.sleep(max(0.0, min(next_s - clock.time(), 0.05)))
        print(f"phase {name}: done")

    counter0 = device.total_energy_mj()
    sampler.start(clock.time())
    cpu0, t0 = _cpu_s(), time.monotonic()
    for name, spec in [("train alone", ["train"]), ("infer alone", ["infer"]),
                       ("both", ["train", "infer"])]:
        procs = []
        for role in spec:
            p = subprocess.Popen([sys.executable, str(WORKLOAD), role, "--seconds", str(seconds)])
            roles[p.pid] = role
            procs.append(p)
        phase(name, procs)
    sampler.flush(clock.time())
    counter1 = device.total_energy_mj()
    cpu1, t1 = _cpu_s(), time.monotonic()
    delta_j = (counter1 - counter0) / 1000
    gpu0 = [t.energy_by_device.get("gpu0", 0.0) for t in ledger.totals.values()]
    total_j = sum(gpu0)
    print(f"counter delta {delta_j:.1f} J; attributed total {total_j:.1f} J "
          f"({100 * (total_j - delta_j) / delta_j:+.3f} %)")
    for pid, role in roles.items():
        t = ledger.totals.get(f"pid:{pid}")
        print(f"  pid {pid} {role:<5} {t.energy_j if t else 0.0:10.1f} J")
    for key in (IDLE, OTHER):
        t = ledger.totals.get(key)
        print(f"  {key:<15} {t.energy_j if t else 0.0:10.1f} J")
    print(f"sampling loop overhead: {100 * (cpu1 - cpu0) / (t1 - t0):.2f} % of one core "
          f"(this process also launched the workloads), peak RSS "
          f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")


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


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--daemon", action="store_true", help="also run the sidecar check")
    parser.add_argument("--workdir", default="/tmp")
    args = parser.parse_args()
    collector_check(args.seconds)
    if args.daemon:
        daemon_check(args.seconds, Path(args.workdir))


if __name__ == "__main__":
    main()
