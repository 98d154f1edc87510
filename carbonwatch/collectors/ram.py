"""Memory energy from a documented model, where RAPL has no DRAM domain.

Model: 0.375 W per GiB of installed memory, codecarbon 2.x's rule (``RAM.power_per_GB = 3 / 8``,
"3 watts of power for every 8GB of DDR3 or DDR4 memory", citing Crucial's "How much power does
memory use?"). codecarbon 3.x estimates per DIMM instead (5 W per x86 slot, guessing the slot count
from the size); the per-GB rule needs no guess and scales with the memory actually installed.
DRAM power barely depends on how much is in use, so the whole installed size draws power; the idle
part is the share of memory *not* in use, and the active part is split by resident set size.
"""

from __future__ import annotations

from collections.abc import Callable

import psutil

from carbonwatch.collectors.processes import ProcessSource, rss_shares
from carbonwatch.collectors.procfs import ProcFile, parse_meminfo
from carbonwatch.model import DeviceClass, DeviceInfo, EnergyInterval, Provenance

METHOD = "ram-model"
W_PER_GIB = 3.0 / 8.0
GIB = 1024**3


def _psutil_memory() -> tuple[int, int]:
    vm = psutil.virtual_memory()
    return vm.total, vm.total - vm.available


class MeminfoMemory:
    """(total_bytes, used_bytes) from /proc/meminfo's MemTotal and MemAvailable, the figures psutil
    uses, without parsing the whole file through psutil each second (~10x the cost); psutil's
    ``virtual_memory()`` where those are missing (not Linux, or MemAvailable absent or 0, when
    psutil estimates it as ``free`` does)."""

    def __init__(self, path: str = "/proc/meminfo") -> None:
        self._file = ProcFile(path)

    def __call__(self) -> tuple[int, int]:
        raw = self._file.read()
        memory = parse_meminfo(raw) if raw is not None else None
        return memory if memory is not None else _psutil_memory()


class RamModelCollector:
    """Estimated RAM energy for device "ram".

    ``memory`` is a callable returning (total_bytes, used_bytes), :class:`MeminfoMemory` by default
    (used = total - available, so page cache that can be dropped counts as unused), or the process
    snapshot's own read of it (the light scan's, see ProcessScanner), so that the shares, each
    watched pid's resident bytes and OTHER the rest of the used memory, sum to the used figure.
    Without the light scan, OTHER is the other processes' resident bytes summed."""

    def __init__(
        self,
        processes: ProcessSource | None = None,
        w_per_gib: float = W_PER_GIB,
        memory: Callable[[], tuple[int, int]] | None = None,
    ) -> None:
        self._w_per_gib = w_per_gib
        self._memory = memory or MeminfoMemory()
        self._snapshot_memory = memory is None  # the snapshot's figure, where it carries one
        self._processes = processes
        self._start_s: float | None = None

    def devices(self) -> list[DeviceInfo]:
        total_bytes, _ = self._memory()
        return [
            DeviceInfo(
                device_id="ram",
                device_class=DeviceClass.RAM,
                name=f"RAM {total_bytes / GIB:.1f} GiB",
                method=METHOD,
                provenance=Provenance.ESTIMATED,
                detail=f"{self._w_per_gib:g} W/GiB of installed memory (codecarbon's 3 W per 8 GB)",
            )
        ]

    polls = False  # memory is read at collect

    def poll(self, now_s: float) -> None:
        if self._start_s is None:
            self._start_s = now_s

    def collect(self, now_s: float) -> list[EnergyInterval]:
        if self._start_s is None:
            self._start_s = now_s
            return []
        start_s = self._start_s
        if now_s <= start_s:
            return []
        snap = self._processes.snapshot(now_s) if self._processes is not None else None
        memory = snap.memory_bytes if snap is not None and self._snapshot_memory else None
        total_bytes, used_bytes = memory or self._memory()
        energy_j = self._w_per_gib * total_bytes / GIB * (now_s - start_s)
        used_fraction = min(max(used_bytes / total_bytes, 0.0), 1.0) if total_bytes > 0 else 0.0
        self._start_s = now_s
        return [
            EnergyInterval(
                device_id="ram",
                device_class=DeviceClass.RAM,
                start_s=start_s,
                end_s=now_s,
                energy_j=energy_j,
                idle_energy_j=energy_j * (1.0 - used_fraction),
                provenance=Provenance.ESTIMATED,
                method=METHOD,
                shares=rss_shares(snap) if snap is not None else {},
                segments=((now_s, energy_j),),
            )
        ]

    def close(self) -> None:
        pass
