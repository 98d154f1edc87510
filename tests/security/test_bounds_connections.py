"""Finding 7: a connection that sends no complete request within request_header_timeout_s is
closed (silent ones, and ones that trickle headers), each client may hold at most
max_connections_per_client open, and requests keep being served throughout."""

from __future__ import annotations

import json
import socket
import subprocess
import time
from pathlib import Path

from daemon_helpers import DaemonProcess

from .helpers import NOBODY, as_user, needs_root, public_python, user_env

ROOT = Path(__file__).resolve().parent.parent.parent


def _connect(url: str) -> socket.socket:
    host, port = url.removeprefix("http://").rsplit(":", 1)
    return socket.create_connection((host, int(port)), timeout=10)


def _closed(sock: socket.socket) -> bool:
    """True once the daemon has closed its end (recv sees EOF)."""
    sock.settimeout(0.05)
    try:
        return sock.recv(1) == b""
    except TimeoutError:
        return False
    except ConnectionError:
        return True


def test_silent_and_trickling_connections_are_closed(tmp_path):
    env = {"CARBONWATCH_REQUEST_HEADER_TIMEOUT_S": "1"}
    with DaemonProcess(tmp_path / "cw.db", "--backend", "none", env=env) as daemon:
        silent = [_connect(daemon.url) for _ in range(20)]
        trickle = _connect(daemon.url)
        trickle.sendall(b"GET /healthz HTTP/1.1\r\n")
        t0 = time.monotonic()
        served = []
        while time.monotonic() - t0 < 4.0:
            try:
                trickle.sendall(b"X")  # never a complete header block
            except OSError:
                break
            served.append(daemon.request("GET", "/healthz")[0])
            time.sleep(0.25)
        assert all(_closed(s) for s in silent)
        assert _closed(trickle)
        status, health = daemon.request("GET", "/healthz")
        for s in [*silent, trickle]:
            s.close()
    assert set(served) == {200}
    assert status == 200 and health["connections"]["closed_idle"] >= 21


def test_a_body_that_stops_coming_is_cut(tmp_path):
    """Headers complete, then 10 of the 1,000 body bytes announced, then nothing: closed once a
    whole timeout passes without a byte, while a slow but steady body is served."""
    env = {"CARBONWATCH_REQUEST_HEADER_TIMEOUT_S": "1"}
    with DaemonProcess(tmp_path / "cw.db", "--backend", "none", env=env) as daemon:
        stalled = _connect(daemon.url)
        stalled.sendall(b"POST /v1/calls HTTP/1.1\r\nHost: x\r\nContent-Type: application/json"
                        b"\r\nContent-Length: 1000\r\n\r\n" + b'{"calls": [')
        body = b'{"calls": []}' + b" " * 20
        steady = _connect(daemon.url)
        steady.sendall(b"POST /v1/calls HTTP/1.1\r\nHost: x\r\nContent-Type: application/json"
                       b"\r\nContent-Length: %d\r\n\r\n" % len(body))
        for i in range(0, len(body), 3):  # 3 bytes every 0.3 s: 3.3 s in all
            steady.sendall(body[i:i + 3])
            time.sleep(0.3)
        steady.settimeout(5)
        assert steady.recv(4096).startswith(b"HTTP/1.1 200")
        assert _closed(stalled)
        for s in (stalled, steady):
            s.close()


def test_connections_per_client_are_capped(tmp_path):
    env = {"CARBONWATCH_MAX_CONNECTIONS_PER_CLIENT": "8"}
    with DaemonProcess(tmp_path / "cw.db", "--backend", "none", env=env) as daemon:
        held = [_connect(daemon.url) for _ in range(8)]
        time.sleep(0.2)
        extra = _connect(daemon.url)
        extra.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        answer = b""
        while chunk := extra.recv(4096):
            answer += chunk
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 503")
        assert "max_connections_per_client" in json.loads(body)["error"]
        for s in held:
            s.close()
        daemon.wait_for(lambda: daemon.request("GET", "/healthz")[0] == 200)
        assert daemon.request("GET", "/healthz")[1]["connections"]["refused"] >= 1


def test_the_systemd_unit_raises_the_file_limit():
    unit = (ROOT / "deploy" / "systemd" / "carbonwatch.service").read_text()
    limits = [line for line in unit.splitlines() if line.startswith("LimitNOFILE=")]
    assert len(limits) == 1 and int(limits[0].split("=", 1)[1]) >= 4096  # one line: no doubt


def test_the_unix_socket_is_guarded_too(tmp_path):
    sock_path = tmp_path / "cw.sock"
    env = {"CARBONWATCH_REQUEST_HEADER_TIMEOUT_S": "1",
           "CARBONWATCH_MAX_CONNECTIONS_PER_CLIENT": "4"}
    with DaemonProcess(tmp_path / "cw.db", "--backend", "none", "--socket", str(sock_path),
                       env=env) as daemon:
        held = []
        for _ in range(5):
            s = socket.socket(socket.AF_UNIX)
            s.connect(str(sock_path))
            held.append(s)
        time.sleep(0.3)
        held[4].settimeout(5)
        assert held[4].recv(4096).startswith(b"HTTP/1.1 503")  # the fifth of this uid
        deadline = time.monotonic() + 5
        while not all(_closed(s) for s in held[:4]) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert all(_closed(s) for s in held[:4])
        assert daemon.request("GET", "/healthz")[0] == 200
        for s in held:
            s.close()


_HOLDER = """
import socket, sys, time
host, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
held = [socket.create_connection((host, port), timeout=10) for _ in range(n)]
time.sleep(0.3)
extra = socket.create_connection((host, port), timeout=10)
extra.sendall(b"GET /healthz HTTP/1.1\\r\\nHost: x\\r\\n\\r\\n")
print(extra.recv(4096).split(b"\\r\\n")[0].decode(), flush=True)
sys.stdin.read()  # hold them until told
"""


@needs_root
def test_one_local_user_at_the_cap_does_not_lock_out_the_others(tmp_path):
    """On loopback TCP every local user comes from 127.0.0.1: the cap is per uid (sock_diag)."""
    env = {"CARBONWATCH_MAX_CONNECTIONS_PER_CLIENT": "8"}
    with DaemonProcess(tmp_path / "cw.db", "--backend", "none", env=env) as daemon:
        host, port = daemon.url.removeprefix("http://").rsplit(":", 1)
        holder = subprocess.Popen(  # noqa: S603
            [*as_user(NOBODY), public_python(), "-c", _HOLDER, host, port, "8"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=user_env())
        try:
            assert holder.stdout is not None
            # nobody's ninth connection is refused ...
            assert holder.stdout.readline().startswith("HTTP/1.1 503")
            # ... while root, from the same address, is served.
            assert daemon.request("GET", "/healthz")[0] == 200
        finally:
            holder.communicate("", timeout=30)
