"""The dashboard's login, on real ``carbonwatch dashboard`` processes served by waitress: off
loopback (``--host 0.0.0.0``, or ``--require-auth`` on 127.0.0.1) every request needs the read or
the admin token, as a bearer token or basic auth's password; anything else, malformed headers
included, gets 401; without a usable token it refuses to start. The first-run panel says which."""

from __future__ import annotations

import base64
import http.client
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from browser_helpers import NO_CHROMIUM, Server, find_chromium, launch_chromium, serving

from carbonwatch.store import open_store

READ = "r" * 20 + "0123456789abcdef0123456789abcdef"  # 52 bytes
ADMIN = "a" * 20 + "fedcba9876543210fedcba9876543210"
TOKENS = {"CARBONWATCH_TOKEN": READ, "CARBONWATCH_ADMIN_TOKEN": ADMIN}


def _basic(user: bytes, password: bytes) -> bytes:
    return b"Basic " + base64.b64encode(user + b":" + password)


@pytest.fixture(scope="module")
def empty_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("store") / "carbonwatch.db"
    open_store(path).close()
    return path


@pytest.fixture(scope="module")
def servers(empty_store: Path, tmp_path_factory: pytest.TempPathFactory
            ) -> Iterator[dict[str, Server]]:
    home = tmp_path_factory.mktemp("home")
    with serving({
        # The host check itself: listening on every address asks for the login (reached here
        # through 127.0.0.1).
        "any": Server(empty_store, home, args=("--host", "0.0.0.0"), env=TOKENS, login=READ),
        "forced": Server(empty_store, home, args=("--require-auth",), env=TOKENS, login=ADMIN),
        "open": Server(empty_store, home),
    }) as running:
        yield running


def _get(server: Server, path: str = "/", authorization: bytes | None = None
         ) -> http.client.HTTPResponse:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    conn.putrequest("GET", path)
    if authorization is not None:
        conn.putheader("Authorization", authorization)  # raw bytes, as a hostile client sends
    conn.endheaders()
    resp = conn.getresponse()
    resp.read()
    conn.close()
    return resp


REFUSED = {
    "no header": None,
    "empty": b"",
    "wrong bearer": b"Bearer " + b"x" * 52,
    "the token without a scheme": READ.encode(),
    "bearer, token truncated": b"Bearer " + READ[:-1].encode(),
    "bearer, token extended": b"Bearer " + READ.encode() + b"0",
    "basic, wrong password": _basic(b"alice", b"y" * 52),
    "basic, the token as user name": _basic(READ.encode(), b""),
    "basic, no colon": b"Basic " + base64.b64encode(READ.encode()),
    "basic, not base64": b"Basic %%%not-base64%%%",
    "non-UTF-8 bytes": b"Bearer \xff\xfe\x80" + READ.encode(),
    "unknown scheme": b"Digest " + READ.encode(),
    "scheme alone": b"Bearer",
}
ACCEPTED = {
    "bearer, read token": b"Bearer " + READ.encode(),
    "bearer, admin token": b"Bearer " + ADMIN.encode(),
    "scheme in lower case": b"bearer " + READ.encode(),
    "basic, read token": _basic(b"alice", READ.encode()),
    "basic, admin token, empty user": _basic(b"", ADMIN.encode()),
}


@pytest.mark.parametrize("name", ["any", "forced"])
def test_off_loopback_every_request_needs_the_read_or_admin_token(servers, name):
    server = servers[name]
    for path in ("/", "/_dash-layout", "/_dash-dependencies", "/jobs"):
        resp = _get(server, path)
        assert resp.status == 401, path
        assert resp.getheader("WWW-Authenticate", "").startswith('Basic realm="carbonwatch"')
    for what, header in REFUSED.items():
        assert _get(server, "/", header).status == 401, what
    for what, header in ACCEPTED.items():
        assert _get(server, "/", header).status == 200, what
        assert _get(server, "/_dash-layout", header).status == 200, what
    assert "login required" in server.log.read_text()


def test_on_loopback_without_require_auth_no_login_is_asked(servers):
    assert _get(servers["open"], "/").status == 200
    assert "no login (loopback)" in servers["open"].log.read_text()


def _start(tmp_path: Path, *args: str, env: dict[str, str] | None = None
           ) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("CARBONWATCH_")}
    clean.update(XDG_CONFIG_HOME=str(tmp_path), XDG_DATA_HOME=str(tmp_path), **(env or {}))
    return subprocess.run(  # noqa: S603
        [sys.executable, "-m", "carbonwatch", "dashboard", "--port", "0", *args],
        env=clean, capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize(("args", "env", "says"), [
    (("--host", "0.0.0.0"), {}, "without a login: set CARBONWATCH_TOKEN"),
    (("--require-auth",), {}, "without a login: set CARBONWATCH_TOKEN"),
    (("--host", "0.0.0.0"), {"CARBONWATCH_TOKEN": "change-me"}, "token is a placeholder"),
    (("--host", "0.0.0.0"), {"CARBONWATCH_TOKEN": "a-short-secret"},
     "token is 14 bytes; a login token needs at least 32"),
    (("--host", "0.0.0.0"), {"CARBONWATCH_TOKEN": READ, "CARBONWATCH_ADMIN_TOKEN": "admin"},
     "admin_token is a placeholder"),
])
def test_refuses_to_start_without_a_usable_token(tmp_path, args, env, says):
    done = _start(tmp_path, *args, env=env)
    assert done.returncode == 2, done.stderr
    assert says in done.stderr and "Traceback" not in done.stderr


def test_the_first_run_panel_says_whether_a_login_is_asked(servers):
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    chromium = find_chromium()
    if chromium is None:
        pytest.skip(NO_CHROMIUM)
    with sync_api.sync_playwright() as p:
        browser = launch_chromium(p, chromium)
        try:
            for name, credentials, says in (
                ("forced", {"username": "ops", "password": ADMIN}, "asks for a login"),
                ("open", None, "without a login"),
            ):
                context = browser.new_context(http_credentials=credentials)
                page = context.new_page()
                page.goto(servers[name].url + "/")
                page.wait_for_selector("#first-run-access", timeout=20_000)
                assert says in page.inner_text("#first-run-access")  # a callback: logged in too
                context.close()
            # Without credentials Chromium gets the 401 and none of the app (headless, it
            # cancels the login prompt).
            context = browser.new_context()
            with pytest.raises(sync_api.Error, match="AUTH"):
                context.new_page().goto(servers["forced"].url + "/")
            context.close()
        finally:
            browser.close()
