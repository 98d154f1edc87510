"""``carbonwatch run`` with a daemon running registers its command there (pids, then end)."""

from __future__ import annotations

import json
import subprocess
import sys
from urllib.parse import urlsplit

from daemon_helpers import DaemonProcess

# The root only waits; its child burns CPU: only a job that owns the whole tree gets energy.
BURN = (
    "import subprocess, sys\n"
    "code = 'import time\\nt = time.time()\\nwhile time.time() - t < 1.5: pass'\n"
    "subprocess.run([sys.executable, '-c', code])\n"
    "sys.exit(3)\n"
)


def test_run_registers_with_the_running_daemon_which_measures_the_whole_tree(tmp_path):
    with DaemonProcess(tmp_path / "daemon.db", "--backend", "none") as daemon:
        port = str(urlsplit(daemon.url).port)
        env = {**daemon.env, "CARBONWATCH_PORT": port, "CARBONWATCH_DB": str(tmp_path / "run.db")}
        result = subprocess.run(  # noqa: S603
            [sys.executable, "-m", "carbonwatch", "run", "--name", "burn", "--kind", "training",
             "--json", "--", sys.executable, "-c", BURN],
            capture_output=True, text=True, env=env, timeout=60,
        )
        assert result.returncode == 3, result.stderr
        out = json.loads(result.stdout)
        status, job = daemon.request("GET", f"/v1/jobs/{out['job_id']}")
    assert out["measured_by"] == daemon.url and out["exit_code"] == 3
    assert (job["status"], job["exit_code"], job["name"], job["kind"]) == (
        "failed", 3, "burn", "training")
    cpu_j = sum(e for device, e in job["energy_j_by_device"].items() if device.startswith("cpu"))
    assert cpu_j > 0  # the grandchild's CPU time, charged to the job
    assert job["energy_j"] == out["energy_j"] > 0
    assert not (tmp_path / "run.db").exists()  # the wrapper did not measure a second time
