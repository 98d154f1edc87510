"""Build the daemon from settings, part by part, in the order each part needs the ones before it
(the ``config -> server`` half of uvicorn's shape: nothing is wired after the daemon exists).

1. Refusals that need nothing opened: a non-loopback bind without a token, bad scrape targets.
2. The store: its files kept private, the writer thread (opens and migrates it), the reader.
3. Collectors: live (measuring on ``SteadyClock``, labelled in wall time, with the process
   scanner) or a replayed trace (on a ``ReplayClock`` that resumes where the store left off).
   Either way this fixes the clock every later part reads.
4. Running jobs and the shared state; the interval logs; the sampler; the provenance every new
   job row carries.
5. What the previous run left (``reload.py``): running jobs, unsettled call batches, counters.
6. The devices' models recorded (for embodied carbon); the sampling loop (not started).
7. The connection guard, the health views, the Prometheus collector that reads them.
8. The deferred-job scheduler, the scraper, the job and call intake services.

:class:`~carbonwatch.daemon.server.Daemon` only stores the parts; :meth:`Daemon.serve` starts
them. If any step fails, what the steps before it opened is closed again, in reverse order."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import socket
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psutil

from carbonwatch.clock import Clock, SteadyClock, SystemClock
from carbonwatch.collectors.base import Collector
from carbonwatch.collectors.gpushare import GpuOptions, gpu_options
from carbonwatch.config import Settings
from carbonwatch.daemon import health as health_
from carbonwatch.daemon import hooks, storeops
from carbonwatch.daemon.bind import check_bind
from carbonwatch.daemon.connguard import ConnectionGuard
from carbonwatch.daemon.intake import CallIntake, JobIntake
from carbonwatch.daemon.live_jobs import LiveJob, LiveJobs
from carbonwatch.daemon.metrics import DaemonCollector, LabelCap, MetricTotals
from carbonwatch.daemon.reader import Reader, private_store
from carbonwatch.daemon.reload import reload_previous_run
from carbonwatch.daemon.sampling import SamplingLoop, WallTimeLabels
from carbonwatch.daemon.scraping import Scraper, parse_targets
from carbonwatch.daemon.server import Daemon
from carbonwatch.daemon.state import DaemonState
from carbonwatch.daemon.trace_clock import ReplayClock
from carbonwatch.daemon.writer import Writer
from carbonwatch.errors import ConfigError, StoreError
from carbonwatch.grid.types import IntensitySource
from carbonwatch.pricing import Pricing
from carbonwatch.sampler import Instant, Sampler

if TYPE_CHECKING:
    from carbonwatch.collectors.processes import ProcessScanner

REPLAY_PREFIX = "replay:"


@dataclass(frozen=True)
class Sensing:
    """What the collectors step yields: the collectors and the clocks every later part uses."""

    collectors: list[Collector]
    clock: Clock  # wall time (trace time when replaying): what intervals and rows are labelled in
    steady: Clock  # what the collectors measure on: a wall-clock step cannot move it
    scanner: ProcessScanner | None  # live only: replayed pids belong to the recording machine
    end_s: float | None  # replay: where the trace ends and sampling stops
    resume_key: str  # meta key: where the written energy ends
    notes: list[str]
    instant: Instant | None = None  # replay: a sampling round is one instant of trace time


@dataclass(frozen=True)
class JobRows:
    """The columns the daemon's new jobs rows start with (intake, scraper, reload)."""

    pricing: Pricing
    provenance: dict[str, Any]

    def accounting(self) -> dict[str, Any]:
        """Columns every new job row starts with."""
        return {"cost": 0.0 if self.pricing.known else None, "currency": self.pricing.currency,
                "provenance": self.provenance}

    def service_row(self, job: LiveJob) -> dict[str, Any]:
        """The jobs row of an inference service registered by its first call."""
        return {"id": job.id, "name": job.name, "kind": job.kind, "model": job.model,
                "command": None, "pids": sorted(job.pids), "tags": {"auto": True},
                "identity": None, "source": job.source, "started_s": job.started_s,
                "owner_uid": job.owner_uid, **self.accounting()}


def build_daemon(
    settings: Settings,
    *,
    intensity: IntensitySource,
    replay_speed: float = 1.0,
    replay_gpus: int = 1,
    node: str | None = None,
    flush_every_s: float = 1.0,
    housekeeping_every_s: float = 5.0,
    clock: Clock | None = None,
    stuck_after_s: float | None = None,
) -> Daemon:
    """A daemon fully wired and opened, ready to :meth:`Daemon.serve`. ``clock``: the wall clock
    (a replay replaces it with trace time); ``stuck_after_s``: real seconds of sampler silence
    before ``/healthz`` says stuck (default from the counter interval)."""
    check_bind(settings)
    # Refused at start, before anything opens: a bad target is a configuration error.
    scrape_targets = parse_targets(settings.scrape)
    replay = settings.backend.startswith(REPLAY_PREFIX)
    speed = replay_speed if replay else 1.0
    pricing = Pricing.from_settings(settings)
    notes = private_store(settings.db_path)
    with contextlib.ExitStack() as opened:
        writer = Writer(settings.db_path)
        opened.callback(writer.close)
        writer.start()
        reader = Reader(settings.db_path)
        opened.callback(reader.close)
        try:
            if replay:
                sensing = _replay_collectors(settings, writer, speed, replay_gpus)
            else:
                sensing = _live_collectors(settings, writer, clock or SystemClock())
            opened.callback(_close_all, sensing.collectors)
            clock = sensing.clock
            live_jobs = LiveJobs(track_trees=sensing.scanner is not None)
            state = DaemonState(pricing=pricing, live_jobs=live_jobs, speed=speed,
                                scanner=sensing.scanner,
                                pid_exists=psutil.pid_exists if sensing.scanner is not None
                                else None, max_auto_jobs=settings.max_auto_jobs)
            interval_logs = tuple(hooks.sinks_for(settings.extra))
            opened.callback(_close_all, interval_logs)
            sampler = Sampler(
                sensing.collectors, intensity=intensity, owners=state.owners,
                sinks=[state.on_interval, *interval_logs], idle_policy=settings.idle_policy,
                power_interval_s=settings.power_interval_s,
                counter_interval_s=settings.counter_interval_s, instant=sensing.instant,
            )
            rows = JobRows(pricing, _provenance(sampler, intensity, pricing, clock))
            models = LabelCap(settings.max_label_values)
            totals = MetricTotals(models)
            notes += sensing.notes + reload_previous_run(
                writer=writer, state=state, models=models, totals=totals, clock=clock,
                service_row=rows.service_row)
            _record_devices(writer, sampler, clock)
        except StoreError as exc:  # e.g. a corrupt page met while reloading
            raise StoreError(f"cannot start on the store {settings.db_path}: {exc}. "
                             "If the file is damaged, restore a backup or move it aside") from None
        loop = SamplingLoop(
            sampler=sampler, state=state, writer=writer, totals=totals, clock=clock,
            steady=sensing.steady, speed=speed, end_s=sensing.end_s, flush_every_s=flush_every_s,
            housekeeping_every_s=housekeeping_every_s, raw_log_max=settings.raw_call_log_max,
            resume_key=sensing.resume_key,
        )
        node = node or settings.node or socket.gethostname()
        guard = ConnectionGuard(settings.request_header_timeout_s,
                                settings.max_connections_per_client)
        health = health_.HealthViews(
            node=node, clock=clock, speed=speed, replay=sensing.end_s is not None, state=state,
            sampler=sampler, loop=loop, guard=guard, scrape_targets=scrape_targets,
            stuck_after_s=stuck_after_s if stuck_after_s is not None
            else health_.stuck_after_s(settings.counter_interval_s, speed),
        )
        prometheus = DaemonCollector(
            totals, health.gauges, node, pricing.currency if pricing.known else None,
            now=clock.time, retention_s=settings.metrics_job_retention_s,
        )
        from carbonwatch.scheduler.service import SchedulerService

        # Started in serve(), once the URL its launched wrappers report to is known.
        scheduler = SchedulerService(settings, read=reader.run, write=writer.run)
        scraper = Scraper(scrape_targets, settings.scrape_interval_s, state=state, writer=writer,
                          clock=clock, speed=speed, service_row=rows.service_row)
        jobs = JobIntake(state=state, writer=writer, loop=loop, models=models, clock=clock,
                         accounting=rows.accounting, read=reader.run,
                         max_jobs_per_user=settings.max_running_jobs_per_user)
        calls = CallIntake(state=state, writer=writer, models=models, totals=totals, clock=clock,
                           service_row=rows.service_row,
                           max_auto_jobs=settings.max_auto_jobs_per_request)
        daemon = Daemon(
            settings=settings, pricing=pricing, node=node, notes=tuple(notes), clock=clock,
            writer=writer, reader=reader, models=models, totals=totals, state=state,
            sampler=sampler, loop=loop, interval_logs=interval_logs, guard=guard, health=health,
            prometheus=prometheus, scheduler=scheduler, scraper=scraper, jobs=jobs, calls=calls,
        )
        opened.pop_all()  # built: from here the daemon's close() closes them
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
    """Build, serve until SIGTERM/SIGINT, close. Raises CarbonwatchError (a ConfigError for a
    refused bind)."""
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


def _close_all(things: Any) -> None:
    """Close each (a failed build): one that fails to close does not keep the rest open."""
    for thing in things:
        with contextlib.suppress(Exception):
            thing.close()


def _gpu_options(settings: Settings, writer: Writer, clock: Clock) -> GpuOptions:
    """Idle baselines learned on earlier runs (by GPU UUID) in, newly learned ones out."""
    from carbonwatch.store.gpu_idle import load_gpu_idle, save_gpu_idle

    def learned(uuid: str, idle_w: float, learned_s: float) -> None:
        now_s = clock.time()
        writer.submit_idle(lambda s: save_gpu_idle(s.conn, uuid, idle_w, learned_s, now_s))

    stored = writer.call(lambda s: load_gpu_idle(s.conn))
    return gpu_options(settings, stored, learned)


def _live_collectors(settings: Settings, writer: Writer, clock: Clock) -> Sensing:
    from carbonwatch.collectors.detect import build_collectors, default_process_scanner

    # Collectors measure on a clock the wall clock's steps cannot move; their intervals are
    # labelled in wall time (see WallTimeLabels).
    steady = SteadyClock(clock)
    # CPU and RAM shares come from one scanner; the state tells it the jobs' trees. Reading only
    # those trees (and new pids) keeps the 1 Hz scan's cost flat in the number of processes on
    # the node; the rest of its CPU is /proc/stat's busy time.
    scanner = default_process_scanner(watched_only=True)
    collectors, notes = build_collectors(
        settings.backend, rapl_root=settings.rapl_root, clock=steady, processes=scanner,
        gpu_options=_gpu_options(settings, writer, clock),
    )
    labelled: list[Collector] = [WallTimeLabels(c, steady) for c in collectors]
    return Sensing(labelled, clock, steady, scanner, None, "sampled_until_s", notes)


def _replay_collectors(settings: Settings, writer: Writer, speed: float, gpus: int) -> Sensing:
    """The trace's GPU (``gpus`` copies), served in trace time at ``speed``.

    Built here rather than by ``detect`` because the daemon resumes a replay where the store left
    off: trace time must equal clock time, not start again at the clock's start."""
    from carbonwatch.collectors.gpu import GpuCollector
    from carbonwatch.collectors.trace import load_trace
    from carbonwatch.collectors.trace_gpu import ReplayGpuBackend, read_latency

    trace_dir = settings.backend[len(REPLAY_PREFIX):]
    if not trace_dir:
        raise ConfigError("backend 'replay:DIR' needs a trace directory after 'replay:'")
    trace = load_trace(trace_dir)
    resume_key = f"replay_until_s:{Path(trace_dir).resolve()}"
    until_s = writer.call(lambda s: storeops.get_meta(s.conn, resume_key))
    start_s, notes = trace.start_s, []
    if isinstance(until_s, int | float) and trace.start_s < until_s:
        start_s = min(float(until_s), trace.end_s)
        notes.append(f"replay: resuming at trace time {start_s:.3f} "
                     f"({start_s - trace.start_s:.1f} s into the trace)")
    clock = ReplayClock(start_s, speed)  # trace time never steps: it is its own steady clock
    faults = hooks.replay_faults(settings.extra.get("replay_faults"), trace.start_s)
    backend = ReplayGpuBackend(trace, clock, devices=gpus, faults=faults,
                               latency=read_latency(settings.extra.get("replay_latency")))
    notes.append(
        f"GPU: replaying {trace.directory} ({trace.gpu_name} x{gpus}, "
        f"{trace.end_s - trace.start_s:.1f} s of trace at {speed:g}x); CPU and RAM not measured"
    )
    collectors: list[Collector] = [
        GpuCollector(backend, clock=clock, options=_gpu_options(settings, writer, clock))]
    return Sensing(collectors, clock, clock, None, trace.end_s, resume_key, notes,
                   instant=clock.held)


def _provenance(
    sampler: Sampler, intensity: IntensitySource, pricing: Pricing, clock: Clock,
) -> dict[str, Any]:
    point = intensity.intensity_at(clock.time())
    return {
        "energy": {d.device_id: f"{d.provenance.value} ({d.method})" for d in sampler.devices()},
        "carbon": {"intensity": point.provider, "kind": point.kind, "zone": point.zone,
                   "pue": pricing.pue},
        "cost": (f"energy at {pricing.price_per_kwh} {pricing.currency}/kWh" if pricing.known
                 else "unknown: no energy_price_per_kwh configured"),
        "attribution": "the job's share of each device's active energy per interval (GPU: "
        "all of it when alone, else by fitted marginal power x SM activity, or SM share; "
        "CPU time; RSS); idle energy reported separately, the GPU idle baseline learned "
        "from its counter",
    }


def _record_devices(writer: Writer, sampler: Sampler, clock: Clock) -> None:
    from carbonwatch.embodied import record_devices  # the models embodied carbon needs

    devices, seen_s = sampler.devices(), clock.time()
    writer.call(lambda s: record_devices(s.conn, devices, seen_s))
