"""The GPU seam (vendor-neutral protocols) and the collector that turns GPU readings into intervals.

The cumulative energy counter is the truth: it is read about once a second (``collect``) and each
interval's energy is the counter delta. Power, read about ten times a second (``poll``), only shapes
that energy in time (``segments``) and stands in for the counter where it is missing or reset.
Backends (``nvml``, ``replay``) raise only :mod:`carbonwatch.errors` exceptions.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Protocol

from carbonwatch.clock import Clock
from carbonwatch.collectors import gpuidle
from carbonwatch.collectors.gpuidle import IdleBaseline
from carbonwatch.collectors.gpurefs import GpuRef, gpu_device_id
from carbonwatch.collectors.gpushape import power_pieces as _power_pieces
from carbonwatch.collectors.gpushape import scale_segments as _scale_segments
from carbonwatch.collectors.gpushare import GpuOptions, ShareTracker
from carbonwatch.errors import DeviceError, DeviceLost, DeviceTimeout, NotSupported
from carbonwatch.model import DeviceClass, DeviceInfo, DeviceState, EnergyInterval, Provenance

log = logging.getLogger(__name__)

METHOD_COUNTER = "nvml-energy-counter"
METHOD_POWER_INTEGRAL = "nvml-power-integral"

# A reading above this is a sensor glitch, not a GPU (the largest parts draw ~1.2 kW; NVML has been
# seen to return 0xFFFFFFFF mW). Such samples are dropped rather than integrated.
MAX_PLAUSIBLE_POWER_W = 5_000.0


@dataclass(frozen=True)
class ProcessSample:
    """One per-process utilisation sample, as ``nvmlDeviceGetProcessUtilization`` reports it."""

    pid: int
    ts_us: int  # the device's sample time, Unix microseconds
    sm_pct: float
    mem_pct: float = 0.0


class GpuDevice(Protocol):
    """One GPU. Every method raises only carbonwatch errors (NotSupported, DeviceLost, ...)."""

    @property
    def index(self) -> int: ...

    @property
    def uuid(self) -> str: ...

    @property
    def name(self) -> str: ...

    def total_energy_mj(self) -> int:
        """Cumulative energy in millijoules since the driver loaded (NotSupported if absent)."""

    def power_mw(self) -> int:
        """Current board power in milliwatts."""

    def utilization_pct(self) -> float:
        """Whole-device busy percentage (recorded for reference; not used for accounting)."""

    def process_utilization(self, since_us: int) -> list[ProcessSample]:
        """Per-process SM samples newer than ``since_us`` (Unix microseconds); [] when none."""

    def compute_pids(self) -> list[int]:
        """Pids holding a compute context on the device."""


class GpuBackend(Protocol):
    def device_count(self) -> int: ...

    def device(self, index: int) -> GpuDevice: ...

    def close(self) -> None: ...


# --- the collector -------------------------------------------------------------------------------


@dataclass
class _GpuState:
    device: GpuDevice
    device_id: str
    uuid: str
    name: str
    use_counter: bool = True
    lost: bool = False
    detail: str = ""
    start_s: float | None = None  # interval start: the previous successful counter read
    counter_mj: int | None = None  # counter at start_s (None in power-integral mode)
    # (t_s, power_w) samples after start_s; the last sample at or before start_s is carried over
    # so the interval's first stretch has a level to integrate.
    samples: list[tuple[float, float]] = field(default_factory=list)
    carry: tuple[float, float] | None = None
    # (t_s, power_mw) as polled, not yet filed into samples/idle/tracker (see GpuCollector.poll)
    polled: list[tuple[float, int]] = field(default_factory=list)
    idle: IdleBaseline = field(default_factory=IdleBaseline)
    tracker: ShareTracker = field(default_factory=ShareTracker)
    pids_at_start: set[int] | None = None  # compute pids when the interval opened (None: unknown)
    last_busy_s: float = -math.inf  # last time a process, an SM sample or utilisation showed use
    last_seen_us: int = 0
    last_shares: dict[int | str, float] = field(default_factory=dict)
    last_split: str = ""
    reset_logged: bool = False
    # A counter reading taken in parallel with the other devices' (value or the read's error),
    # consumed by the next _read_counter.
    prefetched: int | DeviceError | None = None


class GpuCollector:
    """Collector over every device of a :class:`GpuBackend`.

    The first ``poll``/``collect`` opens each device's interval by reading its counter; with a
    ``clock`` the interval is opened at construction instead, at ``clock.time()``.
    ``idle_power_w`` fixes every device's idle baseline (as ``options.idle_w`` does); otherwise it
    is learned from the counter (see :mod:`carbonwatch.collectors.gpuidle`).
    """

    polls = True  # power, 10 times a second

    def __init__(
        self,
        backend: GpuBackend,
        clock: Clock | None = None,
        idle_power_w: float | None = None,
        options: GpuOptions | None = None,
    ) -> None:
        self._backend = backend
        self._options = options or GpuOptions()
        if idle_power_w is not None:
            self._options = dataclasses.replace(self._options, idle_w=idle_power_w)
        opts = self._options
        self._states: list[_GpuState] = []
        self._pool: ThreadPoolExecutor | None = None
        for index in range(backend.device_count()):
            device = backend.device(index)
            uuid = device.uuid
            self._states.append(
                _GpuState(
                    device=device,
                    device_id=gpu_device_id(device.index),
                    uuid=uuid,
                    name=device.name,
                    # a backend may say how a device is measured (MIG) or that it was lost at start
                    lost=bool(getattr(device, "lost", False)),
                    detail=str(getattr(device, "detail", "")),
                    idle=IdleBaseline(
                        configured_w=opts.idle_w_by_uuid.get(uuid, opts.idle_w),
                        stored_w=opts.stored_idle_w.get(uuid),
                    ),
                    tracker=ShareTracker(window_s=opts.share_window_s, mode=opts.split_mode),
                )
            )
        if clock is not None:
            now_s = clock.time()
            for st in self._states:
                self._open(st, now_s)

    # -- Collector protocol --

    def devices(self) -> list[DeviceInfo]:
        out = []
        for st in self._states:
            if st.lost:
                state = DeviceState.LOST
            elif not st.use_counter:
                state = DeviceState.DEGRADED
            else:
                state = DeviceState.OK
            out.append(
                DeviceInfo(
                    device_id=st.device_id,
                    device_class=DeviceClass.GPU,
                    name=st.name,
                    method=METHOD_COUNTER if st.use_counter else METHOD_POWER_INTEGRAL,
                    provenance=Provenance.MEASURED if st.use_counter else Provenance.ESTIMATED,
                    uuid=st.uuid,
                    state=state,
                    detail="; ".join(x for x in (st.detail, st.idle.describe()) if x),
                    idle_power_w=st.idle.current()[0],
                    idle_source=st.idle.current()[1],
                )
            )
        return out

    def gpu_refs(self) -> list[GpuRef]:
        """The devices as (physical index, uuid), for :func:`resolve_visible_devices`."""
        return [GpuRef(st.device.index, st.uuid) for st in self._states]

    def mig_parents(self) -> dict[str, str]:
        """MIG uuid -> parent GPU uuid, where the backend knows MIG (for CUDA_VISIBLE_DEVICES)."""
        parents = getattr(self._backend, "mig_parents", None)
        return dict(parents()) if parents is not None else {}

    def poll(self, now_s: float) -> None:
        # Ten times a second per device, each after a sleep (cold caches): no per-device work
        # beyond the two reads and appending the raw reading. The readings are filed (checked,
        # shaped, fed to the idle baseline and the split) once a second by _file_polled, in one
        # warm pass, before anything reads them.
        idle_max_util_pct = gpuidle.IDLE_MAX_UTIL_PCT
        for st in self._states:
            if st.lost:
                continue
            if st.start_s is None:
                self._open(st, now_s)
                if st.start_s is None or st.lost:
                    continue
            device = st.device
            try:
                st.polled.append((now_s, device.power_mw()))
            except DeviceTimeout:
                continue
            except DeviceLost as exc:
                self._mark_lost(st, exc)
                continue
            except DeviceError:
                continue  # no power reading: the counter still measures; shaping degrades to flat
            try:
                util_pct = float(device.utilization_pct())
            except DeviceError:
                continue  # without it, process-free intervals are judged by the process list
            if util_pct > idle_max_util_pct:
                st.last_busy_s = now_s

    def collect(self, now_s: float) -> list[EnergyInterval]:
        out: list[EnergyInterval] = []
        for st in self._states:
            self._file_polled(st)
        self._prefetch_counters(now_s)
        for st in self._states:
            if st.lost:
                # Lost during a poll: close its books once with what the power samples saw.
                interval = self._flush_lost(st)
            elif st.start_s is None:
                self._open(st, now_s)
                continue
            else:
                interval = self._collect_one(st, now_s)
            st.prefetched = None  # never carried to a later round
            if interval is not None:
                out.append(interval)
        return out

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
        self._backend.close()

    # -- internals --

    def _prefetch_counters(self, now_s: float) -> None:
        """Read the energy counters of every device due a reading at once, on a small pool.

        On an H200 one read takes ~3.8 ms in the driver (ctypes releases the GIL meanwhile): read
        one after another, 8 GPUs take ~31 ms, and the last device's reading lands ~27 ms after
        the first's though both close an interval ending at the same ``now_s``. In parallel the
        round takes about one read. It is also cheaper: on the benchmark VM each wait that ends
        costs a wake-up of ~50-80 us of CPU, and the pool's 8 waits end together, the sequential
        ones one by one (+0.5-1 ms of CPU a second, docs/benchmarks.md). A single device is read
        inline, as before."""
        due = [st for st in self._states
               if st.use_counter and not st.lost and st.start_s is not None and now_s > st.start_s]
        if len(due) < 2:
            return
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=min(8, len(self._states)),
                                            thread_name_prefix="carbonwatch-counter")

        def read(st: _GpuState) -> int | DeviceError:
            try:
                return st.device.total_energy_mj()
            except DeviceError as exc:  # raised where the value is used, as an inline read's
                return exc

        for st, value in zip(due, self._pool.map(read, due), strict=True):
            st.prefetched = value

    @staticmethod
    def _read_counter(st: _GpuState) -> int:
        """The prefetched counter reading (raising its error) if there is one, else a read now."""
        value, st.prefetched = st.prefetched, None
        if value is None:
            return st.device.total_energy_mj()
        if isinstance(value, DeviceError):
            raise value
        return value

    def _open(self, st: _GpuState, now_s: float) -> None:
        """Start the first interval: read the counter baseline (or learn that there is none)."""
        st.start_s = now_s
        st.last_seen_us = int(now_s * 1e6)
        if st.use_counter:
            try:
                st.counter_mj = self._read_counter(st)
            except NotSupported as exc:
                self._to_power_integral(st, exc)
            except DeviceLost as exc:
                self._mark_lost(st, exc)
            except DeviceError:
                st.start_s = None  # timed out or failed: try again on the next call

    @staticmethod
    def _file_polled(st: _GpuState) -> None:
        """File the power readings polled since the last call, oldest first. The interval's start
        only moves at a collect, after this, so each is filed as it would have been when polled."""
        polled, st.polled = st.polled, []
        samples, start_s = st.samples, st.start_s
        for t_s, power_mw in polled:
            power_w = power_mw / 1000.0
            # NVML reports 0 W only when the sensor fails (a powered GPU never draws 0 W), and
            # absurd values are glitches: neither may shape energy nor become the idle baseline.
            if not 0.0 < power_w <= MAX_PLAUSIBLE_POWER_W:
                continue
            if start_s is not None and t_s <= start_s:
                st.carry = (t_s, power_w)
            elif samples and samples[-1][0] >= t_s:
                samples[-1] = (samples[-1][0], power_w)  # same instant polled twice: keep one
            else:
                samples.append((t_s, power_w))
            st.idle.note_power(power_w)
            st.tracker.add_power(t_s, power_w)

    def _collect_one(self, st: _GpuState, now_s: float) -> EnergyInterval | None:
        assert st.start_s is not None
        start_s = st.start_s
        if now_s <= start_s:
            return None
        method, provenance = METHOD_COUNTER, Provenance.MEASURED
        energy_j: float | None = None
        new_counter_mj: int | None = None
        if st.use_counter:
            try:
                new_counter_mj = self._read_counter(st)
            except DeviceTimeout:
                return None  # keep the interval open; the next read covers it
            except DeviceLost as exc:
                self._mark_lost(st, exc)
                return self._flush_lost(st)
            except NotSupported as exc:
                self._to_power_integral(st, exc)
            except DeviceError as exc:
                # Any other failure (permission, unknown driver error): like a timeout, keep the
                # interval open rather than lose the energy it covers.
                log.warning("%s: energy counter read failed, retrying: %s", st.device_id, exc)
                return None
            else:
                assert st.counter_mj is not None
                delta_mj = new_counter_mj - st.counter_mj
                if delta_mj >= 0:
                    energy_j = delta_mj / 1000.0
                # Otherwise a driver reload or GPU reset restarted the counter: the new reading
                # becomes the baseline (in _advance) and this one interval is estimated from power.
                elif not st.reset_logged:
                    log.warning(
                        "%s: energy counter went back (%d -> %d mJ); treating it as a reset, "
                        "this interval is estimated from power",
                        st.device_id,
                        st.counter_mj,
                        new_counter_mj,
                    )
                    st.reset_logged = True
        pieces = _power_pieces(st.carry, st.samples, start_s, now_s)
        if energy_j is None:
            method, provenance = METHOD_POWER_INTEGRAL, Provenance.ESTIMATED
            energy_j = sum(e for _, e in pieces)
            segments = tuple(pieces) if pieces else ((now_s, 0.0),)
        else:
            segments = _scale_segments(pieces, energy_j, now_s)
        present, busy_sample_s = self._read_processes(st)
        st.last_busy_s = max(st.last_busy_s, busy_sample_s, now_s if present else -math.inf)
        # Process-free: no context at either end, no use seen since well before the start (the
        # counter moves every ~100 ms, so its reading at start_s may still hold earlier activity).
        if (
            method == METHOD_COUNTER
            and st.pids_at_start == set()
            and present == set()
            and st.last_busy_s <= start_s - gpuidle.COUNTER_STALE_S
        ):
            st.idle.observe_idle(now_s - start_s, energy_j)
            st.idle.report(st.uuid, self._options.on_idle_learned)
        idle_w = st.idle.current()[0]
        idle_energy_j = min(energy_j, idle_w * (now_s - start_s)) if idle_w is not None else 0.0
        split = st.tracker.split(
            start_s, now_s, present, idle_w, st.pids_at_start, energy_j - idle_energy_j,
            busy_at_start=st.last_busy_s >= start_s - gpuidle.COUNTER_STALE_S,
            energy_j=energy_j if method == METHOD_COUNTER else None,
        )
        shares = split.shares
        st.last_shares, st.last_split = shares, split.method
        st.pids_at_start = present
        self._advance(st, now_s, new_counter_mj)
        return EnergyInterval(
            device_id=st.device_id,
            device_class=DeviceClass.GPU,
            start_s=start_s,
            end_s=now_s,
            energy_j=energy_j,
            idle_energy_j=idle_energy_j,
            provenance=provenance,
            method=method,
            shares=shares,
            segments=segments,
            split_method=split.method,
        )

    def _advance(self, st: _GpuState, now_s: float, counter_mj: int | None) -> None:
        st.start_s = now_s
        st.counter_mj = counter_mj if st.use_counter else None
        last = st.samples[-1] if st.samples else st.carry
        st.carry = last
        st.samples = []

    def _read_processes(self, st: _GpuState) -> tuple[set[int] | None, float]:
        """Feed new SM samples to the tracker; return (compute pids now, or None when unreadable;
        the newest sample time showing activity)."""
        try:
            samples = st.device.process_utilization(st.last_seen_us)
        except DeviceError:
            samples = []  # not offered (MIG, vGPU) or timed out: the compute list still counts
        for s in samples:
            st.last_seen_us = max(st.last_seen_us, s.ts_us)
        st.tracker.add_samples(samples)
        busy_s = max((s.ts_us / 1e6 for s in samples if s.sm_pct > 0), default=-math.inf)
        try:
            return set(st.device.compute_pids()), busy_s
        except DeviceError:
            return None, busy_s

    def _to_power_integral(self, st: _GpuState, exc: NotSupported) -> None:
        st.use_counter = False
        st.counter_mj = None
        st.detail = f"energy counter unavailable ({exc}); integrating power samples"
        log.warning("%s: %s", st.device_id, st.detail)

    def _mark_lost(self, st: _GpuState, exc: DeviceLost) -> None:
        st.lost = True
        st.detail = f"device lost: {exc}"
        log.error("%s: %s", st.device_id, st.detail)

    def _flush_lost(self, st: _GpuState) -> EnergyInterval | None:
        """Energy between the last counter read and the loss, estimated from the power samples seen.

        Nothing is emitted for time after the last sample, so no interval extends past the loss."""
        if st.start_s is None or not st.samples:
            st.start_s = None
            return None
        end_s = st.samples[-1][0]
        pieces = _power_pieces(st.carry, st.samples, st.start_s, end_s)
        energy_j = sum(e for _, e in pieces)
        idle_w = st.idle.current()[0]
        duration_s = end_s - st.start_s
        interval = EnergyInterval(
            device_id=st.device_id,
            device_class=DeviceClass.GPU,
            start_s=st.start_s,
            end_s=end_s,
            energy_j=energy_j,
            idle_energy_j=min(energy_j, idle_w * duration_s) if idle_w is not None else 0.0,
            provenance=Provenance.ESTIMATED,
            method=METHOD_POWER_INTEGRAL,
            # The lost device can no longer say who used it: keep the previous interval's consumers.
            shares=dict(st.last_shares),
            segments=tuple(pieces),
            split_method=st.last_split,
        )
        st.samples = []
        st.start_s = None  # closed: later calls emit nothing more
        return interval

