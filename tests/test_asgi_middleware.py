"""The ASGI middleware: a real Starlette app under a real uvicorn server on 127.0.0.1, reporting
through the real client to a real daemon process; calls, tags and OpenAI-style tokens land in the
daemon's store, and streaming responses stream."""

from __future__ import annotations

import http.client
import json
import sqlite3
import threading
import time

import pytest
import uvicorn
from asgi_app import MODEL, completion_usage, make_app
from daemon_helpers import DaemonProcess

from carbonwatch.client import Client
from carbonwatch.integrations.asgi import _Response, usage_tokens


class UvicornThread:
    """uvicorn serving ``app`` on 127.0.0.1 (a free port) in a thread of this process."""

    def __init__(self, app) -> None:
        config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning",
                                lifespan="off")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> UvicornThread:
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            assert time.monotonic() < deadline and self.thread.is_alive(), "uvicorn did not start"
            time.sleep(0.01)
        self.port = self.server.servers[0].sockets[0].getsockname()[1]
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(20)

    def request(self, method: str, path: str, body: dict | None = None):
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        data = json.dumps(body).encode() if body is not None else None
        conn.request(method, path, body=data, headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        return resp.status, resp.read()


PROMPTS = ["the quick brown fox", "jumps over", "the lazy dog and then some more words"]


def test_requests_become_calls_with_route_status_and_tokens(tmp_path):
    db = tmp_path / "cw.db"
    gate = threading.Event()
    with DaemonProcess(db, "--backend", "none") as daemon:
        client = Client(daemon.url, flush_interval_s=0.05)
        try:
            with UvicornThread(make_app(client, stream_gate=gate, max_body_bytes=4096)) as srv:
                expected_in = expected_out = 0
                for i, prompt in enumerate(PROMPTS):
                    status, body = srv.request("POST", "/v1/completions",
                                               {"prompt": prompt, "max_tokens": 10 + i})
                    assert status == 200
                    usage = json.loads(body)["usage"]
                    expected_in += usage["prompt_tokens"]
                    expected_out += usage["completion_tokens"]
                # A stream: the first event reaches us while the app still waits for us.
                conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=30)
                conn.request("GET", "/v1/stream?prompt=one+two+three&n=5")
                resp = conn.getresponse()
                assert resp.getheader("content-type").startswith("text/event-stream")
                first = resp.readline()
                assert first.startswith(b"data: ") and b'"t0"' in first
                gate.set()
                rest = resp.read()
                assert rest.rstrip().endswith(b"data: [DONE]") and rest.count(b"data: ") == 6
                usage = completion_usage("one two three", 5)
                expected_in += usage["prompt_tokens"]
                expected_out += usage["completion_tokens"]
                assert srv.request("GET", "/items/42")[0] == 200
                assert srv.request("GET", "/boom")[0] == 500
                assert srv.request("GET", "/nowhere")[0] == 404
                status, body = srv.request("GET", "/big")  # over max_body_bytes: untouched
                assert status == 200 and len(json.loads(body)["pad"]) == 8192
            assert client.flush(10)
        finally:
            client.close()
        assert client.sent_total == 8 and client.rejected_total == 0
        assert daemon.stop() == 0

    conn = sqlite3.connect(db)
    calls, t_in, t_out, token_calls = conn.execute(
        "SELECT SUM(calls), SUM(tokens_in), SUM(tokens_out), SUM(token_calls) FROM call_minute"
        " WHERE model = ?", [MODEL]).fetchone()
    assert (calls, t_in, t_out, token_calls) == (8, expected_in, expected_out, 4)
    tags = sorted(tuple(sorted(json.loads(t).items())) for (t,) in conn.execute(
        "SELECT tags FROM calls WHERE model = ?", [MODEL]))
    routes = sorted((dict(t)["route"], dict(t)["status"]) for t in tags)
    assert routes == sorted([("/v1/completions", "200")] * 3 + [
        ("/v1/stream", "200"), ("/items/{item_id}", "200"), ("/boom", "500"),
        ("(unmatched)", "404"), ("/big", "200")])
    # The service that answered is this process, registered by its first call.
    pid = conn.execute("SELECT DISTINCT pid FROM calls").fetchall()
    assert len(pid) == 1


def _json_response(body: bytes, headers=None) -> _Response:
    r = _Response(1024)
    r.start({"type": "http.response.start", "status": 200,
             "headers": headers or [(b"content-type", b"application/json")]})
    for i in range(0, len(body), 7):
        r.body(body[i:i + 7])
    return r


@pytest.mark.parametrize("usage, expected", [
    ({"prompt_tokens": 3, "completion_tokens": 4}, (3, 4)),
    ({"prompt_tokens": 3}, (3, None)),
    ({"prompt_tokens": -1, "completion_tokens": 2.5}, (None, None)),
    ({"prompt_tokens": True, "completion_tokens": "7"}, (None, None)),
    ({"prompt_tokens": 10**9 + 1, "completion_tokens": 10**9}, (None, 10**9)),  # daemon's bound
    (None, (None, None)),
])
def test_usage_is_read_only_when_it_is_a_whole_count(usage, expected):
    assert _json_response(json.dumps({"usage": usage}).encode()).tokens() == expected


def test_compressed_and_non_json_bodies_are_not_read():
    body = json.dumps({"usage": {"prompt_tokens": 3, "completion_tokens": 4}}).encode()
    gz = [(b"content-type", b"application/json"), (b"content-encoding", b"gzip")]
    assert _json_response(body, gz).tokens() == (None, None)
    assert _json_response(body, [(b"content-type", b"text/plain")]).tokens() == (None, None)
    assert usage_tokens(b"not json") == (None, None)
    assert usage_tokens(b"\xff\xfe") == (None, None)
    assert usage_tokens(b"[" * 100_000 + b"]" * 100_000) == (None, None)


def test_an_event_stream_without_usage_has_no_tokens():
    r = _Response(1024)
    r.start({"status": 200, "headers": [(b"content-type", b"text/event-stream")]})
    r.body(b'data: {"choices": [{"text": "a"}]}\n\ndata: [DONE]\n\n')
    assert r.tokens() == (None, None)


def test_the_model_callable_sees_path_params_and_bad_names_are_not_sent():
    """Starlette app driven directly through ASGI: the callable is asked after routing."""
    import asyncio

    from starlette.applications import Starlette
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    from carbonwatch.integrations.asgi import CarbonwatchMiddleware

    async def endpoint(request):
        return PlainTextResponse("ok")

    # The sender never wakes during the test: what was recorded stays in the buffer to read.
    client = Client("http://127.0.0.1:9", max_buffer=100, flush_interval_s=3600)
    try:
        app = CarbonwatchMiddleware(
            Starlette(routes=[Route("/v1/models/{name}/predict", endpoint)]),
            model=lambda scope: (scope.get("path_params") or {}).get("name"), client=client)

        async def call(path: str) -> None:
            scope = {"type": "http", "method": "GET", "path": path, "raw_path": path.encode(),
                     "query_string": b"", "headers": [], "root_path": "", "scheme": "http",
                     "server": ("127.0.0.1", 80), "client": ("127.0.0.1", 1),
                     "asgi": {"version": "3.0"}, "http_version": "1.1"}

            async def receive():
                return {"type": "http.request", "body": b"", "more_body": False}

            async def send(message):
                pass

            await app(scope, receive, send)

        for path in ("/v1/models/resnet50/predict", "/v1/models/" + "x" * 300 + "/predict",
                     "/elsewhere"):
            asyncio.run(call(path))
        heads = [json.loads(head + '"start":0,"end":0}') for head, _, _ in client._buffer]
        assert [(h["model"], h["tags"]["route"]) for h in heads] == [
            ("resnet50", "/v1/models/{name}/predict")]
        with pytest.raises(ValueError, match="tags"):
            CarbonwatchMiddleware(app, model="m", tags={"k": "v" * 2000})
        # Client.record takes tags as keywords: a tag named like one of its parameters would
        # become that parameter (a weight of "2", a second model), so it is refused up front.
        for name in ("weight", "tokens_out", "model"):
            with pytest.raises(ValueError, match=f"{name} cannot be a tag name"):
                CarbonwatchMiddleware(app, model="m", tags={name: "2"})
    finally:
        client.close(timeout_s=0.1)
