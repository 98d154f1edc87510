"""Choose the collectors for this machine, by backend name (uvicorn-style, with "auto").

=============  ==========================================================================
backend        collectors
=============  ==========================================================================
auto           NVML GPUs if NVML initialises; RAPL if readable, else the TDP model; RAM model
               unless RAPL has DRAM domains
none           CPU and RAM only (as in auto)
nvml           as auto, but a missing NVML is an error
replay:DIR     the GPU of the trace in DIR only, replayed from the clock's current time
=============  ==========================================================================

Every fallback taken is explained in the returned notes, for the daemon's log and ``/status``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from carbonwatch.clock import Clock, SystemClock
from carbonwatch.collectors.base import Collector
from carbonwatch.collectors.cpu_model import TdpCpuCollector
from carbonwatch.collectors.gpu import GpuCollector
from carbonwatch.collectors.gpushare import GpuOptions
from carbonwatch.collectors.processes import ProcessScanner, ProcessSource
from carbonwatch.collectors.procfs import ProcfsIterator
from carbonwatch.collectors.ram import RamModelCollector
from carbonwatch.collectors.rapl import RaplCollector
from carbonwatch.errors import ConfigError, DeviceError, NotSupported
from carbonwatch.model import DeviceClass

BACKENDS = ("auto", "none", "nvml", "replay:DIR")


def build_collectors(
    backend: str = "auto",
    rapl_root: str | Path = "/sys/class/powercap",
    clock: Clock | None = None,
    processes: ProcessSource | None = None,
    gpu_options: GpuOptions | None = None,
) -> tuple[list[Collector], list[str]]:
    """Collectors for ``backend`` and notes on what was chosen and why.

    ``processes`` (default: one :class:`ProcessScanner` shared by the CPU and RAM collectors, keying
    every pid so the attribution layer can map pids to jobs) gives their per-process shares.
    Raises ConfigError for an unknown backend and DeviceError when ``nvml`` is required but
    unavailable. ``gpu_options`` (idle baseline, share window) go to the GPU collector."""
    clock = clock or SystemClock()
    notes: list[str] = []
    if backend.startswith("replay:"):
        trace_dir = backend.removeprefix("replay:")
        return [_replay_collector(trace_dir, clock, notes, gpu_options)], notes
    if backend not in ("auto", "none", "nvml"):
        raise ConfigError(f"unknown collector backend {backend!r}; expected one of {BACKENDS}")

    collectors: list[Collector] = []
    if backend in ("auto", "nvml"):
        gpu = _nvml_collector(required=backend == "nvml", notes=notes, options=gpu_options)
        if gpu is not None:
            collectors.append(gpu)
    else:
        notes.append("GPU: not measured (backend 'none')")

    processes = processes if processes is not None else default_process_scanner()
    has_dram = False
    try:
        rapl = RaplCollector(rapl_root, processes=processes)
    except NotSupported as exc:
        cpu = TdpCpuCollector(processes=processes)
        notes.append(f"CPU: {exc}; estimating from TDP and load ({cpu.tdp.detail})")
        collectors.append(cpu)
    else:
        collectors.append(rapl)
        has_dram = any(d.device_class is DeviceClass.RAM for d in rapl.devices())
        notes.append(f"CPU: RAPL at {rapl_root}" + (" (with DRAM)" if has_dram else ""))
    if has_dram:
        notes.append("RAM: measured by RAPL DRAM domains; RAM model not used")
    else:
        ram = RamModelCollector(processes=processes)
        notes.append(f"RAM: estimated, {ram.devices()[0].detail}")
        collectors.append(ram)
    return collectors, notes


def default_process_scanner(watched_only: bool = False) -> ProcessScanner:
    """The 1 Hz scanner: reads /proc/<pid>/stat directly on Linux (about 4x cheaper than psutil's
    iterator, see procfs.py), psutil elsewhere. ``watched_only`` (the daemon, which tells the
    scanner which trees to watch): read only those trees and new pids each second; the rest of the
    machine's CPU comes from /proc/stat, its memory from /proc/meminfo (see ProcessScanner)."""
    if ProcfsIterator.available():
        procfs = ProcfsIterator()  # /proc/stat read by it: one read a tick, shared with the load
        return ProcessScanner(iter_processes=procfs, cpu_times=procfs.cpu_times,
                              watched_only=watched_only)
    return ProcessScanner()


def _nvml_collector(
    required: bool,
    notes: list[str],
    options: GpuOptions | None = None,
    nvml: Any = None,
) -> GpuCollector | None:
    """``nvml``: the pynvml module to use (default nvidia-ml-py's; tests pass a fake)."""
    try:
        from carbonwatch.collectors.nvml import NvmlBackend  # imports pynvml; NVML inits below
    except ImportError as exc:
        if required:
            raise DeviceError(f"backend 'nvml' needs nvidia-ml-py: {exc}") from None
        notes.append(f"GPU: not measured (nvidia-ml-py not installed: {exc})")
        return None
    try:
        backend = NvmlBackend(nvml)
    except DeviceError as exc:
        if required:
            raise DeviceError(f"backend 'nvml' requested but unusable: {exc}") from None
        notes.append(f"GPU: not measured ({exc})")
        return None
    # GPUs skipped (no permission) or lost at start-up: said here, and in `carbonwatch devices`
    notes.extend(f"GPU: {note}" for note in backend.notes)
    if backend.device_count() == 0:
        backend.close()
        why = "NVML reports no GPUs" if not backend.notes else "no GPU could be opened"
        if required:
            raise DeviceError(f"backend 'nvml' requested but {why}")
        notes.append(f"GPU: not measured ({why})")
        return None
    collector = GpuCollector(backend, options=options)
    modes = ", ".join(f"{d.device_id} {d.name} ({d.method})" for d in collector.devices())
    notes.append(f"GPU: NVML, {modes}")
    return collector


def _replay_collector(
    trace_dir: str, clock: Clock, notes: list[str], options: GpuOptions | None = None
) -> GpuCollector:
    from carbonwatch.collectors.trace import load_trace
    from carbonwatch.collectors.trace_gpu import ReplayGpuBackend

    if not trace_dir:
        raise ConfigError("backend 'replay:DIR' needs a trace directory after 'replay:'")
    trace = load_trace(trace_dir)
    backend = ReplayGpuBackend(trace, clock, start_at_s=clock.time())
    notes.append(
        f"GPU: replaying {trace.directory} ({trace.gpu_name}, {trace.end_s - trace.start_s:.1f} s)"
        " from now; CPU and RAM not measured"
    )
    return GpuCollector(backend, options=options)
