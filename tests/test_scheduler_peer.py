"""Who may make the daemon run a command: over TCP only the admin token (the unix socket is
tested in tests/security/)."""

from __future__ import annotations

import http.client
import json
import os
import pwd
import socket
import time

import pytest
from daemon_helpers import InProcessDaemon

from carbonwatch.scheduler.peer import PROC_NET, _diag_owner, _tcp_owner, peer_uid


class _Transport:
    """What peer_uid reads from an asyncio transport."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

    def get_extra_info(self, name: str) -> object:
        return {
            "socket": self.sock,
            "peername": self.sock.getpeername(),
            "sockname": self.sock.getsockname(),
        }[name]


def test_the_peer_of_a_loopback_tcp_connection_is_found_in_proc():
    with (
        socket.create_server(("127.0.0.1", 0)) as server,
        socket.create_connection(server.getsockname()),
    ):
        conn, _ = server.accept()
        with conn:
            assert peer_uid(_Transport(conn)) == os.geteuid()


@pytest.mark.parametrize(("family", "host"), [(socket.AF_INET, "127.0.0.1"),
                                              (socket.AF_INET6, "::1")])
def test_sock_diag_and_proc_net_tcp_agree_on_a_loopback_peer(family, host):
    with socket.create_server((host, 0), family=family) as server, \
            socket.create_connection(server.getsockname()[:2]):
        conn, _ = server.accept()
        with conn:
            peer, local = conn.getpeername(), conn.getsockname()
            assert _diag_owner(peer, local) == _tcp_owner(peer, local, PROC_NET) == os.geteuid()


def test_a_v4_client_of_a_dual_stack_listener_is_found():
    with socket.create_server(("", 0), family=socket.AF_INET6, dualstack_ipv6=True) as server, \
            socket.create_connection(("127.0.0.1", server.getsockname()[1])):
        conn, _ = server.accept()
        with conn:
            assert conn.getpeername()[0] == "::ffff:127.0.0.1"
            peer, local = conn.getpeername(), conn.getsockname()
            # Every way in knows the v4 client, /proc/net/tcp (where sock_diag is missing) too:
            # its socket is AF_INET, and Python 3.11 calls ::ffff:127.0.0.1 not loopback.
            assert _diag_owner(peer, local) == _tcp_owner(peer, local, PROC_NET) == os.geteuid()
            assert peer_uid(_Transport(conn)) == os.geteuid()


def test_the_peer_of_a_unix_socket_comes_from_the_kernel():
    left, right = socket.socketpair()
    with left, right:
        assert peer_uid(_Transport(left)) == os.geteuid()


def test_an_unknown_transport_has_no_peer():
    assert peer_uid(None) is None


def _post_as(uid: int, url: str, body: dict) -> tuple[int, dict]:
    """POST from a forked child running as ``uid`` (no interpreter to exec as that user)."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: drop to uid, send, report, exit without running any cleanup
        try:
            os.setgroups([])
            os.setgid(uid)
            os.setuid(uid)
            conn = http.client.HTTPConnection(host, int(port), timeout=10)
            conn.request(
                "POST", "/v1/deferred", json.dumps(body), {"Content-Type": "application/json"}
            )
            resp = conn.getresponse()
            os.write(write_end, json.dumps([resp.status, json.loads(resp.read())]).encode())
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end) as pipe:
        data = pipe.read()
    os.waitpid(pid, 0)
    status, payload = json.loads(data)
    return status, payload


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as another user")
def test_over_tcp_only_the_admin_token_launches(tmp_path):
    try:
        nobody = pwd.getpwnam("nobody").pw_uid
    except KeyError:
        pytest.skip("no user 'nobody'")
    with InProcessDaemon(tmp_path / "cw.db") as daemon:
        body = {"command": ["true"], "deadline_s": time.time() + 7200, "duration_s": 60}
        status, payload = _post_as(nobody, daemon.url, body)
        assert status == 403 and "no admin token" in payload["error"]
        # Over TCP without an admin token not even the daemon's own user (or root) may.
        status, payload = daemon.request("POST", "/v1/deferred", body)
        assert status == 403 and "--socket" in payload["error"], payload
    token = "a" * 32 + "0123456789abcdef0123456789abcdef"
    with InProcessDaemon(tmp_path / "cw2.db", admin_token=token) as daemon:
        status, payload = _post_as(nobody, daemon.url, body)  # no token: still refused
        assert status == 403 and "needs the admin token" in payload["error"]
        status, view = daemon.request("POST", "/v1/deferred", body, token=token)
        assert status == 201, view
        status, _ = daemon.request("DELETE", f"/v1/deferred/{view['id']}")
        assert status == 403  # cancelling over TCP needs it too
        status, _ = daemon.request("DELETE", f"/v1/deferred/{view['id']}", token=token)
        assert status == 200
        status, listing = daemon.request("GET", "/v1/deferred")
        assert [v["status"] for v in listing["deferred"]] == ["cancelled"]
        assert '"env"' not in json.dumps(listing)  # the captured environment never leaves
