"""``carbonwatch run`` with a daemon running registers its command there (pids, then end)."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

from daemon_helpers import DaemonProcess

from carbonwatch.daemon.attach import DaemonClient, _end_if_last_rank

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


def test_a_run_whose_end_the_daemon_will_not_record_still_exits_with_the_commands_code(tmp_path):
    """Someone ends the job while its command runs (here: its owner, through the API), so the
    wrapper's own end report is refused (409). The command ran and exited 5: the wrapper says
    the daemon did not take its end and exits 5, not with an error code of its own."""
    started = tmp_path / "started"
    code = ("import pathlib, sys, time\n"
            f"pathlib.Path({str(started)!r}).write_text('x')\n"
            "time.sleep(3)\nsys.exit(5)\n")
    with DaemonProcess(tmp_path / "daemon.db", "--backend", "none") as daemon:
        port = str(urlsplit(daemon.url).port)
        env = {**daemon.env, "CARBONWATCH_PORT": port, "CARBONWATCH_DB": str(tmp_path / "run.db")}
        wrapper = subprocess.Popen(  # noqa: S603
            [sys.executable, "-m", "carbonwatch", "run", "--name", "ended-early", "--",
             sys.executable, "-c", code],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
        )
        try:
            def running_job() -> dict | None:
                status, body = daemon.request("GET", "/v1/jobs?status=running")
                jobs = [j for j in body["jobs"] if j["name"] == "ended-early"]
                return jobs[0] if jobs and started.exists() else None

            job = daemon.wait_for(running_job, timeout_s=30)
            status, ended = daemon.request("POST", f"/v1/jobs/{job['id']}/end", {"exit_code": 0})
            assert status == 200, ended
            _, stderr = wrapper.communicate(timeout=60)
        finally:
            wrapper.kill()
    assert wrapper.returncode == 5, stderr
    assert f"could not end job {job['id']}" in stderr and "already ended" in stderr, stderr
    assert "the command itself exited with 5" in stderr and "Traceback" not in stderr


class _JobDaemon(BaseHTTPRequestHandler):
    """Just enough of the daemon for a rank's end: the job, and its end."""

    ended: list[dict] = []

    def _reply(self, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        status = "finished" if self.ended else "running"
        self._reply({"id": "j1", "status": status, "pids": [4242], "tags": {}, "ended_s": None})

    def do_POST(self) -> None:  # noqa: N802
        length = int(self.headers.get("Content-Length") or 0)
        self.ended.append(json.loads(self.rfile.read(length)))
        self._reply({"id": "j1", "status": "finished"})

    def log_message(self, *args: object) -> None:
        pass


def test_a_rank_ends_its_job_on_a_daemon_that_comes_back_after_a_restart():
    with socket.socket() as s:  # a port nothing listens on yet: the daemon is restarting
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    _JobDaemon.ended = []
    server: list[ThreadingHTTPServer] = []

    def come_back() -> None:
        time.sleep(1.0)
        server.append(ThreadingHTTPServer(("127.0.0.1", port), _JobDaemon))
        server[0].serve_forever()

    thread = threading.Thread(target=come_back, daemon=True)
    thread.start()
    try:
        client = DaemonClient(f"http://127.0.0.1:{port}", timeout_s=5.0)
        job = _end_if_last_rank(client, "j1", 0, own_pid=4242, alive=lambda pid: False)
    finally:
        while not server:
            time.sleep(0.05)
        server[0].shutdown()
        server[0].server_close()
    assert _JobDaemon.ended == [{"exit_code": 0}]
    assert job["status"] == "finished" and job["ended_s"]
