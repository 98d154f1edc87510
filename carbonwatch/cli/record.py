"""``carbonwatch record DIR``: record GPUs into the trace format ``carbonwatch replay`` reads."""

from __future__ import annotations

import math
import time
from pathlib import Path

import click

from carbonwatch.cli.common import handle_errors
from carbonwatch.clock import SystemClock
from carbonwatch.collectors.gpu import GpuBackend
from carbonwatch.collectors.gpurefs import GpuRef, resolve_visible_devices
from carbonwatch.errors import DeviceError, InputError


@click.command("record")
@click.argument("out_dir", type=click.Path(file_okay=False))
@click.option(
    "--seconds", type=float, default=None, help="How long to record (default: until Ctrl-C)."
)
@click.option(
    "--gpus",
    default=None,
    help="GPUs to record, comma-separated: NVML indices (as nvidia-smi numbers them), GPU or MIG "
    "UUIDs (default: every GPU).",
)
@click.option(
    "--backend",
    default="nvml",
    show_default=True,
    help="Where readings come from: nvml, or replay:DIR to re-record a trace.",
)
@handle_errors
def record_cmd(out_dir: str, seconds: float | None, gpus: str | None, backend: str) -> None:
    """Record GPUs into OUT_DIR: power every 10 ms, the energy counter every 100 ms and per-process
    utilisation every 0.5 s, with process launch/exit events (the replay trace format). One GPU is
    written to OUT_DIR itself, several to OUT_DIR/gpu<index>.

    \b
    Example:
      carbonwatch record traces/phased --seconds 60 --gpus 0
      carbonwatch replay traces/phased
    """
    from carbonwatch.collectors.recorder import Recorder, RecorderGroup, record

    if seconds is not None and not seconds > 0:
        raise click.BadParameter("must be > 0", param_hint="--seconds")
    clock = SystemClock()
    source = _source(backend, clock)
    recorders: list[Recorder] = []
    try:
        chosen = _choose(source, gpus)
        root = Path(out_dir)
        targets = {k: root if len(chosen) == 1 else root / f"gpu{i}" for k, i in chosen}
        for target in targets.values():
            if (target / "meta.json").exists() or (target / "power.csv").exists():
                raise InputError(f"{target} already holds a trace; record into a new directory")
        meta = {"recorded_with": "carbonwatch record", "source": backend}
        for k, target in targets.items():
            recorders.append(Recorder(source, target, clock, device_index=k, meta=meta))
        group = RecorderGroup(recorders)
        click.echo(
            f"carbonwatch: recording {len(recorders)} GPU(s) into {root}"
            + (f" for {seconds:g} s" if seconds else " until Ctrl-C"),
            err=True,
        )
        try:
            record(group, clock, seconds if seconds else math.inf, sleep=time.sleep)
        except KeyboardInterrupt:
            group.poll_power()  # a last reading of each, as a timed recording ends
            group.poll_energy()
            group.poll_processes()
    finally:
        for r in recorders:
            r.close()
        source.close()
    _summarise(list(targets.values()))


def _source(backend: str, clock: SystemClock) -> GpuBackend:
    if backend == "nvml":
        try:
            from carbonwatch.collectors.nvml import NvmlBackend
        except ImportError as exc:
            raise DeviceError(f"recording from NVML needs nvidia-ml-py: {exc}") from None
        nvml = NvmlBackend()
        for note in nvml.notes:
            click.echo(f"carbonwatch: {note}", err=True)
        return nvml
    if backend.startswith("replay:") and backend != "replay:":
        from carbonwatch.collectors.trace import load_trace
        from carbonwatch.collectors.trace_gpu import ReplayGpuBackend

        trace = load_trace(backend.removeprefix("replay:"))
        return ReplayGpuBackend(trace, clock, start_at_s=clock.time())
    raise click.BadParameter(f"{backend!r}: expected nvml or replay:DIR", param_hint="--backend")


def _choose(source: GpuBackend, gpus: str | None) -> list[tuple[int, int]]:
    """(backend position, physical index) of each GPU to record, lost GPUs left out."""
    devices = [source.device(k) for k in range(source.device_count())]
    live = {k: d for k, d in enumerate(devices) if not getattr(d, "lost", False)}
    if not live:
        raise DeviceError("no GPU to record" + (" (every GPU is lost)" if devices else ""))
    refs = [GpuRef(d.index, d.uuid) for d in live.values()]
    parents: dict[str, str] = getattr(source, "mig_parents", dict)()
    position = {d.index: k for k, d in live.items()}
    if gpus is None:
        return [(k, d.index) for k, d in live.items()]
    chosen: list[tuple[int, int]] = []
    for entry in (e.strip() for e in gpus.split(",")):
        # each entry alone, so an unknown one is an error here, not a silent stop as in CUDA
        found = resolve_visible_devices(entry, refs, parents) if entry else []
        if not found:
            known = ", ".join(f"{r.index} {r.uuid}" for r in refs)
            raise click.BadParameter(f"no GPU {entry!r} (GPUs: {known})", param_hint="--gpus")
        pair = (position[found[0].index], found[0].index)
        if pair not in chosen:
            chosen.append(pair)
    return chosen


def _summarise(targets: list[Path]) -> None:
    from carbonwatch.collectors.trace import load_trace

    for target in targets:
        trace = load_trace(target)  # what `carbonwatch replay` will read
        counter = (
            f"energy counter {trace.energy_j:.1f} J" if trace.has_counter else "no energy counter"
        )
        click.echo(
            f"{target}: {trace.gpu_name}, {trace.end_s - trace.start_s:.1f} s, "
            f"{len(trace.power_t_s)} power rows, {counter}, "
            f"{len(trace.pids)} process(es); replay with: carbonwatch replay {target}"
        )
