"""Start a real ``carbonwatch daemon`` process on a free port and talk to it over HTTP.

The daemon is started with ``--port 0`` and reports the port it bound on stderr, so there is no
race for a "free" port. Requests use http.client (stdlib) with keep-alive."""

from __future__ import annotations

import csv
import http.client
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from carbonwatch.daemon.attach import UnixHTTPConnection

FIXTURE = Path(__file__).parent / "fixtures" / "h200-shared-gpu"
REPLAY = f"replay:{FIXTURE}"
INFER_PID = 438  # meta.json: "infer"
TRAIN_PID = 416
MODEL = "mlp-4096"
_LISTENING = re.compile(r"listening on ((?:http://|unix:)\S+)")


def fixture_calls(pid: int = INFER_PID, model: str = MODEL) -> list[dict[str, Any]]:
    """calls.csv as API call objects, the batch size as a tag."""
    with (FIXTURE / "calls.csv").open() as f:
        return [
            {"model": model, "start": float(r["start_s"]), "end": float(r["end_s"]), "pid": pid,
             "tags": {"batch": int(r["batch"])}}
            for r in csv.DictReader(f)
        ]


class HttpClient:
    """Keep-alive JSON requests to ``self.url``."""

    url = ""
    stderr: list[str]
    _conn: http.client.HTTPConnection | None = None
    default_token: str | None = None  # sent when a request names none

    def request(
        self, method: str, path: str, body: Any = None, *, raw: bytes | None = None,
        headers: dict[str, str] | None = None, token: str | None = None,
    ) -> tuple[int, Any]:
        """(status, decoded JSON or text)."""
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        hdrs = {"Content-Type": "application/json", **(headers or {})}
        if token is None:
            token = self.default_token
        if token is not None:
            hdrs["Authorization"] = f"Bearer {token}"
        for attempt in range(2):
            conn = self._connection()
            try:
                conn.request(method, path, body=data, headers=hdrs)
                resp = conn.getresponse()
                payload = resp.read()
                break
            except (http.client.HTTPException, ConnectionError):
                self._conn = None
                if attempt:
                    raise
        if resp.getheader("Connection", "").lower() == "close":
            self._conn = None
        text = payload.decode()
        if resp.getheader("Content-Type", "").startswith("application/json"):
            return resp.status, json.loads(text)
        return resp.status, text

    def _connection(self) -> http.client.HTTPConnection:
        if self._conn is None:
            if self.url.startswith("unix:"):
                self._conn = UnixHTTPConnection(self.url.removeprefix("unix:"), 30)
            else:
                self._conn = http.client.HTTPConnection(self.url.removeprefix("http://"),
                                                        timeout=30)
        return self._conn

    def wait_for(self, predicate: Any, timeout_s: float = 30.0, every_s: float = 0.05) -> Any:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            value = predicate()
            if value:
                return value
            time.sleep(every_s)
        raise TimeoutError("condition not reached; daemon said:\n" + "".join(self.stderr))

    def replay_finished(self) -> bool:
        status, health = self.request("GET", "/healthz")
        return status == 200 and health["status"] == "replay finished"


class DaemonProcess(HttpClient):
    def __init__(self, db: Path, *args: str, env: dict[str, str] | None = None) -> None:
        self.db = db
        self.args = list(args)
        # Only the settings a test gives: none leak in from the developer's environment.
        inherited = {k: v for k, v in os.environ.items() if not k.startswith("CARBONWATCH_")}
        self.env = {**inherited, **(env or {})}
        self.proc: subprocess.Popen[str] | None = None
        self.stderr: list[str] = []
        self.url = ""
        self._conn: http.client.HTTPConnection | None = None

    def command(self) -> list[str]:
        return [sys.executable, "-m", "carbonwatch", "daemon", "--db", str(self.db), "--port", "0",
                *self.args]

    def start(self, timeout_s: float = 30.0) -> DaemonProcess:
        self.stderr = []
        ready = threading.Event()
        self.proc = subprocess.Popen(  # noqa: S603
            self.command(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
            env=self.env,
        )

        def pump() -> None:
            assert self.proc is not None and self.proc.stderr is not None
            for line in self.proc.stderr:
                self.stderr.append(line)
                match = _LISTENING.search(line)
                if match:
                    self.url = match.group(1)
                    ready.set()
            ready.set()  # exited

        threading.Thread(target=pump, daemon=True).start()
        if not ready.wait(timeout_s) or not self.url:
            self.kill()
            raise RuntimeError("daemon did not start:\n" + "".join(self.stderr))
        return self

    def run_to_exit(self, timeout_s: float = 30.0) -> subprocess.CompletedProcess[str]:
        """Run the command expecting it to exit by itself (a refused start)."""
        return subprocess.run(  # noqa: S603
            self.command(), capture_output=True, text=True, env=self.env, timeout=timeout_s
        )

    # --- stopping ------------------------------------------------------------------------------

    def stop(self, timeout_s: float = 30.0) -> int:
        """SIGTERM and wait: the daemon flushes and exits."""
        assert self.proc is not None
        self._conn = None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout_s)

    def kill(self) -> None:
        """kill -9: no flush, no goodbye."""
        self._conn = None
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def __enter__(self) -> DaemonProcess:
        # ``with d.start():`` must not start a second daemon that nothing stops.
        if self.proc is not None and self.proc.poll() is None:
            return self
        return self.start()

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.poll() is None:
            try:
                self.stop(timeout_s=15)
            except subprocess.TimeoutExpired:
                self.kill()


class InProcessDaemon(HttpClient):
    """The daemon's real app and threads in this process (no signals): for fuzzing many requests
    without a process per example."""

    def __init__(self, db: Path, backend: str = REPLAY, replay_speed: float = 1000.0,
                 node: str | None = None, housekeeping_every_s: float = 5.0,
                 prepare: Any = None, **settings: Any) -> None:
        from carbonwatch.config import Settings
        from carbonwatch.daemon.build import build_daemon
        from carbonwatch.daemon.server import Daemon
        from carbonwatch.grid.static import StaticSource, world_average

        self.settings = Settings(db=str(db), backend=backend, port=0, **settings).validate()
        self.daemon: Daemon | None = None

        def build(**overrides: Any) -> Daemon:
            options = {"replay_speed": replay_speed, "node": node, "flush_every_s": 0.2,
                       "housekeeping_every_s": housekeeping_every_s, **overrides}
            return build_daemon(self.settings, intensity=StaticSource(world_average()), **options)

        self.build = build  # a test may wrap it, e.g. to hand the daemon its own clock
        self.prepare = prepare  # called with the opened Daemon before it serves
        self.stderr = []
        self._thread: threading.Thread | None = None

    def __enter__(self) -> InProcessDaemon:
        import asyncio

        self.daemon = self.build()
        if self.prepare is not None:
            self.prepare(self.daemon)
        ready = threading.Event()
        self._loop = asyncio.new_event_loop()
        self._stop = asyncio.Event()

        def on_ready(url: str) -> None:
            self.url = url
            ready.set()

        def serve() -> None:
            asyncio.set_event_loop(self._loop)
            self._loop.run_until_complete(self.daemon.serve(on_ready, stop=self._stop))

        self._thread = threading.Thread(target=serve, daemon=True)
        self._thread.start()
        if not ready.wait(30):
            raise RuntimeError("in-process daemon did not start")
        return self

    def __exit__(self, *exc: object) -> None:
        self._conn = None
        self._loop.call_soon_threadsafe(self._stop.set)
        assert self._thread is not None
        self._thread.join(30)
        self.daemon.close()
