"""The in-process client: spans reach a real HTTP daemon stand-in; a missing daemon costs nothing.
"""

import asyncio
import logging
import os
import socket
import subprocess
import sys
import threading
import time

import pytest
from aiohttp import web

from carbonwatch.calls.ledger import CallSpan
from carbonwatch.client import Client
from carbonwatch.daemon import columnar
from carbonwatch.daemon.validation import ApiError


def _as_object(span: CallSpan) -> dict:
    call = {"model": span.model, "tags": dict(span.tags), "pid": span.pid, "start": span.start_s,
            "end": span.end_s}
    for key in ("weight", "tokens_in", "tokens_out"):
        if getattr(span, key) is not None:
            call[key] = getattr(span, key)
    return call


class FakeDaemon:
    """The daemon's call and job endpoints, served by aiohttp on 127.0.0.1 from its own thread."""

    def __init__(self, port: int = 0, token: str | None = None) -> None:
        self.port = port
        self.token = token
        self.batches: list[dict] = []
        self.jobs: list[dict] = []
        self.ends: list[tuple[str, dict]] = []
        self.auth: list[str | None] = []
        self.columnar = 0  # batches that came in the columnar form
        self.refuse_columnar = False
        self.refused_columnar = 0
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    async def _calls(self, request: web.Request) -> web.Response:
        self.auth.append(request.headers.get("Authorization"))
        if self.token is not None and self.auth[-1] != f"Bearer {self.token}":
            return web.json_response({"error": "bad token"}, status=401)
        if request.content_type == columnar.CONTENT_TYPE and self.refuse_columnar:
            self.refused_columnar += 1  # as a daemon that predates the form answers
            return web.json_response({"error": "calls: required"}, status=400)
        if request.content_type == columnar.CONTENT_TYPE:
            # The columnar form, checked by the real daemon's decoder, kept here as the objects
            # form's calls so that every test reads one shape (in time order: the columnar form
            # groups calls by model and tags, which is no part of the contract).
            try:
                batch = columnar.decode(await request.read())
            except ApiError as exc:
                return web.json_response({"error": exc.message}, status=exc.status)
            body = {"calls": [_as_object(s) for s in sorted(
                batch.spans, key=lambda s: (s.start_s, s.end_s))], "dropped": batch.dropped}
            self.columnar += 1
        else:
            body = await request.json()
        self.batches.append(body)
        return web.json_response({"accepted": len(body["calls"])})

    async def _job(self, request: web.Request) -> web.Response:
        self.jobs.append(await request.json())
        return web.json_response({"id": f"job-{len(self.jobs)}"}, status=201)

    async def _end(self, request: web.Request) -> web.Response:
        self.ends.append((request.match_info["id"], await request.json()))
        return web.json_response({"ok": True})

    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)
        app = web.Application(client_max_size=4 * 1024 * 1024)  # the real daemon's limit
        app.router.add_post("/v1/calls", self._calls)
        app.router.add_post("/v1/jobs", self._job)
        app.router.add_post("/v1/jobs/{id}/end", self._end)
        self._runner = web.AppRunner(app)
        self._loop.run_until_complete(self._runner.setup())
        site = web.TCPSite(self._runner, "127.0.0.1", self.port)
        self._loop.run_until_complete(site.start())
        self.port = site._server.sockets[0].getsockname()[1]
        self._ready.set()
        self._loop.run_forever()
        self._loop.run_until_complete(self._runner.cleanup())

    def __enter__(self) -> "FakeDaemon":
        self._thread.start()
        assert self._ready.wait(10), "the fake daemon did not start"
        return self

    def __exit__(self, *exc) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def calls(self) -> list[dict]:
        return [c for b in self.batches for c in b["calls"]]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for(predicate, timeout_s: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return False


@pytest.fixture
def daemon():
    with FakeDaemon() as d:
        yield d


@pytest.fixture
def client(daemon):
    c = Client(daemon_url=daemon.url, token="s3cret", flush_interval_s=0.02)
    yield c
    c.close()


def test_sync_and_async_calls_arrive_with_model_times_pid_and_tags(daemon, client):
    @client.track_inference(model="resnet", route="/predict")
    def predict(x):
        return x * 2

    @client.track_inference(model="llm")
    async def generate(prompt):
        await asyncio.sleep(0.01)
        return prompt.upper()

    before = time.time()
    assert predict(21) == 42
    assert asyncio.run(generate("hi")) == "HI"
    after = time.time()
    assert client.flush()
    sync_call, async_call = sorted(daemon.calls, key=lambda c: c["model"], reverse=True)
    assert sync_call["model"] == "resnet" and sync_call["tags"] == {"route": "/predict"}
    assert async_call["model"] == "llm" and async_call["tags"] == {}
    for call in (sync_call, async_call):
        assert call["pid"] == os.getpid()
        assert before <= call["start"] <= call["end"] <= after
    assert async_call["end"] - async_call["start"] >= 0.01  # the await is inside the span
    assert daemon.batches[0]["dropped"] == 0
    assert set(daemon.auth) == {"Bearer s3cret"}


def test_a_with_block_records_one_span_sync_and_async(daemon, client):
    with client.inference("bert", batch=8):
        pass

    async def serve():
        async with client.inference("bert", batch=8):
            await asyncio.sleep(0)

    asyncio.run(serve())
    assert client.flush()
    assert [c["tags"] for c in daemon.calls] == [{"batch": "8"}, {"batch": "8"}]


def test_an_exception_in_the_wrapped_function_is_recorded_and_reraised(daemon, client):
    @client.track_inference(model="m")
    def broken():
        raise KeyError("boom")

    @client.track_inference(model="m")
    async def broken_async():
        raise ValueError("bang")

    with pytest.raises(KeyError, match="boom"):
        broken()
    with pytest.raises(ValueError, match="bang"):
        asyncio.run(broken_async())
    assert client.flush()
    assert len(daemon.calls) == 2


def test_the_decorator_keeps_the_functions_name_and_doc(client):
    @client.track_inference(model="m")
    def predict():
        """Predict things."""

    assert predict.__name__ == "predict" and predict.__doc__ == "Predict things."


def test_without_a_daemon_calls_never_block_and_drops_are_reported_once_it_is_back():
    port = _free_port()  # nobody listens here until the daemon "comes back"
    client = Client(daemon_url=f"http://127.0.0.1:{port}", batch_size=500, max_buffer=1000,
                    flush_interval_s=0.02, max_backoff_s=0.1)

    @client.track_inference(model="m")
    def predict(x):
        return x

    n = 20_000
    t0 = time.perf_counter()
    for i in range(n):
        predict(i)
    elapsed_s = time.perf_counter() - t0
    try:
        # ~1 µs a call here; a call that waited on the sender's backoff (0.1 s) would make this
        # loop take over 30 minutes, so a bound 100x the expected time still tells them apart
        # on a loaded machine.
        assert elapsed_s < 20.0
        # At most one held batch and one full buffer survive; the rest is counted, not lost.
        assert client.dropped_total >= n - 500 - 1000
        with FakeDaemon(port) as daemon:
            assert client.flush(10.0)
            received = len(daemon.calls)
            reported = sum(b["dropped"] for b in daemon.batches)
        assert reported == client.dropped_total
        assert received + reported == n
    finally:
        client.close(timeout_s=0.5)


@pytest.mark.parametrize("columnar_form", [True, False])
def test_a_batch_over_the_daemons_body_limit_is_sent_in_parts(daemon, columnar_form):
    client = Client(daemon_url=daemon.url, flush_interval_s=60.0)
    client._columnar = columnar_form  # False: as after a daemon that predates the form refused it
    track = client.track_inference(model="m", prompt="x" * 1000)(lambda: None)
    for _ in range(5000):  # about 5 MB of JSON in one batch of 10,000 call objects
        track()
    try:
        assert client.flush(10.0)
        assert len(daemon.calls) == 5000
        if columnar_form:  # the tags travel once per model and tags: one small body
            assert len(daemon.batches) == 1 and daemon.columnar == 1
        else:
            assert len(daemon.batches) >= 2 and daemon.columnar == 0
    finally:
        client.close()


def test_a_daemon_without_the_columnar_form_gets_call_objects():
    with FakeDaemon() as daemon:
        daemon.refuse_columnar = True
        client = Client(daemon_url=daemon.url, flush_interval_s=0.02)
        for i in range(3):
            client.record("m", 1_800_000_000.0 + i, 1_800_000_000.5 + i)
        assert client.flush(5.0)
        client.record("m", 1_800_000_010.0, 1_800_000_010.5)
        assert client.flush(5.0)
        client.close()
    assert [c["start"] for c in daemon.calls] == [1_800_000_000.0, 1_800_000_001.0,
                                                 1_800_000_002.0, 1_800_000_010.0]
    assert client.rejected_total == 0 and client.sent_total == 4
    assert daemon.refused_columnar == 1  # refused once, then objects only


def test_calls_the_daemon_refuses_are_counted_and_not_retried():
    with FakeDaemon(token="right") as daemon:
        client = Client(daemon_url=daemon.url, token="wrong", flush_interval_s=0.02)
        with client.inference("m"):
            pass
        assert client.flush(5.0)
        client.close()
    assert client.rejected_total == 1 and client.sent_total == 0
    assert len(daemon.auth) == 1  # one refusal, no retry loop


def test_close_sends_what_is_buffered_and_is_bounded_without_a_daemon(daemon):
    client = Client(daemon_url=daemon.url, flush_interval_s=60.0)  # the timer never fires
    with client.inference("m"):
        pass
    client.close()
    assert len(daemon.calls) == 1

    gone = Client(daemon_url=f"http://127.0.0.1:{_free_port()}", flush_interval_s=60.0)
    with gone.inference("m"):
        pass
    t0 = time.monotonic()
    gone.close(timeout_s=0.5)
    assert time.monotonic() - t0 < 10.0  # bounded: a close that waited for the daemon never returns


def test_a_job_reports_its_start_and_end(daemon, client):
    with client.job("finetune", kind="training", model="resnet") as job:
        assert job.id == "job-1"
    assert daemon.jobs == [{"name": "finetune", "kind": "training", "model": "resnet",
                            "pid": os.getpid()}]
    assert daemon.ends == [("job-1", {"exit_code": 0})]


def test_a_failing_job_is_ended_as_failed(daemon, client):
    with pytest.raises(RuntimeError), client.job("finetune"):
        raise RuntimeError("diverged")
    assert daemon.ends == [("job-1", {"exit_code": 1})]


def test_a_job_runs_without_a_daemon_with_one_warning(caplog):
    client = Client(daemon_url=f"http://127.0.0.1:{_free_port()}")
    ran = False
    try:
        with (caplog.at_level(logging.WARNING, logger="carbonwatch.client"),
              client.job("train") as job):
            ran = True
        assert ran and job.id is None
        warnings = [r for r in caplog.records if "train" in r.getMessage()]
        assert len(warnings) == 1
    finally:
        client.close(timeout_s=0.2)


def _run_python(code: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], env={**os.environ, **env},
                          capture_output=True, text=True, timeout=30)


def test_import_carbonwatch_stays_light():
    code = ("import sys, carbonwatch\n"
            "carbonwatch.track_inference, carbonwatch.inference, carbonwatch.job\n"
            "print(sorted(m for m in ('aiohttp', 'dash', 'numpy') if m in sys.modules))")
    out = _run_python(code, {})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_the_default_client_reads_the_environment_and_flushes_at_exit(daemon):
    code = ("import carbonwatch\n"
            "@carbonwatch.track_inference(model='m', team='search')\n"
            "def predict(x):\n"
            "    return x\n"
            "for i in range(3):\n"
            "    predict(i)\n")  # and exit at once: atexit must send the three spans
    out = _run_python(code, {"CARBONWATCH_DAEMON_URL": daemon.url, "CARBONWATCH_TOKEN": "tok"})
    assert out.returncode == 0, out.stderr
    assert [c["tags"] for c in daemon.calls] == [{"team": "search"}] * 3
    assert daemon.auth == ["Bearer tok"]


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_sends_its_own_calls_with_its_own_pid(daemon):
    code = ("import os, carbonwatch\n"
            "predict = carbonwatch.track_inference(model='m')(lambda: None)\n"
            "predict()\n"  # buffered in the parent: must not be sent twice
            "pid = os.fork()\n"
            "if pid == 0:\n"
            "    predict()\n"
            "    carbonwatch.default_client().close()\n"
            "    os._exit(0)\n"
            "os.waitpid(pid, 0)\n"
            "print(pid)\n")
    out = _run_python(code, {"CARBONWATCH_DAEMON_URL": daemon.url})
    assert out.returncode == 0, out.stderr
    child = int(out.stdout.strip())
    assert sorted(c["pid"] == child for c in daemon.calls) == [False, True]
