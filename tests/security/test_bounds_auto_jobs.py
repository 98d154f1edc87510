"""Finding 5: on a live node, calls naming pids with no process are folded (no job each), the
services calls may register are capped per request and in total, vanished services end in one
write, and the shutdown flush finishes however much is pending."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import time

import pytest
from daemon_helpers import DaemonProcess


def _metric(text: str, name: str, label: str) -> float:
    for line in text.splitlines():
        if line.startswith(name) and label in line:
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def _free_pids(n: int) -> list[int]:
    pids = [p for p in range(3_000_000, 3_400_000) if not os.path.exists(f"/proc/{p}")]
    assert len(pids) >= n
    return pids[:n]


@pytest.fixture
def sleepers():
    procs: list[subprocess.Popen[bytes]] = []

    def start(n: int) -> list[subprocess.Popen[bytes]]:
        for _ in range(n):
            procs.append(subprocess.Popen(["sleep", "300"]))  # noqa: S607
        return procs[-n:]

    yield start
    for p in procs:
        p.kill()
        p.wait()


def _calls(pids: list[int], model: str = "m") -> dict:
    now = time.time()
    return {"calls": [{"model": model, "start": now - 1.0, "end": now - 0.5, "pid": p}
                      for p in pids]}


def test_ten_thousand_calls_naming_absent_pids_make_no_jobs(tmp_path):
    daemon = DaemonProcess(tmp_path / "cw.db", "--backend", "none").start()
    try:
        status, body = daemon.request("POST", "/v1/calls", _calls(_free_pids(10_000)))
        assert (status, body["accepted"]) == (200, 10_000)
        assert daemon.request("GET", "/v1/jobs?status=running")[1]["jobs"] == []
        healths = []
        for _ in range(10):  # through the next two housekeeping sweeps
            healths.append(daemon.request("GET", "/healthz")[0])
            time.sleep(1.0)
        text = daemon.request("GET", "/metrics")[1]
    finally:
        assert daemon.stop(timeout_s=60) == 0
    assert healths == [200] * 10
    assert _metric(text, "carbonwatch_calls_folded", 'reason="no_such_pid"') == 10_000
    with sqlite3.connect(daemon.db) as conn:
        assert conn.execute("SELECT COUNT(*) FROM jobs").fetchone()[0] == 0
        assert conn.execute("SELECT SUM(calls) FROM call_minute").fetchone()[0] == 10_000


def test_new_services_are_capped_per_request_and_in_total(tmp_path, sleepers):
    pids = [p.pid for p in sleepers(7)]
    env = {"CARBONWATCH_MAX_AUTO_JOBS_PER_REQUEST": "3", "CARBONWATCH_MAX_AUTO_JOBS": "5"}
    with DaemonProcess(tmp_path / "cw.db", "--backend", "none", env=env) as daemon:
        status, body = daemon.request("POST", "/v1/calls", _calls(pids[:4]))
        assert status == 400
        assert "max_auto_jobs_per_request" in body["error"] and "4 pids" in body["error"]
        assert daemon.request("GET", "/v1/jobs")[1]["jobs"] == []  # nothing registered
        assert daemon.request("POST", "/v1/calls", _calls(pids[:3]))[0] == 200
        assert daemon.request("POST", "/v1/calls", _calls(pids[3:6]))[0] == 200
        assert daemon.request("POST", "/v1/calls", _calls(pids[6:]))[0] == 200
        jobs = daemon.request("GET", "/v1/jobs?status=running")[1]["jobs"]
        text = daemon.request("GET", "/metrics")[1]
    assert sorted(p for j in jobs for p in j["pids"]) == sorted(pids[:5])
    assert _metric(text, "carbonwatch_calls_folded", 'reason="auto_job_cap"') == 2


def test_vanished_services_end_in_one_write(tmp_path, sleepers):
    procs = sleepers(40)
    pids = [p.pid for p in procs]
    daemon = DaemonProcess(tmp_path / "cw.db", "--backend", "none").start()
    try:
        assert daemon.request("POST", "/v1/calls", _calls(pids))[0] == 200
        assert len(daemon.request("GET", "/v1/jobs?status=running")[1]["jobs"]) == 40
        for p in procs:
            p.kill()
        for p in procs:
            p.wait()  # reaped: a zombie still counts as a process
        daemon.wait_for(lambda: daemon.request("GET", "/v1/jobs?status=running")[1]["jobs"]
                        == [], timeout_s=30)
        ended = daemon.request("GET", "/v1/jobs?status=finished")[1]["jobs"]
    finally:
        assert daemon.stop() == 0
    assert len(ended) == 40
    assert len({j["ended_s"] for j in ended}) == 1  # one sweep, one write


def test_the_shutdown_flush_writes_everything_pending(tmp_path):
    """100,000 calls acknowledged, then SIGTERM at once: every one is in the store."""
    with DaemonProcess(tmp_path / "cw.db", "--backend", "none") as daemon:  # stopped on failure
        now = time.time()
        batch = {"calls": [{"model": f"m{i % 7}", "start": now - 2.0, "end": now - 1.0}
                           for i in range(10_000)]}
        for _ in range(10):
            assert daemon.request("POST", "/v1/calls", batch)[0] == 200
        assert daemon.stop(timeout_s=120) == 0
    with sqlite3.connect(daemon.db) as conn:
        assert conn.execute("SELECT SUM(calls) FROM call_minute").fetchone()[0] == 100_000
        assert conn.execute("SELECT COUNT(*) FROM call_batches WHERE pending IS NOT NULL"
                            ).fetchone()[0] == 0


def test_running_jobs_registered_without_pids_are_capped_per_user(tmp_path):
    """A registration without pids never vanishes: past max_running_jobs_per_user running jobs
    of one uid, a 429 naming the limit; ending one makes room; merges into a running job of the
    same identity are not new jobs; the daemon keeps serving."""
    env = {"CARBONWATCH_MAX_RUNNING_JOBS_PER_USER": "3"}
    with DaemonProcess(tmp_path / "cw.db", "--backend", "none", env=env) as d:
        ids = []
        for i in range(3):
            status, job = d.request("POST", "/v1/jobs", {"name": f"j{i}", "kind": "training",
                                                         "identity": f"slurm:{i}"})
            assert status == 201, job
            ids.append(job["id"])
        status, body = d.request("POST", "/v1/jobs", {"name": "j3", "kind": "training"})
        assert status == 429 and "max_running_jobs_per_user" in body["error"]
        assert f"uid {os.geteuid()}" in body["error"]
        status, merged = d.request("POST", "/v1/jobs", {"name": "j0", "kind": "training",
                                                        "identity": "slurm:0"})
        assert status in (200, 201) and merged["id"] == ids[0]  # a merge, not a fourth job
        assert d.request("POST", f"/v1/jobs/{ids[1]}/end", {"exit_code": 0})[0] == 200
        status, job = d.request("POST", "/v1/jobs", {"name": "j4", "kind": "training"})
        assert status == 201, job
        assert d.request("GET", "/healthz")[0] == 200
