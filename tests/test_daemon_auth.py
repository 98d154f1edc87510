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


def test_auth_runs_inside_the_error_middleware_so_its_failures_are_a_json_503(monkeypatch):
    """One auth middleware (authz's), inside errors_as_json: a peer look-up that fails while
    deciding who calls is one log line and a JSON 503, never aiohttp's 500 with a traceback;
    and an Authorization header that is not UTF-8 is a 401."""
    import asyncio
    import types

    from aiohttp.test_utils import TestClient, TestServer

    from carbonwatch.config import Settings
    from carbonwatch.daemon import app as app_module
    from carbonwatch.daemon import authz

    # Only what make_app reads before any request (the tokens, the scheduler's routes).
    settings = Settings(token="t" * 40, admin_token="a" * 40)
    daemon = types.SimpleNamespace(settings=settings, scheduler=None)
    app = app_module.make_app(daemon)
    assert app.middlewares[0] is app_module.errors_as_json and len(app.middlewares) == 2

    def broken(request):
        raise OSError("sock_diag unavailable")

    monkeypatch.setattr(authz, "caller", broken)

    async def run() -> list[tuple[int, str]]:
        async with TestClient(TestServer(app)) as client:
            out = []
            for headers in ({}, {"Authorization": "Bearer \udcff".encode(
                    "utf-8", "surrogateescape").decode("latin-1")}):
                resp = await client.get("/v1/jobs", headers=headers)
                out.append((resp.status, resp.content_type))
            return out

    no_token, not_utf8 = asyncio.run(run())
    assert no_token == (503, "application/json")
    assert not_utf8 == (401, "application/json")
