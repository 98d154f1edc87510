"""Deferral through a real single-node Slurm (Debian's slurm-wlm and munge, started by
scripts/slurm-up.sh): ``carbonwatch submit --via slurm`` plans the window, Slurm holds the job
until it, a newer forecast moves it, ``cancel`` scancels it, and the Slurm prolog/epilog measure
it into its record. Skipped, saying why, only where slurmctld cannot be started."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from daemon_helpers import DaemonProcess
from forecast_csv import eia_values, shifted_csv
from test_scheduler_daemon import _cli, _env, _ok

from carbonwatch.scheduler.slurm import SlurmCli

ROOT = Path(__file__).resolve().parent.parent
SLURM_DIR = Path(os.environ.get("CARBONWATCH_SLURM_DIR", "/tmp/carbonwatch-slurm"))
# Appends its start time to the file given, then spins for 1.5 s (measurable CPU energy).
MARKER = (
    "import sys, time\n"
    "t = time.time(); open(sys.argv[1], 'a').write(f'{t}\\n')\n"
    "while time.time() - t < 1.5: pass\n"
)


@pytest.fixture(scope="module")
def slurm() -> dict[str, str]:
    """A running single-node Slurm; stopped afterwards if this fixture started it."""
    if shutil.which("slurmctld") is None or shutil.which("sbatch") is None:
        pytest.skip("Slurm is not installed (scripts/system-deps.sh installs slurm-wlm, munge)")
    if os.geteuid() != 0:
        pytest.skip("a single-node Slurm needs root (slurmd starts jobs as their users)")
    pid = SLURM_DIR / "run" / "slurmctld.pid"
    was_running = pid.exists() and Path(f"/proc/{pid.read_text().strip()}").exists()
    up = subprocess.run(
        ["bash", str(ROOT / "scripts" / "slurm-up.sh"), str(SLURM_DIR)],
        capture_output=True, text=True, timeout=60,
    )
    if up.returncode != 0:
        pytest.skip(f"slurmctld could not start: {up.stderr.strip()[-500:]}")
    env = {"SLURM_CONF": str(SLURM_DIR / "slurm.conf")}
    yield env
    if not was_running:
        subprocess.run(["bash", str(ROOT / "scripts" / "slurm-up.sh"), "--down", str(SLURM_DIR)],
                       capture_output=True, timeout=60)


def _show(slurm: dict[str, str], job_id: str):
    job = SlurmCli(slurm).show(job_id)
    assert job is not None
    return job


def _wait(daemon: DaemonProcess, job_id: str, done, timeout_s: float = 60.0) -> dict:
    def check() -> dict | None:
        status, view = daemon.request("GET", f"/v1/deferred/{job_id}")
        assert status == 200, view
        return view if done(view) else None

    return daemon.wait_for(check, timeout_s, every_s=0.2)


def test_a_job_deferred_through_slurm_waits_for_its_window_moves_and_is_measured(
    tmp_path: Path, slurm: dict[str, str]
) -> None:
    high, low = eia_values(14, 1)[0], eia_values(19, 1)[0]
    csv = tmp_path / "ciso.csv"
    (tmp_path / "cw.toml").write_text("scheduler_refresh_s = 1\n")
    marker, other = tmp_path / "started.txt", tmp_path / "other.txt"
    script = tmp_path / "marker.py"
    script.write_text(MARKER)
    env = _env(
        tmp_path,
        CARBONWATCH_PROVIDER="csv",
        CARBONWATCH_PROVIDER_URL=str(csv),
        CARBONWATCH_ZONE="CISO",
        CARBONWATCH_CONFIG=str(tmp_path / "cw.toml"),
        **slurm,
    )
    shifted_csv(csv, [high] * 40, time.time(), 3.0)
    daemon = DaemonProcess(tmp_path / "cw.db", "--backend", "none", env=env).start()
    try:
        # Low at t0+12 s (the provider reads the file at each fetch). Slurm's time limits are
        # whole minutes, and --deadline cancels a job that could not end by it: the deadline
        # leaves a minute after the latest window.
        t0 = int(time.time())
        shifted_csv(csv, [high] * 6 + [low] + [high] * 30, t0, 2.0)
        # The node's prolog and epilog talk to this daemon (deploy/slurm/common.sh settings).
        (SLURM_DIR / "slurm.env").write_text(f"CARBONWATCH_URL={daemon.url}\n")
        env["CARBONWATCH_DAEMON_URL"] = daemon.url
        env["PYTHONPATH"] = os.environ.get("PYTHONPATH", str(ROOT))
        wrap = (f"{sys.executable} -m carbonwatch run --name slurm-marker -- "
                f"{sys.executable} {script} {marker}")
        out = _ok(_cli(env, "submit", "--json", "--via", "slurm", "--deadline", "+120s",
                       "--duration", "3s", "--", f"--output={tmp_path}/slurm-%j.out",
                       "--job-name=slurm-marker", f"--wrap={wrap}", cwd=tmp_path))
        view = json.loads(out.stdout)
        first_s = view["plan"][0]["start_s"]
        assert view["via"] == "slurm" and view["slurm_job_id"]
        assert first_s == pytest.approx(t0 + 12.0)
        slurm_id = view["slurm_job_id"]
        job = _show(slurm, slurm_id)
        assert job.state == "PENDING" and first_s <= job.start_s <= first_s + 3.0
        # The queue shows Slurm's view of it.
        listing = _ok(_cli(env, "queue")).stdout
        assert f"slurm {slurm_id} PENDING" in listing

        # A newer forecast moves the low slot to t0+24 s: the daemon moves the Slurm job.
        shifted_csv(csv, [high] * 12 + [low] + [high] * 24, t0, 2.0)
        moved = _wait(daemon, view["id"], lambda v: v["plan"][0]["start_s"] > first_s + 1,
                      timeout_s=12)
        new_s = moved["plan"][0]["start_s"]
        assert new_s == pytest.approx(t0 + 24.0) and "re-planned" in moved["message"]
        daemon.wait_for(lambda: _show(slurm, slurm_id).start_s == math.ceil(new_s), 10,
                        every_s=0.2)
        assert not marker.exists()

        # A second job, cancelled while Slurm holds it.
        second = json.loads(_ok(_cli(
            env, "submit", "--json", "--via", "slurm", "--deadline", "+2h", "--duration", "3s",
            "--", f"--output={tmp_path}/slurm-%j.out",
            f"--wrap={sys.executable} {script} {other}", cwd=tmp_path)).stdout)
        _ok(_cli(env, "cancel", second["id"]))
        assert _show(slurm, second["slurm_job_id"]).state == "CANCELLED"
        # sbatch's refusal is the submitter's error, in Slurm's words; nothing is queued.
        refused = _cli(env, "submit", "--via", "slurm", "--deadline", "+2h", "--duration", "3s",
                       "--", "--partition=nosuch", "--wrap=true", cwd=tmp_path)
        assert refused.returncode == 2 and "Slurm refused the job" in refused.stderr
        assert "nosuch" in refused.stderr or "partition" in refused.stderr, refused.stderr
        paused = _cli(env, "submit", "--via", "slurm", "--interruptible", "--deadline", "+2h",
                      "--duration", "3s", "--", "--wrap=true", cwd=tmp_path)
        assert paused.returncode == 2 and "not with via 'slurm'" in paused.stderr

        done = _wait(daemon, view["id"], lambda v: v["status"] in ("done", "failed", "cancelled"),
                     timeout_s=90)
        gone = _wait(daemon, second["id"], lambda v: v["status"] == "cancelled", timeout_s=5)
        status, record = daemon.request("GET", f"/v1/jobs/{done['job_id']}")
    finally:
        daemon.stop()
    logs = "\n".join(p.read_text() for p in tmp_path.glob("slurm-*.out"))
    assert done["status"] == "done", (done, logs)
    (started,) = [float(line) for line in marker.read_text().split()]  # ran exactly once
    assert new_s <= started < view["deadline_s"]  # no earlier than its (moved) window
    assert done["slurm_state"] == "COMPLETED" and done["exit_code"] == 0
    # Measured through the prolog/epilog identity, and that measurement is on the record.
    assert status == 200 and record["identity"] == f"slurm:{slurm_id}"
    assert record["energy_j"] > 0 and record["status"] == "finished"
    assert done["realised_co2e_g"] == pytest.approx(record["co2e_g"])
    assert done["realised_co2e_g"] > 0
    assert gone["slurm_state"] == "CANCELLED" and not other.exists()
