"""CPU package and DRAM energy from Linux RAPL through the powercap sysfs tree.

Layout read (``root`` defaults to /sys/class/powercap)::

    intel-rapl:0/name               "package-0"
    intel-rapl:0/energy_uj          cumulative microjoules, wraps at max_energy_range_uj
    intel-rapl:0/max_energy_range_uj
    intel-rapl:0:2/name             "dram"  (also found nested, as intel-rapl:0/intel-rapl:0:2)

Package domains become devices "cpuN" (DeviceClass.CPU), DRAM domains "ramN" (DeviceClass.RAM).
Core/uncore/psys domains are skipped: cores and uncore are inside the package, and psys overlaps it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from carbonwatch.clock import Clock
from carbonwatch.collectors.processes import ProcessSource, ShareTracker
from carbonwatch.errors import NotSupported
from carbonwatch.model import DeviceClass, DeviceInfo, EnergyInterval, Provenance

METHOD = "rapl"
_DOMAIN_RE = re.compile(r"^intel-rapl:(\d+)(?::(\d+))?$")


@dataclass
class _Domain:
    device_id: str
    device_class: DeviceClass
    name: str
    energy_path: Path
    max_range_uj: int
    last_uj: int | None = None
    start_s: float | None = None
    min_power_w: float | None = None


class RaplCollector:
    """Measured CPU package and DRAM energy. Raises NotSupported when RAPL is absent or unreadable,
    so :mod:`carbonwatch.collectors.detect` can fall back to the TDP model.

    ``processes`` gives shares: CPU seconds per pid for packages, resident memory for DRAM.
    Idle baseline per domain: ``idle_power_w[device_id]`` if given, else the lowest interval-average
    power seen so far on that domain (a busy start over-reports idle until the machine rests).
    """

    def __init__(
        self,
        root: str | Path = "/sys/class/powercap",
        clock: Clock | None = None,
        processes: ProcessSource | None = None,
        idle_power_w: dict[str, float] | None = None,
    ) -> None:
        self._root = Path(root)
        self._idle_power_w = dict(idle_power_w or {})
        self._domains = _discover(self._root)
        for d in self._domains:
            _read_uj(d.energy_path)  # fail now, not in the sampling loop
        self._cpu_shares = ShareTracker(processes)
        self._rss_shares = ShareTracker(processes)
        if clock is not None:
            self._open(clock.time())

    def devices(self) -> list[DeviceInfo]:
        return [
            DeviceInfo(
                device_id=d.device_id,
                device_class=d.device_class,
                name=f"RAPL {d.name}",
                method=METHOD,
                provenance=Provenance.MEASURED,
                detail=str(d.energy_path.parent),
            )
            for d in self._domains
        ]

    polls = False

    def poll(self, now_s: float) -> None:
        # RAPL counters are read at collect only: one read per second is exact for energy, and the
        # interval shape is not needed for CPU attribution.
        if any(d.start_s is None for d in self._domains):
            self._open(now_s)

    def collect(self, now_s: float) -> list[EnergyInterval]:
        if any(d.start_s is None for d in self._domains):
            self._open(now_s)
            return []
        cpu_shares = self._cpu_shares.cpu(now_s)
        rss_shares = self._rss_shares.rss(now_s)
        out = []
        for d in self._domains:
            assert d.start_s is not None and d.last_uj is not None
            if now_s <= d.start_s:
                continue
            value_uj = _read_uj(d.energy_path)
            delta_uj = value_uj - d.last_uj
            if delta_uj < 0:
                # The counter wrapped at max_energy_range_uj. At most one wrap per interval: a
                # package takes minutes to hours to wrap (~262 kJ), far longer than one interval.
                delta_uj += d.max_range_uj
            energy_j = delta_uj / 1e6
            duration_s = now_s - d.start_s
            power_w = energy_j / duration_s
            if d.min_power_w is None or power_w < d.min_power_w:
                d.min_power_w = power_w
            idle_w = self._idle_power_w.get(d.device_id, d.min_power_w)
            out.append(
                EnergyInterval(
                    device_id=d.device_id,
                    device_class=d.device_class,
                    start_s=d.start_s,
                    end_s=now_s,
                    energy_j=energy_j,
                    idle_energy_j=min(energy_j, idle_w * duration_s),
                    provenance=Provenance.MEASURED,
                    method=METHOD,
                    shares=cpu_shares if d.device_class is DeviceClass.CPU else rss_shares,
                    segments=((now_s, energy_j),),
                )
            )
            d.last_uj, d.start_s = value_uj, now_s
        return out

    def close(self) -> None:
        pass

    def _open(self, now_s: float) -> None:
        for d in self._domains:
            d.last_uj = _read_uj(d.energy_path)
            d.start_s = now_s
        self._cpu_shares.cpu(now_s)


def _discover(root: Path) -> list[_Domain]:
    if not root.is_dir():
        raise NotSupported(f"no RAPL: {root} does not exist (no powercap driver, or inside a VM)")
    found: dict[str, Path] = {}
    for top in sorted(root.iterdir()):
        if _DOMAIN_RE.match(top.name):
            found.setdefault(top.name, top)
            if top.is_dir():
                for sub in sorted(top.iterdir()):
                    if _DOMAIN_RE.match(sub.name):
                        found.setdefault(sub.name, sub)
    domains = []
    for dirname, path in sorted(found.items()):
        m = _DOMAIN_RE.match(dirname)
        assert m is not None
        name = _read_text(path / "name")
        package = int(m.group(1))
        if m.group(2) is None and name.startswith("package"):
            device_id, device_class = f"cpu{package}", DeviceClass.CPU
        elif m.group(2) is not None and name == "dram":
            device_id, device_class = f"ram{package}", DeviceClass.RAM
        else:
            continue
        domains.append(
            _Domain(
                device_id=device_id,
                device_class=device_class,
                name=name,
                energy_path=path / "energy_uj",
                max_range_uj=int(_read_text(path / "max_energy_range_uj")),
            )
        )
    if not any(d.device_class is DeviceClass.CPU for d in domains):
        raise NotSupported(f"no RAPL package domain under {root}")
    return domains


def _read_text(path: Path) -> str:
    try:
        return path.read_text().strip()
    except PermissionError:
        raise NotSupported(
            f"RAPL file {path} is not readable: permission denied (since Linux 5.10 energy_uj is "
            "root-only; run as root or grant read access, e.g. with a udev rule)"
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise NotSupported(f"RAPL file {path} is not readable: {exc}") from None


def _read_uj(path: Path) -> int:
    text = _read_text(path)
    try:
        return int(text)
    except ValueError:
        raise NotSupported(f"RAPL file {path} holds {text!r}, not a counter") from None
