"""The node daemon: its parts, served until SIGTERM/SIGINT, then shut down cleanly (in the manner
of uvicorn's ``server.py``). :func:`~carbonwatch.daemon.build.build_daemon` builds the parts in
order and opens them; a :class:`Daemon` only holds them.

Serve: listen; then start sampling, the scheduler and the scraper. SIGTERM/SIGINT: stop accepting,
let in-flight requests finish, close every open interval, settle every call, write it all, exit 0.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from aiohttp import web

from carbonwatch.clock import Clock
from carbonwatch.config import Settings
from carbonwatch.daemon.app import make_app
from carbonwatch.daemon.bind import unix_site, url_host
from carbonwatch.daemon.connguard import ConnectionGuard, GuardedRunner
from carbonwatch.daemon.health import HealthViews
from carbonwatch.daemon.hooks import IntervalLog
from carbonwatch.daemon.intake import CallIntake, JobIntake
from carbonwatch.daemon.metrics import DaemonCollector, LabelCap, MetricTotals
from carbonwatch.daemon.reader import Reader
from carbonwatch.daemon.sampling import SamplingLoop
from carbonwatch.daemon.scraping import Scraper
from carbonwatch.daemon.state import DaemonState
from carbonwatch.daemon.writer import Writer
from carbonwatch.errors import ConfigError
from carbonwatch.pricing import Pricing
from carbonwatch.sampler import Sampler
from carbonwatch.store import Store

if TYPE_CHECKING:
    from carbonwatch.scheduler.service import SchedulerService

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(frozen=True, eq=False)  # a running daemon, not a value: compared by identity
class Daemon:
    """The node daemon's parts, each built and opened by ``build_daemon``; served by
    :meth:`serve`, closed by :meth:`close`. Nothing is assigned after construction."""

    settings: Settings
    pricing: Pricing
    node: str
    notes: tuple[str, ...]  # what start-up found worth saying (shown by the CLI)
    clock: Clock  # wall time, or trace time when replaying
    writer: Writer
    reader: Reader
    models: LabelCap
    totals: MetricTotals
    state: DaemonState
    sampler: Sampler
    loop: SamplingLoop
    interval_logs: tuple[IntervalLog, ...]
    guard: ConnectionGuard
    health: HealthViews
    prometheus: DaemonCollector
    scheduler: SchedulerService
    scraper: Scraper
    jobs: JobIntake
    calls: CallIntake

    # --- serving -------------------------------------------------------------------------------

    async def serve(
        self, on_ready: Callable[[str], None] = lambda url: None,
        stop: asyncio.Event | None = None,
    ) -> None:
        """Serve until SIGTERM/SIGINT, or until ``stop`` is set (in-process use, no signals)."""
        app = make_app(self)
        guard = self.guard
        app.middlewares.insert(0, guard.middleware)  # tells the guard of each request
        runner = GuardedRunner(app, guard, access_log=None, shutdown_timeout=10.0)
        await runner.setup()
        settings = self.settings
        local_url = ""  # where the node's users (and launched jobs) reach it as themselves
        try:
            if settings.socket:
                await unix_site(runner, Path(settings.socket), settings.socket_mode_bits)
                url = local_url = f"unix:{settings.socket}"
            else:
                site = web.TCPSite(runner, settings.host, settings.port)
                await site.start()
                host, port = runner.addresses[0][:2]
                url = f"http://{url_host(host)}:{port}"
                if settings.local_socket:  # beside TCP: launches as the peer's uid
                    await unix_site(runner, Path(settings.local_socket),
                                     settings.socket_mode_bits)
                    local_url = f"unix:{settings.local_socket}"
        except OSError as exc:
            await runner.cleanup()
            where = settings.socket or f"{settings.host}:{settings.port}"
            raise ConfigError(f"cannot listen on {where}: {exc.strerror or exc}") from None
        if stop is None:
            stop = asyncio.Event()
            for sig in (signal.SIGTERM, signal.SIGINT):
                asyncio.get_running_loop().add_signal_handler(sig, stop.set)
        self.loop.start()
        try:
            await self.scheduler.start(local_url or url)
            await self.scraper.start()
            on_ready(url)
            await stop.wait()
        finally:
            log.info("shutting down: finishing requests, then the final flush")
            await self.scraper.stop()
            await self.scheduler.stop()  # launches no more; launched jobs run on
            await runner.cleanup()  # stop accepting; in-flight requests finish
            await asyncio.to_thread(self.loop.stop)

    def close(self) -> None:
        """Close every part ``build_daemon`` opened: the sampling thread stopped first (a no-op
        after :meth:`serve`), then the collectors it read (NVML shut down, the counter pool
        joined), then the store."""
        self.loop.stop()
        for collector in self.sampler.collectors:
            try:
                collector.close()
            except Exception:  # one that fails to close does not keep the rest open
                log.exception("collector %r failed to close", collector)
        self.reader.close()
        self.writer.close()
        for log_ in self.interval_logs:
            log_.close()

    async def read(self, fn: Callable[[Store], T]) -> T:
        return await self.reader.run(fn)

    # --- views (the AppDaemon protocol) -------------------------------------------------------

    def device_views(self) -> list[dict[str, Any]]:
        return self.health.devices()

    def health_view(self) -> dict[str, Any]:
        return self.health.view()
