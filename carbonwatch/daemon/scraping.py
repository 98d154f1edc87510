"""The daemon reads inference servers' Prometheus endpoints (``--scrape NAME=URL``) and splits
each server process's energy over the tokens it reports (the split itself: ``carbonwatch.scrape``).

Trust: the URLs come only from the daemon's settings, never from a request, and must name this
node (loopback or one of its own addresses): the server's process is found by the local TCP port
it listens on (``psutil.net_connections``), so a server elsewhere could not be measured anyway,
and the daemon never becomes a client of arbitrary hosts. What a server answers is bounded
(MAX_BODY_BYTES, MAX_MODELS) and parsed by prometheus_client's parser; a failed scrape (refused,
timed out, not 200, garbage) is logged, counted per target (``/healthz``) and changes nothing:
the next good scrape's window covers the gap, since the counters are cumulative.

Each scrape of a target is one window boundary: the counters' increases since the previous scrape
and the energy the server's process drew in between meet in ``ScrapeLedger``. The process is a job
of the live_jobs (``source`` ``scrape``), registered at its first scrape; a process that already
belongs to a job (``carbonwatch run`` started it) is that job. A new process (restart) starts
from a fresh baseline: its earlier tokens had no measured energy.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import re
import socket
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import psutil

from carbonwatch.clock import Clock
from carbonwatch.daemon import storeops
from carbonwatch.daemon.live_jobs import LiveJob
from carbonwatch.daemon.state import DaemonState
from carbonwatch.daemon.writer import Writer
from carbonwatch.errors import ConfigError
from carbonwatch.model import job_of_consumer
from carbonwatch.scrape import (
    CounterTracker,
    ExpositionError,
    counts_tokens,
    parse_exposition,
)

log = logging.getLogger(__name__)

MAX_TARGETS = 16
MAX_BODY_BYTES = 8 * 1024 * 1024  # vLLM's exposition is ~100 kB; a bound, not an expectation
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


class ScrapeError(Exception):
    """A scrape that failed; the message says why, for the log and /healthz."""


@dataclass
class Target:
    name: str
    url: str
    host: str
    port: int
    tracker: CounterTracker = field(default_factory=CounterTracker)
    consumer: str | None = None
    pid: int | None = None
    server: str | None = None  # vllm | tgi | triton, once recognised
    scrapes: int = 0
    errors: int = 0
    last_error: str | None = None

    def view(self) -> dict[str, Any]:
        return {"name": self.name, "url": self.url, "server": self.server, "pid": self.pid,
                "job_id": job_of_consumer(self.consumer) if self.consumer else None,
                "scrapes": self.scrapes, "errors": self.errors, "last_error": self.last_error,
                "counter_resets": self.tracker.resets}


def local_addresses() -> set[str]:
    """This node's own interface addresses."""
    out = set()
    for addrs in psutil.net_if_addrs().values():
        for a in addrs:
            if a.family in (socket.AF_INET, socket.AF_INET6):
                out.add(a.address.split("%", 1)[0])
    return out


def parse_targets(spec: str) -> list[Target]:
    """``NAME=URL[,NAME=URL...]`` from the ``scrape`` setting; ConfigError names what is wrong."""
    targets: list[Target] = []
    items = [s.strip() for s in spec.split(",") if s.strip()]
    if len(items) > MAX_TARGETS:
        raise ConfigError(f"scrape: {len(items)} targets; at most {MAX_TARGETS}")
    local: set[str] | None = None
    for item in items:
        name, sep, url = item.partition("=")
        name, url = name.strip(), url.strip()
        if not sep or not _NAME.match(name):
            raise ConfigError(f"scrape: {item!r} is not NAME=URL (NAME: letters, digits, _.-)")
        if any(t.name == name for t in targets):
            raise ConfigError(f"scrape: the name {name!r} is given twice")
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError(f"scrape: {name}: {url!r} is not an http(s) URL")
        if parts.username or parts.password:
            raise ConfigError(f"scrape: {name}: credentials in the URL are not accepted")
        try:
            port = parts.port or (443 if parts.scheme == "https" else 80)
        except ValueError:
            raise ConfigError(f"scrape: {name}: {url!r} has an invalid port") from None
        host = parts.hostname
        if host != "localhost":
            try:
                addr = ipaddress.ip_address(host)
            except ValueError:
                raise ConfigError(f"scrape: {name}: the host must be an IP address of this node "
                                  f"or localhost, got {host!r}") from None
            if not addr.is_loopback:
                local = local_addresses() if local is None else local
                if str(addr) not in local:
                    raise ConfigError(f"scrape: {name}: {host} is not an address of this node; "
                                      "only servers on this node can be measured")
        clash = next((t for t in targets if t.port == port), None)
        if clash is not None:  # one listening port is one process: it would be counted twice
            raise ConfigError(f"scrape: {name} and {clash.name} both use port {port}")
        targets.append(Target(name, url, host, port))
    return targets


def listening_pid(host: str, port: int) -> int:
    """The pid of the process listening on ``port`` at ``host`` (or on every address)."""
    wildcard = {"0.0.0.0", "::"}
    loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    hidden = False
    for conn in psutil.net_connections(kind="tcp"):
        if conn.status != psutil.CONN_LISTEN or not conn.laddr or conn.laddr.port != port:
            continue
        ip = conn.laddr.ip
        matches = ip in wildcard or ip == host or (
            loopback and ipaddress.ip_address(ip.split("%", 1)[0]).is_loopback)
        if not matches:
            continue
        if conn.pid is None:
            hidden = True
            continue
        return conn.pid
    if hidden:
        raise ScrapeError(f"the process listening on port {port} is not visible to the daemon "
                          "(run the daemon as root or as the server's user)")
    raise ScrapeError(f"nothing listens on {host}:{port}")


class Scraper:
    """Scrapes every target once per ``interval_s`` (clock seconds) on the daemon's event loop."""

    def __init__(
        self, targets: list[Target], interval_s: float, *, state: DaemonState, writer: Writer,
        clock: Clock, speed: float, service_row: Callable[[LiveJob], dict[str, Any]],
    ) -> None:
        self.state, self.writer, self.clock, self.speed = state, writer, clock, speed
        self.service_row = service_row  # the jobs row of a process measured by its scrapes
        self.targets = targets
        self.interval_s = interval_s
        self._task: asyncio.Task[None] | None = None
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        if not self.targets:
            return
        # No proxy from the environment: the targets are on this node.
        self._session = aiohttp.ClientSession(trust_env=False)
        self._task = asyncio.create_task(self._run(), name="carbonwatch-scraper")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._session is not None:
            await self._session.close()

    def view(self) -> list[dict[str, Any]]:
        return [t.view() for t in self.targets]

    async def _run(self) -> None:
        real_interval_s = self.interval_s / self.speed
        while True:
            started = time.monotonic()
            for target in self.targets:
                try:
                    await self.scrape(target)
                except asyncio.CancelledError:
                    raise
                except Exception:  # the loop must outlive any surprise
                    log.exception("scrape %s: unexpected error", target.name)
            await asyncio.sleep(max(0.0, real_interval_s - (time.monotonic() - started)))

    async def scrape(self, t: Target) -> None:
        """One scrape: find the process, read its counters, cut a window."""
        try:
            pid = await asyncio.to_thread(listening_pid, t.host, t.port)
            text = await self._fetch(t)
            now_s = self.clock.time()  # the counters' time: just after they were read
            reading = await asyncio.to_thread(parse_exposition, text, t.name)
        except (ScrapeError, ExpositionError, aiohttp.ClientError, TimeoutError, OSError,
                UnicodeDecodeError) as exc:
            self._failed(t, str(exc) or type(exc).__name__)
            return
        other = next((o for o in self.targets if o is not t and o.pid == pid), None)
        if other is not None:  # two ports of one process: its energy can be split only once
            self._failed(t, f"process {pid} is already scraped as {other.name}")
            return
        t.scrapes += 1
        t.server = reading.server
        if t.last_error is not None:
            log.info("scrape %s: reading %s counters again", t.name, reading.server)
            t.last_error = None
        consumer = await self._consumer(t, pid, reading.models, now_s)
        deltas = t.tracker.update(reading.models)
        state = self.state
        with state.lock:
            if deltas is None:
                state.scraped.baseline(consumer, now_s)
            else:
                state.scraped.close_window(consumer, now_s, deltas,
                                           counts_tokens(reading.server))

    def _failed(self, t: Target, message: str) -> None:
        t.errors += 1
        if message != t.last_error:  # one line per new problem, not one per scrape
            log.warning("scrape %s (%s): %s", t.name, t.url, message)
        t.last_error = message

    async def _fetch(self, t: Target) -> str:
        assert self._session is not None
        timeout = aiohttp.ClientTimeout(total=min(10.0, max(1.0, self.interval_s)))
        async with self._session.get(t.url, timeout=timeout, allow_redirects=False) as resp:
            if resp.status != 200:
                raise ScrapeError(f"HTTP {resp.status} from {t.url}")
            chunks, size = [], 0
            # read(n) returns what has arrived, not n bytes: read to the end, bounded.
            async for chunk in resp.content.iter_chunked(1 << 16):
                size += len(chunk)
                if size > MAX_BODY_BYTES:
                    raise ScrapeError(f"exposition larger than {MAX_BODY_BYTES} bytes")
                chunks.append(chunk)
        return b"".join(chunks).decode("utf-8")

    async def _consumer(self, t: Target, pid: int, models: dict[str, Any], now_s: float) -> str:
        """The job whose energy this target's tokens share; registered at a new process."""
        state = self.state
        with state.lock:
            job = state.live_jobs.owner_of_pid(pid)
            if job is not None and job.consumer == t.consumer and pid == t.pid:
                return job.consumer  # the common case: same process, same job
            if job is not None and job.source == "scrape":
                job.serves_calls = False  # reloaded after a restart: its energy is split here
        created: list[LiveJob] = []
        if job is None:
            model = next(iter(models)) if len(models) == 1 else t.name
            job = LiveJob(id=state.new_id(), name=f"{t.name} (scraped, pid {pid})",
                      kind="inference", model=model, pids={pid}, started_s=now_s,
                      source="scrape", auto=True)
            created.append(job)
            row = {**self.service_row(job), "tags": {"auto": True, "scrape": t.name}}
            await self.writer.run(lambda s: storeops.insert_job(s.conn, row))
            state.register(created)
            log.info("scrape %s: measuring process %d as job %s", t.name, pid, job.id)
        with state.lock:
            if t.consumer is not None and t.consumer != job.consumer:
                state.scraped.forget(t.consumer)
            state.scraped.watch(job.consumer)
        # A new process: its counters so far came with no measured energy, so they are a
        # baseline, not a window.
        t.tracker.rebase()
        t.consumer, t.pid = job.consumer, pid
        return job.consumer
