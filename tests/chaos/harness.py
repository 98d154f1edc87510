"""What the experiments share: a daemon process configured through a TOML file (fault hooks,
interval log, a port kept across restarts), a grid provider on 127.0.0.1 that can be switched
between behaving and misbehaving, and helpers to post calls."""

from __future__ import annotations

import asyncio
import json
import random
import socket
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from aiohttp import web
from daemon_helpers import FIXTURE, INFER_PID, MODEL, REPLAY, DaemonProcess, fixture_calls

from carbonwatch.collectors.trace import load_trace

TRACE = load_trace(FIXTURE)
__all__ = ["FIXTURE", "INFER_PID", "MODEL", "REPLAY", "TRACE", "ChaosDaemon", "FakeGrid",
           "batches_of", "fixture_calls", "free_port"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a TOML basic string: JSON's escapes are TOML's
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{k} = {toml_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(f"no TOML for {value!r}")


ADMIN_TOKEN = "chaos-admin-" + "0123456789abcdef" * 3


class ChaosDaemon(DaemonProcess):
    """A daemon process with a config file and, with ``keep_port``, the same port after a
    restart (so that wrappers started by the scheduler still reach it)."""

    started: list[ChaosDaemon] = []  # every instance started, for kill_all

    def __init__(self, tmp_path: Path, *args: str, config: Mapping[str, Any] | None = None,
                 env: dict[str, str] | None = None, keep_port: bool = False,
                 db: Path | None = None) -> None:
        self.tmp_path = tmp_path
        self.interval_log = tmp_path / "intervals.jsonl"
        settings = {"interval_log": str(self.interval_log), **(config or {})}
        self.config_path = tmp_path / "chaos.toml"
        self.config_path.write_text(
            "".join(f"{k} = {toml_value(v)}\n" for k, v in settings.items()))
        base_env = {"XDG_CONFIG_HOME": str(tmp_path / "cfg"),
                    "XDG_DATA_HOME": str(tmp_path / "data")}
        if not any(k.endswith("TOKEN") for k in (env or {})):
            # Over TCP only the admin token launches deferred jobs: experiments hold it.
            base_env["CARBONWATCH_ADMIN_TOKEN"] = ADMIN_TOKEN
            self.default_token = ADMIN_TOKEN
        port = [] if not keep_port else ["--port", str(free_port())]
        super().__init__(db or tmp_path / "cw.db", "--config", str(self.config_path), *port,
                         *args, env={**base_env, **(env or {})})
        self.starts = 0

    def start(self, timeout_s: float = 30.0) -> ChaosDaemon:
        ChaosDaemon.started.append(self)
        super().start(timeout_s)
        self.starts += 1
        return self

    @classmethod
    def kill_all(cls) -> None:
        """kill -9 what an experiment left running (it failed before stopping its daemon)."""
        while cls.started:
            cls.started.pop().kill()

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid


def batches_of(calls: Sequence[dict[str, Any]], size: int) -> list[list[dict[str, Any]]]:
    return [list(calls[i:i + size]) for i in range(0, len(calls), size)]


def replay_args(speed: float, gpus: int = 1) -> tuple[str, ...]:
    return ("--backend", REPLAY, "--replay-speed", str(speed), "--replay-gpus", str(gpus))


def kill_at_random(rng: random.Random, lo_s: float, hi_s: float) -> float:
    delay = rng.uniform(lo_s, hi_s)
    time.sleep(delay)
    return delay


# --- a grid provider that misbehaves on demand ---------------------------------------------------


class FakeGrid:
    """The Carbon Aware SDK's ``/emissions/forecasts/current`` on 127.0.0.1, in a thread.

    ``mode``: ``ok`` (the forecast), ``down`` (HTTP 503), ``slow`` (the forecast after
    ``slow_s``), ``garbage`` (not JSON), ``wrong`` (JSON of the wrong shape), ``missing``
    (no forecast data for the location). ``slots``: (start_s, end_s, gCO2/kWh)."""

    def __init__(self, slots: Sequence[tuple[float, float, float]], slow_s: float = 2.0) -> None:
        self.slots = list(slots)
        self.slow_s = slow_s
        self.mode = "ok"
        self.hits: dict[str, int] = {}
        self.url = ""
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def __enter__(self) -> FakeGrid:
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("fake grid provider did not start")
        return self

    def __exit__(self, *exc: object) -> None:
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)

    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(self._main())

    async def _main(self) -> None:
        self._stop = asyncio.Event()
        app = web.Application()
        app.router.add_get("/emissions/forecasts/current", self._forecast)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{runner.addresses[0][1]}"
        self._ready.set()
        await self._stop.wait()
        await runner.cleanup()

    def _body(self, location: str) -> Any:
        data = [{"location": location, "timestamp": _iso(s), "duration": (e - s) / 60.0,
                 "value": v} for s, e, v in self.slots]
        return [{"generatedAt": _iso(time.time()), "location": location,
                 "optimalDataPoints": [], "forecastData": data}]

    async def _forecast(self, request: web.Request) -> web.Response:
        mode = self.mode
        self.hits[mode] = self.hits.get(mode, 0) + 1
        location = request.query.get("location", "")
        if mode == "down":
            return web.json_response({"error": "maintenance"}, status=503)
        if mode == "garbage":
            return web.Response(body=b'[{"forecastData": [{"timestamp": "2026-', status=200,
                                content_type="application/json")
        if mode == "wrong":
            return web.json_response({"forecasts": "none today"})
        if mode == "missing":
            return web.json_response([{"location": location, "forecastData": []}])
        if mode == "slow":
            await asyncio.sleep(self.slow_s)
        return web.json_response(self._body(location))


def _iso(t_s: float) -> str:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(t_s, UTC).isoformat().replace("+00:00", "Z")


class Streamer:
    """A client posting call batches in a loop (in a thread) until stopped: what the daemon
    acknowledged goes to ``acks``, what it refused is counted by status, with one message
    each, and a batch refused or cut off is posted again later."""

    def __init__(self, daemon: DaemonProcess, acks: Any, batches: Sequence[list[dict]],
                 pause_s: float = 0.03) -> None:
        self.daemon, self.acks, self.batches, self.pause_s = daemon, acks, batches, pause_s
        self.delivered: set[int] = set()
        self.messages: dict[int, str] = {}
        self.latencies_s: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Streamer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self, timeout_s: float = 30.0) -> None:
        self._stop.set()
        self._thread.join(timeout_s)

    def finish(self, timeout_s: float = 30.0) -> None:
        """Wait until every batch is acknowledged (or the time is up), then stop."""
        deadline = time.monotonic() + timeout_s
        while len(self.delivered) < len(self.batches) and time.monotonic() < deadline:
            time.sleep(0.05)
        self.stop()

    def _run(self) -> None:
        while not self._stop.is_set() and len(self.delivered) < len(self.batches):
            for index, batch in enumerate(self.batches):
                if self._stop.is_set():
                    return
                if index in self.delivered:
                    continue
                t0 = time.monotonic()
                try:
                    status, body = self.daemon.request("POST", "/v1/calls", {"calls": batch})
                except OSError as exc:
                    status, body = 0, {"error": repr(exc)}
                self.latencies_s.append(time.monotonic() - t0)
                if self.acks.batch(status, body):
                    self.delivered.add(index)
                else:
                    self.messages.setdefault(status, str(body)[:300])
                time.sleep(self.pause_s)
