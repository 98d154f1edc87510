"""Serve a recorded GPU trace through the :class:`~carbonwatch.collectors.gpu.GpuDevice` protocol.

The trace format is :mod:`carbonwatch.collectors.trace` (what
:mod:`carbonwatch.collectors.recorder` writes). All ``t_s`` are Unix seconds. Readings are step
functions of time, like the real device: at time ``now`` a read returns the last row at or before
``now`` (the first row before the trace starts).
The backend reads time from an injectable clock; :func:`drive` walks a ManualClock through a trace
calling a collector the way the daemon's sampling loop does.
"""

from __future__ import annotations

import bisect
import itertools
import math
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from carbonwatch.clock import Clock, ManualClock
from carbonwatch.collectors.base import Collector
from carbonwatch.collectors.gpu import ProcessSample
from carbonwatch.collectors.processes import ProcessSnapshot, ProcInfo
from carbonwatch.collectors.trace import Call, Trace
from carbonwatch.errors import DeviceLost, DeviceTimeout, InputError, NotSupported
from carbonwatch.model import EnergyInterval

# --- fault injection -----------------------------------------------------------------------------


class FaultKind(StrEnum):
    LOST = "lost"  # from start_s on, every read raises DeviceLost (end_s is ignored)
    COUNTER_UNSUPPORTED = "counter-unsupported"  # total_energy_mj raises NotSupported
    COUNTER_RESET = "counter-reset"  # at start_s the counter restarts from 0 (end_s is ignored)
    POWER_ZERO = "power-zero"  # power_mw returns 0
    POWER_ABSURD = "power-absurd"  # power_mw returns 0xFFFFFFFF mW, NVML's junk value
    TIMEOUT = "timeout"  # reads named by ``reads`` raise DeviceTimeout


@dataclass(frozen=True)
class Fault:
    """One injected fault on replayed device ``device``, active for clock times in [start_s, end_s).

    ``reads`` limits TIMEOUT to some reads: any of "counter", "power", "process" (default all)."""

    kind: FaultKind
    device: int = 0
    start_s: float = -math.inf
    end_s: float = math.inf
    reads: frozenset[str] = frozenset({"counter", "power", "process"})

    def active(self, now_s: float) -> bool:
        if self.kind in (FaultKind.LOST, FaultKind.COUNTER_RESET):
            return now_s >= self.start_s
        return self.start_s <= now_s < self.end_s


ABSURD_POWER_MW = 0xFFFFFFFF


@dataclass(frozen=True)
class ReadLatency:
    """How long each kind of read takes on a real device, imposed by the replay on every read.

    A replay answers from lists in microseconds; a real driver does not. ``h200`` holds what was
    measured on an H200 (``../shared/traces/README.md``, issue 16), each the whole call from
    Python through pynvml: the energy counter 3.8 ms, power 1.2 us, utilisation 1.4 us, the
    process lists ~10 us. So a replayed read lasts at least that long in all, its own work
    included (:meth:`finish`), not that long on top of its own work. A read of 100 us or more
    sleeps (the real call blocks in the driver with the GIL released, as ctypes does); a shorter
    one spins, since ``time.sleep`` cannot wait less than ~50 us (spinning holds the GIL:
    slightly dearer than the real read)."""

    counter_s: float = 0.0
    power_s: float = 0.0
    util_s: float = 0.0
    process_s: float = 0.0

    def finish(self, wait_s: float, started: float) -> None:
        """Hold a read begun at ``started`` (``time.perf_counter()``) until it has lasted
        ``wait_s`` (one of this profile's fields)."""
        if wait_s <= 0.0:
            return
        until = started + wait_s
        if wait_s >= 100e-6:
            left_s = until - time.perf_counter()
            if left_s > 0:
                time.sleep(left_s)
            return
        while time.perf_counter() < until:
            pass


READ_LATENCIES: dict[str, ReadLatency] = {
    "none": ReadLatency(),
    "h200": ReadLatency(counter_s=3.8e-3, power_s=1.2e-6, util_s=1.4e-6, process_s=10e-6),
}


def read_latency(name: str | None) -> ReadLatency:
    """The named latency profile (``none``, ``h200``); InputError naming the choices otherwise."""
    if name is None or name == "":
        return READ_LATENCIES["none"]
    try:
        return READ_LATENCIES[name]
    except KeyError:
        raise InputError(
            f"replay latency {name!r}: expected one of {', '.join(READ_LATENCIES)}"
        ) from None


# --- the backend ---------------------------------------------------------------------------------


class ReplayGpuDevice:
    """One replayed GPU: the trace's readings at the clock's time, shifted by ``offset_s``."""

    def __init__(
        self,
        trace: Trace,
        clock: Clock,
        index: int,
        offset_s: float,
        faults: Sequence[Fault],
        latency: ReadLatency | None = None,
    ) -> None:
        self._latency = latency or ReadLatency()
        self._trace = trace
        self._clock = clock
        self._index = index
        self._offset_s = offset_s
        self._faults = [f for f in faults if f.device == index]
        self._windows = trace.presence_windows()
        self._util_t_s = [r.t_s for r in trace.process_util]
        # The newest sample time among rows [0, i]: rows before the first above ``since`` hold no
        # newer sample, so a read skips them (the real call returns only new samples; walking the
        # whole recorded past made a long replay dearer every second).
        self._util_newest_us = list(itertools.accumulate(
            (r.sample_ts_us for r in trace.process_util), max))

    @property
    def index(self) -> int:
        return self._index

    @property
    def uuid(self) -> str:
        # The recorded GPU's own UUID for the first copy (so its learned idle baseline applies);
        # made-up ones, distinct per copy, otherwise.
        recorded = self._trace.meta.get("uuid")
        if isinstance(recorded, str) and recorded and self._index == 0:
            return recorded
        return f"GPU-00000000-0000-0000-0000-{self._index:012d}"

    @property
    def name(self) -> str:
        return self._trace.gpu_name

    def _now(self, read: str) -> float:
        """Trace time for this read, after raising whatever fault is active."""
        now_s = self._clock.time()
        for f in self._faults:
            if not f.active(now_s):
                continue
            if f.kind is FaultKind.LOST:
                raise DeviceLost(f"replayed GPU {self._index} lost at {f.start_s}")
            if f.kind is FaultKind.TIMEOUT and read in f.reads:
                raise DeviceTimeout(f"replayed GPU {self._index}: {read} read timed out")
        return now_s - self._offset_s

    def _active(self, kind: FaultKind, now_s: float) -> Fault | None:
        if not self._faults:
            return None  # the common case, polled 10 times a second per device: no generator
        return next((f for f in self._faults if f.kind is kind and f.active(now_s)), None)

    def total_energy_mj(self) -> int:
        started = time.perf_counter()
        t_s = self._now("counter")
        now_s = t_s + self._offset_s
        if not self._trace.has_counter or self._active(FaultKind.COUNTER_UNSUPPORTED, now_s):
            raise NotSupported(f"replayed GPU {self._index}: energy counter not supported")
        value = _step(self._trace.energy_t_s, self._trace.energy_mj, t_s)
        reset = self._active(FaultKind.COUNTER_RESET, now_s)
        if reset is not None:
            value -= _step(
                self._trace.energy_t_s, self._trace.energy_mj, reset.start_s - self._offset_s
            )
        self._latency.finish(self._latency.counter_s, started)
        return value

    def power_mw(self) -> int:
        started = time.perf_counter()
        t_s = self._now("power")
        now_s = t_s + self._offset_s
        if self._active(FaultKind.POWER_ZERO, now_s):
            value = 0
        elif self._active(FaultKind.POWER_ABSURD, now_s):
            value = ABSURD_POWER_MW
        else:
            value = _step(self._trace.power_t_s, self._trace.power_mw, t_s)
        self._latency.finish(self._latency.power_s, started)
        return value

    def utilization_pct(self) -> float:
        started = time.perf_counter()
        value = _step(self._trace.power_t_s, self._trace.gpu_util_pct, self._now("power"))
        self._latency.finish(self._latency.util_s, started)
        return value

    def process_utilization(self, since_us: int) -> list[ProcessSample]:
        started = time.perf_counter()
        t_s = self._now("process")
        offset_us = round(self._offset_s * 1e6)
        hi = bisect.bisect_right(self._util_t_s, t_s)
        lo = bisect.bisect_right(self._util_newest_us, since_us - offset_us, 0, hi)
        samples = [
            ProcessSample(r.pid, r.sample_ts_us + offset_us, r.sm_pct, r.mem_pct)
            for r in self._trace.process_util[lo:hi]
            if r.sample_ts_us + offset_us > since_us
        ]
        self._latency.finish(self._latency.process_s, started)
        return samples

    def compute_pids(self) -> list[int]:
        started = time.perf_counter()
        t_s = self._now("process")
        pids = sorted(pid for pid, (a, b) in self._windows.items() if a <= t_s < b)
        self._latency.finish(self._latency.process_s, started)
        return pids


class ReplayGpuBackend:
    """``devices`` copies of one trace, served at ``clock`` time (a benchmark can fake N GPUs).

    With ``start_at_s`` the trace's first energy row is served at that clock time (so a daemon on a
    system clock can replay a trace live); by default trace time is clock time. ``latency``: how
    long each read takes (see :class:`ReadLatency`); none by default."""

    def __init__(
        self,
        trace: Trace,
        clock: Clock,
        devices: int = 1,
        faults: Sequence[Fault] = (),
        start_at_s: float | None = None,
        latency: ReadLatency | None = None,
    ) -> None:
        if devices < 1:
            raise ValueError("devices must be >= 1")
        offset_s = 0.0 if start_at_s is None else start_at_s - trace.start_s
        self.trace = trace
        self.clock = clock
        self._devices = [
            ReplayGpuDevice(trace, clock, i, offset_s, faults, latency) for i in range(devices)
        ]

    def device_count(self) -> int:
        return len(self._devices)

    def device(self, index: int) -> ReplayGpuDevice:
        return self._devices[index]

    @property
    def calls(self) -> list[Call]:
        return self.trace.calls

    @property
    def start_s(self) -> float:
        return self.trace.start_s

    @property
    def end_s(self) -> float:
        return self.trace.end_s

    def close(self) -> None:
        pass


def _step(times: Sequence[float], values: Sequence[Any], t_s: float) -> Any:
    """The last value at or before t_s (the first value before the series starts)."""
    i = bisect.bisect_right(times, t_s) - 1
    return values[max(i, 0)]


# --- driving a collector through time ------------------------------------------------------------


def drive(
    collector: Collector,
    clock: ManualClock,
    start_s: float,
    end_s: float,
    power_interval_s: float = 0.1,
    counter_interval_s: float = 1.0,
) -> Iterator[EnergyInterval]:
    """Advance ``clock`` from start_s to end_s, calling ``poll`` every power_interval_s and
    ``collect`` every counter_interval_s (poll first when both fall due), then a final ``collect``
    at end_s.

    Yields every interval the collector closes. Tick times are computed as start + k * step, not
    accumulated, so a long replay does not drift."""
    if power_interval_s <= 0 or counter_interval_s <= 0:
        raise ValueError("intervals must be positive")
    clock.set(start_s)
    collector.poll(start_s)
    yield from collector.collect(start_s)
    k_power, k_counter = 1, 1
    while True:
        t_power = start_s + k_power * power_interval_s
        t_counter = start_s + k_counter * counter_interval_s
        t = min(t_power, t_counter)
        if t >= end_s:
            break
        clock.set(t)
        if t_power <= t:
            collector.poll(t)
            k_power += 1
        if t_counter <= t:
            yield from collector.collect(t)
            k_counter += 1
    clock.set(end_s)
    collector.poll(end_s)
    yield from collector.collect(end_s)


# --- replayed process CPU time -------------------------------------------------------------------


class ReplayProcessSource:
    """A :class:`~carbonwatch.collectors.processes.ProcessSource` over process_cpu.csv.

    At ``now_s`` each traced pid is charged its last recorded user+system seconds at or before now;
    every traced pid is keyed by pid in shares. ``start_at_s`` shifts time as in
    :class:`ReplayGpuBackend`."""

    def __init__(self, trace: Trace, start_at_s: float | None = None) -> None:
        self._offset_s = 0.0 if start_at_s is None else start_at_s - trace.start_s
        self._windows = trace.pid_windows()
        self._rows: dict[int, tuple[list[float], list[float]]] = {}
        for r in trace.process_cpu:
            times, cpu = self._rows.setdefault(r.pid, ([], []))
            times.append(r.t_s)
            cpu.append(r.user_s + r.system_s)
        self._last: ProcessSnapshot | None = None

    def snapshot(self, now_s: float) -> ProcessSnapshot:
        if self._last is not None and self._last.t_s == now_s:
            return self._last
        t_s = now_s - self._offset_s
        procs = {}
        for pid, (times, cpu) in self._rows.items():
            if not times or times[0] > t_s:
                continue
            launch_s, exit_s = self._windows.get(pid, (times[0], math.inf))
            procs[pid] = ProcInfo(
                ppid=0,
                create_time_s=launch_s if math.isfinite(launch_s) else times[0],
                cpu_s=_step(times, cpu, t_s),
                rss_bytes=0,
                alive=t_s < exit_s,
            )
        self._last = ProcessSnapshot(t_s=now_s, procs=procs)
        return self._last
