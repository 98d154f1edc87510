"""Requests choose no URLs or files; secrets at rest.

Against real daemon processes and a real HTTP server on 127.0.0.1 standing in for whatever a
hostile submitter would point the daemon at. On the old code: a submitted job's provider_url
made the daemon fetch it with its Electricity Maps key in the ``auth-token`` header, a CSV path
of /etc/passwd came back with its first line in the job's warnings, deferred-job logs were 0644
in a 0755 folder, and a finished job's captured environment stayed in the store."""

from __future__ import annotations

import json
import sqlite3
import stat
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from daemon_helpers import DaemonProcess

from .helpers import ADMIN_TOKEN

EM_KEY = "em-live-key-" + "4b9d" * 8


@contextmanager
def listener() -> Iterator[tuple[str, list[dict[str, str]]]]:
    """An HTTP server recording every request's path and headers (it answers 404)."""
    seen: list[dict[str, str]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            seen.append({"path": self.path, **{k.lower(): v for k, v in self.headers.items()}})
            self.send_error(404)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", seen
    finally:
        server.shutdown()
        server.server_close()


def _body(**extra: object) -> dict[str, object]:
    return {"command": ["true"], "deadline_s": time.time() + 3600, "duration_s": 60,
            "zone": "DE", **extra}


def test_a_submitted_job_chooses_no_url_and_no_file(tmp_path):
    env = {"CARBONWATCH_ADMIN_TOKEN": ADMIN_TOKEN, "CARBONWATCH_ELECTRICITYMAPS_TOKEN": EM_KEY}
    with listener() as (url, seen), DaemonProcess(tmp_path / "cw.db", "--backend", "none",
                                                  env=env) as daemon:
        status, answer = daemon.request("POST", "/v1/deferred", _body(
            provider="electricitymaps", provider_url=url), token=ADMIN_TOKEN)
        assert status == 400 and answer["error"].startswith("provider_url: a submitted job may")
        status, answer = daemon.request("POST", "/v1/deferred", _body(
            provider="csv", provider_url="/etc/passwd"), token=ADMIN_TOKEN)
        assert status == 400 and "provider_url" in answer["error"]
        assert "root:" not in json.dumps(answer)
        status, queue = daemon.request("GET", "/v1/deferred")
        assert queue["deferred"] == []
    assert seen == []  # nothing fetched: the key went nowhere


def test_credentials_go_only_to_urls_the_daemon_allows(tmp_path):
    env = {"CARBONWATCH_ADMIN_TOKEN": ADMIN_TOKEN, "CARBONWATCH_ELECTRICITYMAPS_TOKEN": EM_KEY}
    with listener() as (url, seen):
        env["CARBONWATCH_PROVIDER_URLS"] = url  # the operator lists it
        with DaemonProcess(tmp_path / "cw.db", "--backend", "none", env=env) as daemon:
            status, view = daemon.request("POST", "/v1/deferred", _body(
                provider="electricitymaps", provider_url=url), token=ADMIN_TOKEN)
            assert status == 201, view  # planned without a forecast: the server said 404
            assert view["plan_basis"] == "no_forecast"
    assert seen and all(r.get("auth-token") == EM_KEY for r in seen)


def test_a_configured_csv_that_does_not_parse_is_not_echoed(tmp_path):
    """Even the daemon's own forecast file: an error names lines and columns, not its text."""
    secret = tmp_path / "forecast.csv"
    secret.write_text("user:topsecret-line-one\nsecond:line\n")
    env = {"CARBONWATCH_ADMIN_TOKEN": ADMIN_TOKEN, "CARBONWATCH_PROVIDER": "csv",
           "CARBONWATCH_PROVIDER_URL": str(secret), "CARBONWATCH_ZONE": "X"}
    with DaemonProcess(tmp_path / "cw.db", "--backend", "none", env=env) as daemon:
        status, view = daemon.request("POST", "/v1/deferred", _body(zone="X"),
                                      token=ADMIN_TOKEN)
        assert status == 201, view
        assert view["warnings"] and "topsecret" not in json.dumps(view)


def test_logs_are_private_and_an_ended_jobs_environment_is_erased(tmp_path):
    loose = tmp_path / "cw.db"
    env = {"CARBONWATCH_ADMIN_TOKEN": ADMIN_TOKEN}
    with DaemonProcess(loose, "--backend", "none", env=env) as daemon:
        run_env = {"PATH": "/usr/bin:/bin", "API_KEY": "sk-live-123"}
        status, ran = daemon.request("POST", "/v1/deferred", {
            "command": [sys.executable, "-c", "import os; print(os.environ['API_KEY'])"],
            "deadline_s": time.time() + 3.0, "duration_s": 1.0, "provider": "static",
            "env": run_env}, token=ADMIN_TOKEN)
        assert status == 201, ran
        status, queued = daemon.request("POST", "/v1/deferred", {
            **_body(provider="static"), "env": run_env}, token=ADMIN_TOKEN)
        assert status == 201, queued
        done = daemon.wait_for(
            lambda: (v := daemon.request("GET", f"/v1/deferred/{ran['id']}")[1])["status"]
            in ("done", "failed") and v, timeout_s=30, every_s=0.1)
        with sqlite3.connect(f"file:{loose}?mode=ro", uri=True) as conn:
            envs_before = dict(conn.execute("SELECT id, env FROM deferred_jobs"))
        assert daemon.request("DELETE", f"/v1/deferred/{queued['id']}",
                              token=ADMIN_TOKEN)[0] == 200
    with sqlite3.connect(f"file:{loose}?mode=ro", uri=True) as conn:
        envs_after = dict(conn.execute("SELECT id, env FROM deferred_jobs"))
    log = Path(done["log_path"])
    assert "sk-live-123" in log.read_text()  # the log keeps what the job printed ...
    assert stat.S_IMODE(log.stat().st_mode) == 0o600  # ... so only the daemon's user reads it
    assert stat.S_IMODE(log.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE(loose.stat().st_mode) == 0o600
    # A queued job keeps its environment until it ends (it needs it to start); then it is gone.
    assert json.loads(envs_before[queued["id"]]) == run_env
    assert json.loads(envs_before[ran["id"]]) == {}
    assert json.loads(envs_after[queued["id"]]) == {}


def test_a_store_left_readable_is_made_private_at_start(tmp_path):
    db = tmp_path / "cw.db"
    with DaemonProcess(db, "--backend", "none"):
        pass
    db.chmod(0o644)
    daemon = DaemonProcess(db, "--backend", "none")
    with daemon:
        assert stat.S_IMODE(db.stat().st_mode) == 0o600
    shared = tmp_path / "open"
    shared.mkdir(mode=0o755)
    shared.chmod(0o755)
    with DaemonProcess(shared / "cw.db", "--backend", "none") as daemon:
        pass
    assert any("is open to other users (mode 755)" in line for line in daemon.stderr)
