"""The RAM model: 3 W per 8 GiB installed, idle = the unused fraction, shares by RSS."""

import pytest

from carbonwatch.collectors.processes import ProcessSnapshot, ProcInfo
from carbonwatch.collectors.ram import RamModelCollector
from carbonwatch.model import OTHER, DeviceClass, Provenance

GIB = 1024**3


class _Processes:
    def snapshot(self, now_s):
        procs = {5: ProcInfo(1, 0.0, 0.0, 2 * GIB), 6: ProcInfo(1, 0.0, 0.0, 6 * GIB)}
        return ProcessSnapshot(t_s=now_s, procs=procs, watched=frozenset({5}))


def test_energy_idle_and_rss_shares():
    collector = RamModelCollector(processes=_Processes(), memory=lambda: (64 * GIB, 16 * GIB))
    assert collector.collect(0.0) == []
    (iv,) = collector.collect(10.0)
    assert iv.device_id == "ram" and iv.device_class is DeviceClass.RAM
    assert iv.energy_j == pytest.approx(64 * 3 / 8 * 10)  # 24 W for 10 s
    assert iv.idle_energy_j == pytest.approx(iv.energy_j * 0.75)  # 48 of 64 GiB unused
    assert dict(iv.shares) == {5: 2.0 * GIB, OTHER: 6.0 * GIB}
    assert iv.provenance is Provenance.ESTIMATED and iv.method == "ram-model"


def test_real_machine_memory_gives_a_plausible_figure():
    collector = RamModelCollector()
    (info,) = collector.devices()
    assert "GiB" in info.name and "3 W per 8 GB" in info.detail
    collector.collect(0.0)
    (iv,) = collector.collect(1.0)
    assert 0.1 < iv.energy_j < 1000 and 0 <= iv.idle_energy_j <= iv.energy_j
