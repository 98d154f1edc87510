"""The collectors' trace format, shared by the recorder and the replay.

One directory, one GPU: :mod:`carbonwatch.collectors.recorder` writes it,
:mod:`carbonwatch.collectors.trace_gpu` serves it back as a GPU device:

=================  ==========================================================  ========
file               columns                                                     required
=================  ==========================================================  ========
power.csv          t_s, power_mW, gpu_util_pct (may be empty)                  yes
energy.csv         t_s, energy_mJ                                              yes
process_util.csv   t_s, pid, sample_ts_us, sm_util_pct, mem_util_pct           yes
events.csv         t_s, event  (``<role>_launch`` / ``<role>_exit`` / other)   yes
meta.json          {"gpu": name, "pids": {role: pid}, ...}                     yes
process_cpu.csv    t_s, role, pid, user_s, system_s                            no
calls.csv          start_s, end_s, batch                                       no
=================  ==========================================================  ========

All ``t_s`` are Unix seconds. Readings are step functions of time, like the real device: at time
``now`` a read returns the last row at or before ``now`` (the first row before the trace starts).
The backend reads time from an injectable clock; :func:`drive` walks a ManualClock through a trace
calling a collector the way the daemon's sampling loop does.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from carbonwatch.errors import InputError

# The recorder's columns per file (the replay reads these names; extra columns are ignored).
COLUMNS = {
    "power.csv": ("t_s", "power_mW", "gpu_util_pct"),
    "energy.csv": ("t_s", "energy_mJ"),
    "process_util.csv": ("t_s", "pid", "sample_ts_us", "sm_util_pct", "mem_util_pct"),
    "events.csv": ("t_s", "event"),
}

# --- the trace -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Call:
    """One inference call as the serving process reported it."""

    start_s: float
    end_s: float
    batch: int


@dataclass(frozen=True)
class ProcessUtilRow:
    t_s: float  # when the sampler read it
    pid: int
    sample_ts_us: int  # the device's own sample time
    sm_pct: float
    mem_pct: float


@dataclass(frozen=True)
class ProcessCpuRow:
    t_s: float
    role: str
    pid: int
    user_s: float
    system_s: float


@dataclass(frozen=True)
class Trace:
    directory: Path
    power_t_s: list[float]
    power_mw: list[int]
    gpu_util_pct: list[float]
    energy_t_s: list[float]
    energy_mj: list[int]
    process_util: list[ProcessUtilRow]
    events: list[tuple[float, str]]
    meta: dict[str, Any]
    process_cpu: list[ProcessCpuRow] = field(default_factory=list)
    calls: list[Call] = field(default_factory=list)

    @property
    def start_s(self) -> float:
        """First energy row (first power row without a counter): where a replay starts."""
        return (self.energy_t_s or self.power_t_s)[0]

    @property
    def end_s(self) -> float:
        """Last energy row (last power row without a counter)."""
        return (self.energy_t_s or self.power_t_s)[-1]

    @property
    def has_counter(self) -> bool:
        return bool(self.energy_t_s)

    @property
    def energy_j(self) -> float:
        """Counter delta over the trace (last minus first energy row); 0 without a counter."""
        if not self.energy_mj:
            return 0.0
        return (self.energy_mj[-1] - self.energy_mj[0]) / 1000.0

    @property
    def gpu_name(self) -> str:
        return str(self.meta.get("gpu", "replayed GPU"))

    @property
    def pids(self) -> dict[str, int]:
        """Role -> pid, from meta.json."""
        return {str(k): int(v) for k, v in self.meta.get("pids", {}).items()}

    def pid_windows(self) -> dict[int, tuple[float, float]]:
        """pid -> (launch_s, exit_s) from ``<role>_launch`` / ``<role>_exit`` events.

        A role without an exit event runs to the end of time; one without a launch from the start.
        """
        windows: dict[int, tuple[float, float]] = {}
        for role, pid in self.pids.items():
            launch = [t for t, e in self.events if e == f"{role}_launch"]
            exit_ = [t for t, e in self.events if e == f"{role}_exit"]
            windows[pid] = (min(launch, default=-math.inf), max(exit_, default=math.inf))
        return windows

    def presence_windows(self) -> dict[int, tuple[float, float]]:
        """pid -> (from_s, until_s) during which the pid holds a compute context, as NVML's
        compute-process list would show it: from launch/exit events where the trace has them,
        else from the process's own samples (its first sample window to the last poll that
        returned one), so a trace without events replays like the live device."""
        with_events = {
            pid for role, pid in self.pids.items()
            if any(e in (f"{role}_launch", f"{role}_exit") for _, e in self.events)
        }
        windows = {pid: w for pid, w in self.pid_windows().items() if pid in with_events}
        sampled: dict[int, tuple[float, float]] = {}
        for r in self.process_util:
            first, last = sampled.get(r.pid, (math.inf, -math.inf))
            sampled[r.pid] = (min(first, r.sample_ts_us / 1e6 - SAMPLE_WINDOW_S), max(last, r.t_s))
        for pid, window in sampled.items():
            windows.setdefault(pid, window)
        return windows


# A per-process sample covers about this long before its time stamp (NVML's sample period).
SAMPLE_WINDOW_S = 0.5

REQUIRED_FILES = ("power.csv", "energy.csv", "process_util.csv", "events.csv", "meta.json")


def load_trace(trace_dir: str | Path) -> Trace:
    """Read and validate a trace directory; InputError names the file (and line) at fault."""
    directory = Path(trace_dir)
    if not directory.is_dir():
        raise InputError(f"{directory}: trace directory not found")
    for name in REQUIRED_FILES:
        if not (directory / name).is_file():
            raise InputError(f"{directory / name}: required trace file is missing")

    power = _read_csv(
        directory / "power.csv", ("t_s", "power_mW", "gpu_util_pct"), (float, int, _float_or_zero)
    )
    energy = _read_csv(directory / "energy.csv", ("t_s", "energy_mJ"), (float, int))
    if not power:
        raise InputError(f"{directory / 'power.csv'}: no data rows")
    # energy.csv may hold only its header: the device had no counter, and replays as such.
    for path, rows in ((directory / "power.csv", power), (directory / "energy.csv", energy)):
        _check_sorted(path, [r[0] for r in rows])
    util = _read_csv(
        directory / "process_util.csv",
        ("t_s", "pid", "sample_ts_us", "sm_util_pct", "mem_util_pct"),
        (float, int, int, float, _float_or_zero),
    )
    events = _read_csv(directory / "events.csv", ("t_s", "event"), (float, str))
    meta = _read_meta(directory / "meta.json")
    cpu_rows = []
    if (directory / "process_cpu.csv").is_file():
        cpu_rows = _read_csv(
            directory / "process_cpu.csv",
            ("t_s", "role", "pid", "user_s", "system_s"),
            (float, str, int, float, float),
        )
    call_rows = []
    # calls.csv may carry other columns and no batch (``carbonwatch replay --calls`` reads those);
    # the trace's own call list is the recorder's (start_s, end_s, batch) form.
    if (directory / "calls.csv").is_file() and _has_column(directory / "calls.csv", "batch"):
        call_rows = _read_csv(
            directory / "calls.csv", ("start_s", "end_s", "batch"), (float, float, int)
        )

    return Trace(
        directory=directory,
        power_t_s=[r[0] for r in power],
        power_mw=[r[1] for r in power],
        gpu_util_pct=[r[2] for r in power],
        energy_t_s=[r[0] for r in energy],
        energy_mj=[r[1] for r in energy],
        process_util=sorted((ProcessUtilRow(*r) for r in util), key=lambda r: r.t_s),
        events=sorted((r[0], r[1]) for r in events),
        meta=meta,
        process_cpu=[ProcessCpuRow(*r) for r in cpu_rows],
        calls=[Call(*r) for r in call_rows],
    )


# Pids of a repeated trace's later runs: the recorded pid plus this times the run's number.
REPEAT_PID_STEP = 100_000


def repeat_trace(trace: Trace, times: int) -> Trace:
    """The recording played ``times`` times back to back, as a device that keeps running the same
    work: each run starts where the last ended (the period is the counter's span, last minus first
    energy row), the energy counter keeps rising, and each run's processes are new ones (the
    recorded pid plus ``REPEAT_PID_STEP`` times the run's number, role ``<role>.<n>``), launched
    and exiting at the recorded times. A replay past a trace's end reads a counter that no longer
    moves and a device with no processes; a benchmark that runs longer than the recording replays
    this instead. The first run is the recording itself."""
    if times < 1:
        raise InputError(f"repeat a trace at least once, not {times} times")
    if not trace.has_counter or len(trace.energy_t_s) < 2:
        raise InputError(f"{trace.directory}: a repeated trace needs an energy counter")
    start_s, period_s = trace.start_s, trace.end_s - trace.start_s
    if times == 1 or period_s <= 0:
        return trace
    step_mj = trace.energy_mj[-1] - trace.energy_mj[0]
    roles = trace.pids

    def runs(t_s: float) -> range:
        # The rows of one run: its own span [start, start + period) shifted by the run's number;
        # what lies before the first run's start or after the last one's end is kept once.
        if t_s < start_s:
            return range(1)
        return range(times) if t_s < start_s + period_s else range(times - 1, times)

    def pid_of(pid: int, n: int) -> int:
        return pid + REPEAT_PID_STEP * n if n else pid

    def role_of(role: str, n: int) -> str:
        return f"{role}.{n}" if n else role

    readings = zip(trace.power_t_s, trace.power_mw, trace.gpu_util_pct, strict=True)
    power = [(t + n * period_s, mw, util) for t, mw, util in readings for n in runs(t)]
    power.sort(key=lambda r: r[0])
    energy = [(t + n * period_s, mj + n * step_mj)
              for t, mj in zip(trace.energy_t_s, trace.energy_mj, strict=True) for n in runs(t)]
    energy.sort(key=lambda r: r[0])
    shift_us = round(period_s * 1e6)
    util = sorted((ProcessUtilRow(r.t_s + n * period_s, pid_of(r.pid, n),
                                  r.sample_ts_us + n * shift_us, r.sm_pct, r.mem_pct)
                   for r in trace.process_util for n in runs(r.t_s)), key=lambda r: r.t_s)
    events = []
    for t, event in trace.events:
        role, _, what = event.rpartition("_")
        for n in runs(t):
            named = f"{role_of(role, n)}_{what}" if role in roles else event
            events.append((t + n * period_s, named))
    meta = dict(trace.meta)
    meta["pids"] = {role_of(role, n): pid_of(pid, n) for n in range(times)
                    for role, pid in roles.items()}
    return Trace(
        directory=trace.directory,
        power_t_s=[r[0] for r in power],
        power_mw=[r[1] for r in power],
        gpu_util_pct=[r[2] for r in power],
        energy_t_s=[r[0] for r in energy],
        energy_mj=[r[1] for r in energy],
        process_util=util,
        events=sorted(events),
        meta=meta,
        process_cpu=[ProcessCpuRow(r.t_s + n * period_s, role_of(r.role, n), pid_of(r.pid, n),
                                   r.user_s, r.system_s)
                     for r in trace.process_cpu for n in runs(r.t_s)],
        calls=[Call(c.start_s + n * period_s, c.end_s + n * period_s, c.batch)
               for c in trace.calls for n in runs(c.start_s)],
    )


def _has_column(path: Path, column: str) -> bool:
    try:
        with path.open(newline="") as f:
            header = next(csv.reader(f), None) or []
    except (OSError, UnicodeDecodeError):
        return True  # let _read_csv report what is wrong with it
    return column in (h.strip() for h in header)


def _float_or_zero(text: str) -> float:
    return float(text) if text.strip() else 0.0


def _read_csv(
    path: Path, columns: Sequence[str], types: Sequence[Callable[[str], Any]]
) -> list[tuple[Any, ...]]:
    try:
        with path.open(newline="") as f:
            reader = csv.reader(f)
            header = next(reader, None)
            if header is None:
                raise InputError(f"{path}: empty file, expected header {','.join(columns)}")
            header = [h.strip() for h in header]
            missing = [c for c in columns if c not in header]
            if missing:
                got = ",".join(header)
                raise InputError(
                    f"{path}:1: header lacks column(s) {', '.join(missing)} (got {got})"
                )
            where = [header.index(c) for c in columns]
            rows = []
            for row in reader:
                if not row or all(not cell.strip() for cell in row):
                    continue
                line = reader.line_num
                try:
                    rows.append(tuple(t(row[i]) for t, i in zip(types, where, strict=True)))
                except (ValueError, IndexError) as exc:
                    raise InputError(f"{path}:{line}: malformed row {row!r}: {exc}") from None
            return rows
    except UnicodeDecodeError as exc:
        raise InputError(f"{path}: not a text CSV file ({exc})") from None
    except OSError as exc:
        raise InputError(f"{path}: cannot read ({exc})") from None


def _check_sorted(path: Path, times: Sequence[float]) -> None:
    for i in range(1, len(times)):
        if times[i] < times[i - 1]:
            # +2: one for the header, one because line numbers start at 1
            raise InputError(f"{path}:{i + 2}: t_s goes backwards ({times[i]} < {times[i - 1]})")


def _read_meta(path: Path) -> dict[str, Any]:
    try:
        meta = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise InputError(f"{path}:{exc.lineno}: invalid JSON: {exc.msg}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: cannot read ({exc})") from None
    if not isinstance(meta, dict):
        raise InputError(f"{path}: expected a JSON object")
    pids = meta.get("pids", {})
    if not isinstance(pids, dict) or not all(isinstance(v, int) for v in pids.values()):
        raise InputError(f'{path}: "pids" must map role names to integer pids')
    return meta
