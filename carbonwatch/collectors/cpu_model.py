"""CPU energy estimated from the processor's TDP and its load, where RAPL is not readable.

Data: codecarbon's CPU power table (``codecarbon/data/hardware/cpu_power.csv``, columns Name,TDP),
read as a file from the installed package, located with ``importlib.util.find_spec`` so that
codecarbon itself is never imported (its ``__init__`` imports the tracker: slow, and it probes
hardware). Formula: codecarbon's ``cpu_load`` mode for the whole machine,
``CPU._get_power_from_cpu_load`` in codecarbon/external/hardware.py (3.x)::

    power_w = tdp_w * (0.1 + 0.9 * load ** 3)      # load in 0..1; "cubic, minimum 10 % of TDP"

Unknown CPUs fall back to codecarbon's own default, 4 W per logical CPU
(``DEFAULT_POWER_PER_CORE`` in codecarbon/core/cpu.py), and say so in the device's detail.
"""

from __future__ import annotations

import csv
import functools
import io
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import psutil

from carbonwatch.codecarbon_data import codecarbon_data_path
from carbonwatch.collectors.processes import ProcessSource, ShareTracker
from carbonwatch.collectors.procfs import busy_cpu_seconds, total_cpu_seconds
from carbonwatch.errors import DeviceError
from carbonwatch.model import DeviceClass, DeviceInfo, EnergyInterval, Provenance

METHOD = "tdp-model"
DEFAULT_W_PER_THREAD = 4.0  # codecarbon.core.cpu.DEFAULT_POWER_PER_CORE
IDLE_FRACTION = 0.1  # the formula's floor: power at load 0


def power_from_load_w(tdp_w: float, load: float) -> float:
    """codecarbon's load model: 10 % of TDP at idle, rising with the cube of load to 100 %."""
    load = min(max(load, 0.0), 1.0)
    return tdp_w * (IDLE_FRACTION + (1.0 - IDLE_FRACTION) * load**3)


@functools.cache
def load_cpu_power_table() -> dict[str, float]:
    """codecarbon's table as {name: tdp_w}; {} if the file is missing from the installed package."""
    path = codecarbon_data_path("hardware/cpu_power.csv")
    if path is None:
        return {}
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError):
        return {}
    table: dict[str, float] = {}
    for row in csv.DictReader(io.StringIO(text)):
        try:
            table[row["Name"].strip()] = float(row["TDP"])
        except (KeyError, TypeError, ValueError):
            continue  # a bad row in vendor data should not take the model down
    return table


# Words that carry no model identity: marketing marks, "CPU", "Processor", "N-Core", clock speeds.
_NOISE = re.compile(
    r"\((r|tm)\)|®|™|\bcpu\b|\bprocessor\b|\b\d+-core\b|@\s*[\d.]+\s*ghz|\b[\d.]+\s*ghz\b"
)


def normalise_cpu_name(name: str) -> str:
    text = _NOISE.sub(" ", name.lower())
    text = re.sub(r"[^a-z0-9+\-. ]", " ", text)
    return " ".join(text.split())


def match_cpu(brand: str, table: Mapping[str, float]) -> str | None:
    """The table name for a CPU brand string, or None.

    Matching is deliberately strict, so a wrong TDP is never silently used: (1) equal after
    normalising (case, (R)/(TM), "CPU", "Processor", "N-Core", "@ 2.10GHz" removed); else (2) the
    table names all of whose words occur in the brand, the one with the most words winning; a tie
    between names of different TDP is ambiguous and gives None. "AMD EPYC" alone matches nothing,
    because every table entry carries a model number.
    """
    want = normalise_cpu_name(brand)
    if not want:
        return None
    norm = _normalised_table(tuple(table))
    if want in norm:
        return norm[want]
    words = set(want.split())
    best: list[str] = []
    best_len = 0
    for key, name in norm.items():
        key_words = key.split()
        if set(key_words) <= words:
            if len(key_words) > best_len:
                best, best_len = [name], len(key_words)
            elif len(key_words) == best_len:
                best.append(name)
    if not best or len({table[n] for n in best}) > 1:
        return None
    return best[0]


@functools.cache
def _normalised_table(names: tuple[str, ...]) -> dict[str, str]:
    out: dict[str, str] = {}
    for name in names:
        out.setdefault(normalise_cpu_name(name), name)
    return out


def detect_cpu_brand(cpuinfo_path: str | Path = "/proc/cpuinfo") -> str | None:
    """The CPU's brand: /proc/cpuinfo "model name", else py-cpuinfo (slower: it may probe)."""
    try:
        for line in Path(cpuinfo_path).read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and value.strip():
                return value.strip()
    except OSError:
        pass
    try:
        import cpuinfo  # py-cpuinfo

        return cpuinfo.get_cpu_info().get("brand_raw") or None
    except Exception:  # py-cpuinfo raises a variety of errors on exotic platforms
        return None


@dataclass(frozen=True)
class CpuTdp:
    brand: str
    tdp_w: float
    matched: str | None  # the table row used; None when the default applied
    detail: str


def cpu_tdp(
    brand: str | None = None,
    table: Mapping[str, float] | None = None,
    threads: int | None = None,
) -> CpuTdp:
    """Look up this (or the given) CPU's TDP, falling back to 4 W per logical CPU."""
    brand = brand if brand is not None else (detect_cpu_brand() or "unknown CPU")
    table = table if table is not None else load_cpu_power_table()
    matched = match_cpu(brand, table)
    if matched is not None:
        tdp_w = table[matched]
        return CpuTdp(brand, tdp_w, matched, f"TDP {tdp_w:g} W from codecarbon table ({matched})")
    threads = threads or os.cpu_count() or 1
    tdp_w = DEFAULT_W_PER_THREAD * threads
    return CpuTdp(
        brand,
        tdp_w,
        None,
        f"{brand!r} not in codecarbon's CPU table: default {DEFAULT_W_PER_THREAD:g} W x "
        f"{threads} logical CPUs = {tdp_w:g} W",
    )


class PsutilCpuLoad:
    """Machine-wide CPU load (0..1) since the previous call, from psutil.cpu_times()."""

    def __init__(self) -> None:
        self._prev = psutil.cpu_times()

    def __call__(self, now_s: float) -> float:
        cur = psutil.cpu_times()
        busy_s = busy_cpu_seconds(cur) - busy_cpu_seconds(self._prev)
        total_s = total_cpu_seconds(cur) - total_cpu_seconds(self._prev)
        self._prev = cur
        return 0.0 if total_s <= 0 else min(1.0, max(0.0, busy_s / total_s))


class TdpCpuCollector:
    """Estimated CPU energy: ``power_from_load_w(tdp, load) * dt`` per interval, device "cpu".

    ``load`` is a callable now_s -> machine load 0..1 over the interval just ended. By default it
    comes from the ``processes`` snapshots, which read /proc/stat for OTHER's CPU anyway (one read
    a tick, not two), else from :class:`PsutilCpuLoad` where they carry no machine CPU times.
    The idle part is the load-0 power (10 % of TDP) times the duration.
    Shares are CPU seconds per watched pid from ``processes``, the rest of the machine as OTHER.
    """

    def __init__(
        self,
        tdp: CpuTdp | None = None,
        processes: ProcessSource | None = None,
        load: Callable[[float], float] | None = None,
    ) -> None:
        self.tdp = tdp or cpu_tdp()
        self._load = load  # None: from the snapshots, or PsutilCpuLoad (decided in _open)
        self._shares = ShareTracker(processes)
        self._start_s: float | None = None

    def devices(self) -> list[DeviceInfo]:
        return [
            DeviceInfo(
                device_id="cpu",
                device_class=DeviceClass.CPU,
                name=self.tdp.brand,
                method=METHOD,
                provenance=Provenance.ESTIMATED,
                detail=self.tdp.detail,
            )
        ]

    polls = False  # load and shares are read at collect

    def poll(self, now_s: float) -> None:
        if self._start_s is None:
            self._open(now_s)

    def collect(self, now_s: float) -> list[EnergyInterval]:
        if self._start_s is None:
            self._open(now_s)
            return []
        start_s = self._start_s
        if now_s <= start_s:
            return []
        duration_s = now_s - start_s
        shares = self._shares.cpu(now_s)
        load = self._load(now_s) if self._load is not None else self._shares.load
        if load is None:  # snapshots that stopped carrying /proc/stat's figures: never made up
            raise DeviceError("the process snapshot has no machine CPU times: CPU load unknown")
        energy_j = power_from_load_w(self.tdp.tdp_w, load) * duration_s
        idle_energy_j = min(energy_j, self.tdp.tdp_w * IDLE_FRACTION * duration_s)
        self._start_s = now_s
        return [
            EnergyInterval(
                device_id="cpu",
                device_class=DeviceClass.CPU,
                start_s=start_s,
                end_s=now_s,
                energy_j=energy_j,
                idle_energy_j=idle_energy_j,
                provenance=Provenance.ESTIMATED,
                method=METHOD,
                shares=shares,
                segments=((now_s, energy_j),),
            )
        ]

    def close(self) -> None:
        pass

    def _open(self, now_s: float) -> None:
        self._start_s = now_s
        self._shares.cpu(now_s)
        snap = self._shares.last
        if self._load is None and (snap is None or None in (snap.busy_cpu_s, snap.total_cpu_s)):
            self._load = PsutilCpuLoad()  # no snapshots, or none with /proc/stat's figures
        if self._load is not None:
            self._load(now_s)  # start the load window here
