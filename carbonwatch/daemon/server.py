"""Build the daemon from settings, serve it, and shut it down cleanly (in the manner of uvicorn's
``server.py``: the CLI only parses flags).

Start: refuse a non-loopback bind without a token; open the store on the writer thread; reload
what a previous run left (running jobs, call batches acknowledged but not yet settled, counters);
listen; then start sampling. SIGTERM/SIGINT: stop accepting, let in-flight requests finish, close
every open interval, settle every call, write it all, exit 0.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import psutil
from aiohttp import web

from carbonwatch.clock import Clock, SteadyClock, SystemClock
from carbonwatch.collectors.base import Collector
from carbonwatch.collectors.gpushare import GpuOptions, gpu_options
from carbonwatch.config import Settings
from carbonwatch.daemon import columnar, hooks, storeops, validation
from carbonwatch.daemon.app import make_app
from carbonwatch.daemon.bind import check_bind, unix_site, url_host
from carbonwatch.daemon.connguard import ConnectionGuard, GuardedRunner
from carbonwatch.daemon.intake import CallIntake, JobIntake
from carbonwatch.daemon.live_jobs import LiveJob, LiveJobs, job_from_row
from carbonwatch.daemon.metrics import DaemonCollector, Health, LabelCap, MetricTotals
from carbonwatch.daemon.reader import Reader, private_store
from carbonwatch.daemon.sampling import SamplingLoop, WallTimeLabels
from carbonwatch.daemon.scraping import Scraper, parse_targets
from carbonwatch.daemon.state import DaemonState, fold_models
from carbonwatch.daemon.trace_clock import ReplayClock
from carbonwatch.daemon.writer import Writer
from carbonwatch.errors import ConfigError, StoreError
from carbonwatch.grid.types import IntensitySource
from carbonwatch.model import job_of_consumer
from carbonwatch.pricing import Pricing
from carbonwatch.sampler import Sampler
from carbonwatch.store import Store

log = logging.getLogger(__name__)
T = TypeVar("T")
REPLAY_PREFIX = "replay:"


class Daemon:
    """The node daemon: built and opened by :func:`build_daemon`, served by :meth:`serve`."""

    def __init__(
        self,
        settings: Settings,
        *,
        intensity: IntensitySource,
        replay_speed: float = 1.0,
        replay_gpus: int = 1,
        node: str | None = None,
        flush_every_s: float = 1.0,
        housekeeping_every_s: float = 5.0,
        clock: Clock | None = None,
    ) -> None:
        check_bind(settings)
        self.settings = settings
        self.token = settings.token
        self.admin_token = settings.admin_token
        self.intensity = intensity
        self.pricing = Pricing.from_settings(settings)
        self.node = node or settings.node or socket.gethostname()
        self.replay_gpus = replay_gpus
        self.flush_every_s = flush_every_s
        self.housekeeping_every_s = housekeeping_every_s
        self.notes: list[str] = []
        self.writer = Writer(settings.db_path)
        self.reader = Reader(settings.db_path)
        self.models = LabelCap(settings.max_label_values)
        self.totals = MetricTotals(self.models)
        self.speed = replay_speed if settings.backend.startswith(REPLAY_PREFIX) else 1.0
        self.clock: Clock = clock or SystemClock()  # wall time; a replay replaces it
        self.end_s: float | None = None
        self.url = ""
        # Refused at start, before anything opens: a bad target is a configuration error.
        self.scrape_targets = parse_targets(settings.scrape)
        self.interval_logs: list[Any] = []
        self.guard: ConnectionGuard | None = None  # once serving

    # --- start-up ------------------------------------------------------------------------------

    def open(self) -> None:
        self.notes += private_store(self.settings.db_path)
        self.writer.start()
        try:
            self._open()
        except StoreError as exc:  # e.g. a corrupt page met while reloading
            raise StoreError(f"cannot start on the store {self.settings.db_path}: {exc}. "
                             "If the file is damaged, restore a backup or move it aside") from None

    def _gpu_options(self) -> GpuOptions:
        """Idle baselines learned on earlier runs (by GPU UUID) in, newly learned ones out."""
        from carbonwatch.store.gpu_idle import load_gpu_idle, save_gpu_idle

        def learned(uuid: str, idle_w: float, learned_s: float) -> None:
            now_s = self.clock.time()
            self.writer.submit_idle(lambda s: save_gpu_idle(s.conn, uuid, idle_w, learned_s, now_s))

        stored = self.writer.call(lambda s: load_gpu_idle(s.conn))
        return gpu_options(self.settings, stored, learned)

    def _open(self) -> None:
        resume_key = "sampled_until_s"
        collectors: list[Collector]
        scanner = None
        if self.settings.backend.startswith(REPLAY_PREFIX):
            collectors, resume_key = self._replay_collectors()
            steady = self.clock  # trace time never steps
        else:
            from carbonwatch.collectors.detect import build_collectors, default_process_scanner

            # Collectors measure on a clock the wall clock's steps cannot move; their intervals
            # are labelled in wall time (see WallTimeLabels).
            steady = SteadyClock(self.clock)
            # CPU and RAM shares come from one scanner; the state tells it the jobs' trees.
            # Reading only those trees (and new pids) keeps the 1 Hz scan's cost flat in the
            # number of processes on the node; the rest of its CPU is /proc/stat's busy time.
            scanner = default_process_scanner(watched_only=True)
            collectors, notes = build_collectors(
                self.settings.backend, rapl_root=self.settings.rapl_root, clock=steady,
                processes=scanner, gpu_options=self._gpu_options(),
            )
            collectors = [WallTimeLabels(c, steady) for c in collectors]
            self.notes += notes
        # Replayed pids belong to the recording machine: their trees are not looked up here.
        self.live_jobs = LiveJobs(track_trees=scanner is not None)
        self.state = DaemonState(pricing=self.pricing, live_jobs=self.live_jobs, speed=self.speed,
                                 scanner=scanner,
                                 pid_exists=psutil.pid_exists if scanner is not None else None,
                                 max_auto_jobs=self.settings.max_auto_jobs)
        self.interval_logs = hooks.sinks_for(self.settings.extra)
        self.sampler = Sampler(
            collectors,
            intensity=self.intensity,
            owners=self.state.owners,
            sinks=[self.state.on_interval, *self.interval_logs],
            idle_policy=self.settings.idle_policy,
            power_interval_s=self.settings.power_interval_s,
            counter_interval_s=self.settings.counter_interval_s,
        )
        self.provenance = self._provenance()
        self._reload()
        from carbonwatch.embodied import record_devices  # the models embodied carbon needs

        devices, seen_s = self.sampler.devices(), self.clock.time()
        self.writer.call(lambda s: record_devices(s.conn, devices, seen_s))
        self.loop = SamplingLoop(
            sampler=self.sampler, state=self.state, writer=self.writer, totals=self.totals,
            clock=self.clock, steady=steady, speed=self.speed, end_s=self.end_s,
            flush_every_s=self.flush_every_s, housekeeping_every_s=self.housekeeping_every_s,
            raw_log_max=self.settings.raw_call_log_max,
            resume_key=resume_key,
        )
        self.prometheus = DaemonCollector(
            self.totals, self._metric_health, self.node,
            self.pricing.currency if self.pricing.known else None,
            now=self.clock.time, retention_s=self.settings.metrics_job_retention_s,
        )
        # A sampler silent for this long (real seconds) is stuck.
        self.stuck_after_s = max(10.0, 3 * self.settings.counter_interval_s / self.speed)
        # Deferred (carbon-aware) jobs; started in serve(), once the URL their wrappers report to
        # is known.
        from carbonwatch.scheduler.service import SchedulerService

        self.scheduler = SchedulerService(self.settings, read=self.read, write=self.writer.run)
        self.scraper = Scraper(self, self.scrape_targets, self.settings.scrape_interval_s)
        self.jobs = JobIntake(state=self.state, writer=self.writer, loop=self.loop,
                              models=self.models, clock=self.clock,
                              accounting=self.job_accounting, read=self.read)
        self.calls = CallIntake(state=self.state, writer=self.writer, models=self.models,
                                totals=self.totals, clock=self.clock, service_row=self.service_row,
                                max_auto_jobs=self.settings.max_auto_jobs_per_request)

    def _replay_collectors(self) -> tuple[list[Collector], str]:
        """The trace's GPU (``replay_gpus`` copies), served in trace time at ``replay_speed``.

        Built here rather than by ``detect`` because the daemon resumes a replay where the store
        left off: trace time must equal clock time, not start again at the clock's start."""
        from carbonwatch.collectors.gpu import GpuCollector
        from carbonwatch.collectors.trace import load_trace
        from carbonwatch.collectors.trace_gpu import ReplayGpuBackend, read_latency

        trace_dir = self.settings.backend[len(REPLAY_PREFIX):]
        if not trace_dir:
            raise ConfigError("backend 'replay:DIR' needs a trace directory after 'replay:'")
        trace = load_trace(trace_dir)
        resume_key = f"replay_until_s:{Path(trace_dir).resolve()}"
        until_s = self.writer.call(lambda s: storeops.get_meta(s.conn, resume_key))
        start_s = trace.start_s
        if isinstance(until_s, int | float) and trace.start_s < until_s:
            start_s = min(float(until_s), trace.end_s)
            self.notes.append(f"replay: resuming at trace time {start_s:.3f} "
                              f"({start_s - trace.start_s:.1f} s into the trace)")
        self.clock = ReplayClock(start_s, self.speed)
        self.end_s = trace.end_s
        faults = hooks.replay_faults(self.settings.extra.get("replay_faults"), trace.start_s)
        backend = ReplayGpuBackend(trace, self.clock, devices=self.replay_gpus, faults=faults,
                                   latency=read_latency(self.settings.extra.get("replay_latency")))
        self.notes.append(
            f"GPU: replaying {trace.directory} ({trace.gpu_name} x{self.replay_gpus}, "
            f"{trace.end_s - trace.start_s:.1f} s of trace at {self.speed:g}x); "
            "CPU and RAM not measured"
        )
        return [GpuCollector(backend, clock=self.clock, options=self._gpu_options())], resume_key

    def _provenance(self) -> dict[str, Any]:
        point = self.intensity.intensity_at(self.clock.time())
        pricing = self.pricing
        return {
            "energy": {d.device_id: f"{d.provenance.value} ({d.method})"
                       for d in self.sampler.devices()},
            "carbon": {"intensity": point.provider, "kind": point.kind, "zone": point.zone,
                       "pue": pricing.pue},
            "cost": (f"energy at {pricing.price_per_kwh} {pricing.currency}/kWh" if pricing.known
                     else "unknown: no energy_price_per_kwh configured"),
            "attribution": "the job's share of each device's active energy per interval (GPU: "
            "all of it when alone, else by fitted marginal power x SM activity, or SM share; "
            "CPU time; RSS); idle energy reported separately, the GPU idle baseline learned "
            "from its counter",
        }

    def job_accounting(self) -> dict[str, Any]:
        """Columns every new job row starts with."""
        return {"cost": 0.0 if self.pricing.known else None, "currency": self.pricing.currency,
                "provenance": self.provenance}

    def service_row(self, job: LiveJob) -> dict[str, Any]:
        """The jobs row of an inference service registered by its first call."""
        return {"id": job.id, "name": job.name, "kind": job.kind, "model": job.model,
                "command": None, "pids": sorted(job.pids), "tags": {"auto": True},
                "identity": None, "source": job.source, "started_s": job.started_s,
                "owner_uid": job.owner_uid, **self.job_accounting()}

    def _reload(self) -> None:
        """What a previous run left: running jobs, unsettled batches, counter totals."""
        state = self.state
        for row in self.writer.call(storeops.running_jobs):
            try:
                job = job_from_row(row)
                if not all(isinstance(p, int) and 0 < p <= validation.MAX_PID for p in job.pids):
                    raise ValueError(f"pids {sorted(map(str, job.pids))[:8]} are not all pids")
            except (TypeError, ValueError, KeyError, AttributeError) as exc:
                # A row no current daemon writes: ended as lost, never a start that crashes.
                log.error("job %s cannot be resumed (%s); marked lost", row.get("id"), exc)
                self.writer.call(lambda s, r=row: storeops.end_job(
                    s.conn, r["id"], status="lost", ended_s=self.clock.time(), exit_code=None,
                    pids=[]))
                continue
            self.live_jobs.add(job)
        if self.live_jobs.running:
            self.notes.append(f"resumed {len(self.live_jobs.running)} running job(s)")

        def seeds(store: Store) -> tuple[Any, ...]:
            conn = store.conn
            energy = storeops.energy_totals(conn)
            ids = {j for c, *_ in energy if (j := job_of_consumer(c)) is not None}
            max_batch = conn.execute("SELECT MAX(id) FROM call_batches").fetchone()[0] or 0
            return (energy, storeops.job_names_and_ends(conn, ids),
                    storeops.calls_by_model(conn), storeops.dropped_spans(conn), max_batch,
                    storeops.pending_batches(conn), storeops.tokens_by_model(conn))

        energy, jobs, calls, dropped, max_batch, pending, tokens = self.writer.call(seeds)
        # The cap's places go to the models with the most calls, then to those with energy.
        for model, _ in sorted(calls.items(), key=lambda item: -(item[1] or 0)):
            self.models.admit(model, 0)
        for row in energy:
            self.models.admit(row[2], 0)
        unknown = ("", 0.0)  # a consumer with no jobs row: nameless, long ended
        self.totals.add_energy(
            ((j, jobs.get(j, unknown)[0], model, phase, device)
             if (j := job_of_consumer(c)) is not None else ("", "", model, phase, device),
             e, g, cost)
            for c, phase, model, device, e, g, cost in energy
        )
        # Ended jobs fold at the first scrape once past the retention, as before the restart.
        for c, *_ in energy:
            if (j := job_of_consumer(c)) is not None:
                ended_s = jobs.get(j, unknown)[1]
                if ended_s is not None:
                    self.totals.job_ended(j, ended_s)
        self.totals.add_calls(calls)
        self.totals.add_tokens(tokens)
        self.totals.add_dropped(dropped)
        state.set_next_batch_id(max_batch + 1)
        now_s = self.clock.time()
        for batch_id, body, known in pending:
            try:
                batch = columnar.any_batch(body)  # either form, as it was accepted
            except validation.ApiError as exc:  # cannot happen for a body we accepted
                log.error("call batch %d cannot be re-read (%s); left pending", batch_id, exc)
                continue
            spans = fold_models(batch.spans, self.models)
            by_consumer, _, created = state.resolve(spans, now_s, known=known)
            if created:
                rows = [self.service_row(j) for j in created]
                self.writer.call(lambda s, rows=rows: [storeops.insert_job(s.conn, r)
                                                       for r in rows])
                state.register(created)
            state.accept(batch_id, by_consumer)
        if pending:
            self.notes.append(f"re-read {len(pending)} acknowledged call batch(es) not yet settled")

    # --- serving -------------------------------------------------------------------------------

    async def serve(
        self, on_ready: Callable[[str], None] = lambda url: None,
        stop: asyncio.Event | None = None,
    ) -> None:
        """Serve until SIGTERM/SIGINT, or until ``stop`` is set (in-process use, no signals)."""
        app = make_app(self)
        guard = self.guard = ConnectionGuard(self.settings.request_header_timeout_s,
                                             self.settings.max_connections_per_client)
        app.middlewares.insert(0, guard.middleware)  # tells the guard of each request
        runner = GuardedRunner(app, guard, access_log=None, shutdown_timeout=10.0)
        await runner.setup()
        settings = self.settings
        self.local_url = ""  # where the node's users (and launched jobs) reach it as themselves
        try:
            if settings.socket:
                await unix_site(runner, Path(settings.socket), settings.socket_mode_bits)
                self.url = self.local_url = f"unix:{settings.socket}"
            else:
                site = web.TCPSite(runner, settings.host, settings.port)
                await site.start()
                host, port = runner.addresses[0][:2]
                self.url = f"http://{url_host(host)}:{port}"
                if settings.local_socket:  # beside TCP: launches as the peer's uid
                    await unix_site(runner, Path(settings.local_socket),
                                     settings.socket_mode_bits)
                    self.local_url = f"unix:{settings.local_socket}"
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
            await self.scheduler.start(self.local_url or self.url)
            await self.scraper.start()
            on_ready(self.url)
            await stop.wait()
        finally:
            log.info("shutting down: finishing requests, then the final flush")
            await self.scraper.stop()
            await self.scheduler.stop()  # launches no more; launched jobs run on
            await runner.cleanup()  # stop accepting; in-flight requests finish
            await asyncio.to_thread(self.loop.stop)

    def close(self) -> None:
        self.reader.close()
        self.writer.close()
        for log_ in self.interval_logs:
            log_.close()

    async def read(self, fn: Callable[[Store], T]) -> T:
        return await self.reader.run(fn)

    # --- health --------------------------------------------------------------------------------

    def device_views(self) -> list[dict[str, Any]]:
        now_s = self.clock.time()
        with self.state.lock:
            status = dict(self.state.devices)
        out = []
        for d in self.sampler.devices():
            st = status.get(d.device_id)
            out.append({
                "device_id": d.device_id,
                "class": d.device_class.value,
                "name": d.name,
                "method": d.method,
                "provenance": d.provenance.value,
                "state": d.state.value,
                "detail": d.detail,
                "uuid": d.uuid,
                # GPUs: the idle baseline in use and where it came from (learned-from-counter,
                # configured, lowest-power-reading, unknown)
                "idle_power_w": d.idle_power_w,
                "idle_source": d.idle_source or None,
                # real seconds, also when replaying faster than real time
                "last_sample_age_s": (now_s - st.last_end_s) / self.speed if st else None,
                "power_w": st.power_w if st else None,
            })
        return out

    def _sampling_status(self) -> tuple[bool, str]:
        """(healthy, status): unhealthy when the sampling thread died or has not turned for
        ``stuck_after_s`` (a hung driver call)."""
        loop = self.loop
        if not loop.alive():
            return False, "stopped"
        tick = loop.last_tick_mono
        if tick is None or time.monotonic() - tick > self.stuck_after_s:
            return False, "stuck"
        if not loop.sampling:
            return True, "replay finished" if self.end_s is not None else "not sampling"
        return True, "sampling"

    def health_view(self) -> dict[str, Any]:
        ok, status = self._sampling_status()
        devices = [{k: d[k] for k in ("device_id", "state", "last_sample_age_s")}
                   for d in self.device_views()]
        view = {"ok": ok, "status": status, "node": self.node,
                "collector_errors": self.sampler.errors,
                "pending_calls": self.state.pending_calls(),
                "calls_apportioned": self.state.apportioned(), "devices": devices,
                "connections": self._connection_view()}
        if self.scrape_targets:
            view["scrape"] = self.scraper.view()
        return view

    def _connection_view(self) -> dict[str, int]:
        guard = self.guard
        if guard is None:
            return {}
        return {"open": sum(guard.per_client.values()), "closed_idle": guard.closed_idle,
                "refused": guard.refused}

    def _metric_health(self) -> Health:
        devices = self.device_views()
        return Health(
            up=self._sampling_status()[0],
            collector_errors=self.sampler.errors,
            device_power_w={d["device_id"]: d["power_w"] for d in devices
                            if d["power_w"] is not None},
            device_age_s={d["device_id"]: d["last_sample_age_s"] for d in devices
                          if d["last_sample_age_s"] is not None},
        )


def build_daemon(settings: Settings, *, intensity: IntensitySource, **options: Any) -> Daemon:
    """A daemon fully wired and opened (store, collectors, sampler, state, intake services,
    scheduler, scraper), ready to :meth:`Daemon.serve`; closed again if opening fails.
    ``options``: ``Daemon``'s keyword arguments (replay speed and GPUs, node, cadences, clock)."""
    daemon = Daemon(settings, intensity=intensity, **options)
    try:
        daemon.open()
    except BaseException:
        daemon.close()
        raise
    return daemon


def run_daemon(
    settings: Settings,
    *,
    intensity: IntensitySource,
    replay_speed: float = 1.0,
    replay_gpus: int = 1,
    on_ready: Callable[[str], None] = lambda url: None,
    on_note: Callable[[str], None] = lambda note: None,
) -> None:
    """Run until SIGTERM/SIGINT. Raises CarbonwatchError (a ConfigError for a refused bind)."""
    daemon = build_daemon(settings, intensity=intensity, replay_speed=replay_speed,
                          replay_gpus=replay_gpus)
    try:
        # Under ingestion the daemon holds ~10^5-10^6 call spans awaiting settlement; with the
        # default thresholds the cyclic GC rescans them all dozens of times a second (~10 % of
        # the CPU at 100k calls/s). Spans hold no cycles, so collect far less often, and move
        # start-up's objects (modules, tables) out of the collector's sight.
        gc.collect()
        gc.freeze()
        gc.set_threshold(50_000, 20, 100)
        for note in daemon.notes:
            on_note(note)
        asyncio.run(daemon.serve(on_ready))
    finally:
        daemon.close()


