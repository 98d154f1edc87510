"""Record one GPU into the trace format that :mod:`carbonwatch.collectors.trace` defines and
:mod:`carbonwatch.collectors.trace_gpu` replays.

One format serves both directions: a trace recorded from a real device (``NvmlBackend``) replays
through the very code that measures it live. Processes that appear in ``compute_pids`` are given a
role (``pid<pid>`` unless named in ``roles``) with ``<role>_launch`` / ``<role>_exit`` events at the
process poll that first / last saw them.
"""

from __future__ import annotations

import csv
import json
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Protocol

from carbonwatch.clock import Clock
from carbonwatch.collectors.gpu import GpuBackend
from carbonwatch.collectors.trace import COLUMNS
from carbonwatch.errors import DeviceError, DeviceTimeout


class Recorder:
    """Writes power.csv, energy.csv, process_util.csv, events.csv and (on close) meta.json.

    Each ``poll_*`` reads the device once at ``clock.time()`` and appends a row; a read that times
    out or is not supported is skipped (a device without an energy counter leaves energy.csv with
    only its header, and replays as one whose counter is not supported)."""

    def __init__(
        self,
        backend: GpuBackend,
        out_dir: str | Path,
        clock: Clock,
        device_index: int = 0,
        roles: Mapping[str, int] | None = None,
        meta: Mapping[str, Any] | None = None,
    ) -> None:
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self._clock = clock
        self._device = backend.device(device_index)
        self._driver = getattr(backend, "driver_version", None)
        self._role_of = {pid: role for role, pid in (roles or {}).items()}
        self._meta = dict(meta or {})
        self._running: set[int] = set()
        self._last_seen_us = int(clock.time() * 1e6)
        self._files: dict[str, IO[str]] = {}
        self._writers: dict[str, Any] = {}
        for name, header in COLUMNS.items():
            f = (self.out_dir / name).open("w", newline="")
            self._files[name] = f
            self._writers[name] = csv.writer(f)
            self._writers[name].writerow(header)
        self._closed = False

    def poll_power(self) -> None:
        now_s = self._clock.time()
        try:
            power_mw = self._device.power_mw()
        except (DeviceTimeout, DeviceError):
            return
        try:
            util = self._device.utilization_pct()
        except DeviceError:
            util = ""
        self._writers["power.csv"].writerow((now_s, power_mw, util))

    def poll_energy(self) -> None:
        now_s = self._clock.time()
        try:
            energy_mj = self._device.total_energy_mj()
        except DeviceError:
            return
        self._writers["energy.csv"].writerow((now_s, energy_mj))

    def poll_processes(self) -> None:
        now_s = self._clock.time()
        try:
            samples = self._device.process_utilization(self._last_seen_us)
        except DeviceError:
            samples = []
        for s in samples:
            self._last_seen_us = max(self._last_seen_us, s.ts_us)
            self._writers["process_util.csv"].writerow(
                (now_s, s.pid, s.ts_us, _num(s.sm_pct), _num(s.mem_pct))
            )
        try:
            pids = set(self._device.compute_pids())
        except DeviceError:
            return
        for pid in sorted(pids - self._running):
            self.event(f"{self._role(pid)}_launch", now_s)
        for pid in sorted(self._running - pids):
            self.event(f"{self._role(pid)}_exit", now_s)
        self._running = pids

    def event(self, name: str, t_s: float | None = None) -> None:
        """Append a free-form event (e.g. "phase_start")."""
        self._writers["events.csv"].writerow((self._clock.time() if t_s is None else t_s, name))

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.event("end")
        for f in self._files.values():
            f.close()
        meta = {
            "gpu": self._device.name,
            "uuid": self._device.uuid,
            "pids": {role: pid for pid, role in sorted(self._role_of.items())},
            "recorded_by": "carbonwatch",
            **({"driver": self._driver} if self._driver else {}),
            **self._meta,
        }
        (self.out_dir / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")

    def __enter__(self) -> Recorder:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _role(self, pid: int) -> str:
        return self._role_of.setdefault(pid, f"pid{pid}")


class RecorderGroup:
    """Several GPUs recorded at once, each by its own :class:`Recorder` into its own trace."""

    def __init__(self, recorders: Sequence[Recorder]) -> None:
        self.recorders = list(recorders)

    def poll_power(self) -> None:
        for r in self.recorders:
            r.poll_power()

    def poll_energy(self) -> None:
        for r in self.recorders:
            r.poll_energy()

    def poll_processes(self) -> None:
        for r in self.recorders:
            r.poll_processes()

    def close(self) -> None:
        for r in self.recorders:
            r.close()


class Pollable(Protocol):
    def poll_power(self) -> None: ...

    def poll_energy(self) -> None: ...

    def poll_processes(self) -> None: ...


def _num(value: float) -> int | float:
    """Percentages are whole numbers from NVML: write 99, not 99.0."""
    return int(value) if float(value).is_integer() else value


def record(
    recorder: Pollable,
    clock: Clock,
    duration_s: float,
    power_interval_s: float = 0.01,
    energy_interval_s: float = 0.1,
    process_interval_s: float = 0.5,
    sleep: Callable[[float], None] = time.sleep,
) -> None:
    """Poll at the given rates for duration_s of ``clock`` time, then take a last reading of each.

    Pass ``sleep=manual_clock.advance`` to record a replayed device in simulated time."""
    start = clock.monotonic()
    due = {"power": 0.0, "energy": 0.0, "process": 0.0}
    every = {"power": power_interval_s, "energy": energy_interval_s, "process": process_interval_s}
    polls = {
        "power": recorder.poll_power,
        "energy": recorder.poll_energy,
        "process": recorder.poll_processes,
    }
    ticks = dict.fromkeys(due, 0)
    while True:
        elapsed = clock.monotonic() - start
        for kind in ("power", "energy", "process"):
            if elapsed >= due[kind] - 1e-6:  # Unix-time floats resolve ~0.2 us
                polls[kind]()
                ticks[kind] += 1
                # schedule from the start, not from now, so the rate does not drift with poll cost
                due[kind] = ticks[kind] * every[kind]
        next_due = min(due.values())
        if next_due >= duration_s:
            break
        wait_s = next_due - (clock.monotonic() - start)
        if wait_s > 0:
            sleep(wait_s)
    remaining_s = duration_s - (clock.monotonic() - start)
    if remaining_s > 0:
        sleep(remaining_s)
    recorder.poll_power()
    recorder.poll_energy()
    recorder.poll_processes()
