"""Loopback by default; off loopback the daemon needs a token and checks it on every request;
--socket serves on a Unix socket instead."""

from __future__ import annotations

import stat

from daemon_helpers import DaemonProcess

TOKEN = "5f0c2d9e8b7a6f5e4d3c2b1a09f8e7d6c5b4a39281706f5e4d3c2b1a0f9e8d7c"


def test_off_loopback_without_a_token_refuses_to_start_and_says_why(tmp_path):
    daemon = DaemonProcess(tmp_path / "cw.db", "--host", "0.0.0.0", "--backend", "none")
    result = daemon.run_to_exit()
    assert result.returncode == 2
    assert "without a token" in result.stderr and "CARBONWATCH_TOKEN" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "cw.db").exists()  # refused before touching anything


def test_with_a_token_every_request_must_carry_it(tmp_path):
    env = {"CARBONWATCH_TOKEN": TOKEN}
    with DaemonProcess(tmp_path / "cw.db", "--host", "0.0.0.0", "--backend", "none",
                       env=env) as daemon:
        for path in ("/healthz", "/metrics", "/v1/jobs", "/v1/openapi.json", "/v1/nowhere"):
            status, body = daemon.request("GET", path)
            assert status == 401 and "missing bearer token" in body["error"]
            status, body = daemon.request("GET", path, token=TOKEN[:-1] + "X")
            assert status == 401 and "wrong bearer token" in body["error"]
        status, body = daemon.request("POST", "/v1/jobs", {"name": "x", "kind": "other"},
                                      headers={"Authorization": TOKEN})  # no "Bearer "
        assert status == 401
        status, _ = daemon.request("GET", "/v1/jobs", token=TOKEN)
        assert status == 200
        status, body = daemon.request("POST", "/v1/jobs", {"name": "x", "kind": "other"},
                                      token=TOKEN)
        assert status == 201 and body["id"]



def test_a_unix_socket_replaces_tcp_and_only_its_owner_group_may_connect(tmp_path):
    sock = tmp_path / "cw.sock"
    with DaemonProcess(tmp_path / "cw.db", "--socket", str(sock), "--backend", "none") as d:
        assert d.url == f"unix:{sock}"
        assert stat.S_IMODE(sock.stat().st_mode) == 0o660
        status, health = d.request("GET", "/healthz")
        assert status == 200 and health["ok"]
