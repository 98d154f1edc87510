"""On the recorded H200 trace through a live daemon: the daemon records the device model, and a
job's embodied carbon is unknown (null) for the H200, which has no sourced figure, until a
setting gives one; then it is that figure spread over the job's device time, which cannot exceed
the trace's own duration."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys

import pytest
from daemon_helpers import FIXTURE, REPLAY, DaemonProcess

from carbonwatch.collectors.trace import load_trace


def _report(db, *args, env=None):
    out = subprocess.run(
        [sys.executable, "-m", "carbonwatch", "report", "--db", str(db), "--json", *args],
        capture_output=True, text=True, timeout=60,
        env={**{k: v for k, v in os.environ.items() if not k.startswith("CARBONWATCH_")},
             **(env or {})})
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)["jobs"]


def test_a_daemon_job_on_the_h200_trace_has_unknown_embodied_carbon(tmp_path):
    db = tmp_path / "cw.db"
    with DaemonProcess(db, "--backend", REPLAY, "--replay-speed", "20") as daemon:
        status, created = daemon.request(
            "POST", "/v1/jobs", {"name": "train", "kind": "training", "model": "mlp-8192",
                                 "pid": 416})
        assert status == 201, created
        daemon.wait_for(daemon.replay_finished)
        daemon.request("POST", f"/v1/jobs/{created['id']}/end", {"exit_code": 0})
        status, got = daemon.request("GET", f"/v1/jobs/{created['id']}")
    assert status == 200 and got["embodied_co2e_g"] is None  # the API says unknown too
    assert got["embodied_devices_without_figure"] == ["NVIDIA H200"]
    assert got["co2e_g_marginal"] is None  # no marginal signal configured
    with sqlite3.connect(db) as conn:
        names = {r[0] for r in conn.execute("SELECT name FROM devices")}
    trace = load_trace(FIXTURE)
    assert names == {trace.gpu_name} == {"NVIDIA H200"}  # replay serves the GPU only
    [job] = _report(db, "--job", created["id"])
    assert job["energy_j"] > 0 and job["embodied_co2e_g"] is None
    assert job["footprint_provenance"]["embodied"]["devices_without_figure"] == [trace.gpu_name]

    [job] = _report(db, "--job", created["id"],
                    env={"CARBONWATCH_EMBODIED_KGCO2E": "*H200*=1000"})
    gpu = next(d for d in job["footprint_provenance"]["embodied"]["devices"].values()
               if d["name"] == trace.gpu_name)
    rate_g_per_h = 1000e3 / (6 * 365.25 * 24 * 0.85)
    assert gpu["embodied_co2e_g"] == pytest.approx(gpu["device_hours"] * rate_g_per_h)
    # A job cannot hold the GPU longer than the recording lasted (plus a minute at each end:
    # device time is counted per minute row).
    assert 0 < gpu["device_hours"] <= (trace.end_s - trace.start_s + 120) / 3600
