"""No 500 from input: ``since``/``until`` far out of range are clamped, an Authorization header
that is not UTF-8 is a 401, and whatever a handler meets unexpectedly is one log line and a JSON
503, never a 500 with a traceback per request."""

from __future__ import annotations

import http.client
import json
import sqlite3

import pytest
from daemon_helpers import DaemonProcess

TOKEN = "k" * 40


@pytest.fixture(scope="module")
def daemon(tmp_path_factory):
    d = DaemonProcess(tmp_path_factory.mktemp("no500") / "cw.db", "--backend", "none")
    with d:
        yield d
    assert "Traceback" not in "".join(d.stderr)


@pytest.mark.parametrize("query", [
    "since=1e308", "until=1e308", "since=-1e308", "since=1e308&until=1e308",
    "since=-1e308&until=1e308", "since=0001-01-01T00:00:00%2B00:00",
    "until=9999-12-31T23:59:59%2B00:00", "since=99999999999999999999999999999999",
])
def test_out_of_range_times_are_clamped(daemon, query):
    for group_by in ("phase", "model", "job"):
        status, body = daemon.request("GET", f"/v1/summary?group_by={group_by}&{query}")
        assert status == 200, body
        assert body["groups"] == [] or isinstance(body["groups"], list)


def _raw_get(url: str, header: bytes) -> tuple[int, dict]:
    conn = http.client.HTTPConnection(url.removeprefix("http://"), timeout=10)
    conn.putrequest("GET", "/v1/jobs")
    conn.putheader(b"Authorization", header)
    conn.endheaders()
    resp = conn.getresponse()
    body = json.loads(resp.read())
    conn.close()
    return resp.status, body


@pytest.mark.parametrize("header", [
    b"Bearer \xff\xfe" + b"k" * 38, b"\xc3\x28", b"Bearer " + TOKEN.encode()[:-1] + b"\x80",
    b"Bearer", b"bearer " + TOKEN.encode(),
])
def test_a_malformed_authorization_header_is_a_401(tmp_path, header):
    with DaemonProcess(tmp_path / "cw.db", "--backend", "none",
                       env={"CARBONWATCH_TOKEN": TOKEN}) as d:
        assert _raw_get(d.url, header)[0] == 401
        assert _raw_get(d.url, b"Bearer " + TOKEN.encode())[0] == 200
    assert "Traceback" not in "".join(d.stderr)


def test_an_unexpected_failure_is_one_log_line_and_a_json_503(tmp_path):
    """A finished deferred row whose argv is not JSON (a damaged row): listing the queue fails
    inside the handler. The client gets a JSON 503 saying so, the log one line per request."""
    db = tmp_path / "cw.db"
    d = DaemonProcess(db, "--backend", "none").start()
    assert d.stop() == 0
    with sqlite3.connect(db) as conn:
        conn.execute("INSERT INTO deferred_jobs (id, name, command, zone, submitted_s, deadline_s,"
                     " duration_s, status) VALUES ('x', 'x', 'not json', '', 0, 10, 5, 'done')")
    with d:
        answers = [d.request("GET", "/v1/deferred") for _ in range(3)]
        assert d.request("GET", "/healthz")[0] == 200
    for status, body in answers:
        assert status == 503
        assert "JSONDecodeError" in body["error"]
    err = "".join(d.stderr)
    assert "Traceback" not in err
    assert err.count("GET /v1/deferred failed") == 3


def test_malformed_http_is_a_400_and_one_log_line(tmp_path):
    """A 9 kB request line, and a header line with no colon: aiohttp's parser answers 400; the
    log gets one line for each, not a traceback (any client could fill the log)."""
    with DaemonProcess(tmp_path / "cw.db", "--backend", "none") as d:
        host, port = d.url.removeprefix("http://").rsplit(":", 1)
        for raw in (b"GET /v1/jobs?since=" + b"9" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
                    b"GET /healthz HTTP/1.1\r\nHost: x\r\nno colon here\r\n\r\n"):
            conn = http.client.HTTPConnection(host, int(port), timeout=10)
            conn.connect()
            conn.sock.sendall(raw)
            answer = conn.sock.recv(4096)
            conn.close()
            assert answer.split(b" ", 2)[1] == b"400", answer[:100]
        assert d.request("GET", "/healthz")[0] == 200
    err = "".join(d.stderr)
    assert "Traceback" not in err
    assert err.count("Error handling request") == 2
