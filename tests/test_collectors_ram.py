"""The RAM model: 3 W per 8 GiB installed, idle = the unused fraction, shares by RSS."""

import pytest

from carbonwatch.collectors.processes import ProcessSnapshot, ProcInfo
from carbonwatch.collectors.ram import MeminfoMemory, RamModelCollector
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


def test_memory_is_meminfos_two_fields_and_psutil_where_they_are_missing(tmp_path):
    import psutil

    vm = psutil.virtual_memory()
    total, used = MeminfoMemory()()
    assert total == vm.total
    assert used == pytest.approx(vm.total - vm.available, abs=64 * 1024**2)  # moments apart
    fake = tmp_path / "meminfo"
    fake.write_text("MemTotal: 1000 kB\nMemFree: 600 kB\nMemAvailable: 750 kB\n")
    assert MeminfoMemory(str(fake))() == (1000 * 1024, 250 * 1024)
    fake.write_text("MemTotal: 1000 kB\nMemFree: 600 kB\n")  # no MemAvailable: psutil estimates
    assert MeminfoMemory(str(fake))()[0] == vm.total
    assert MeminfoMemory(str(tmp_path / "absent"))()[0] == vm.total


def test_with_the_light_scan_the_shares_sum_to_the_used_memory():
    """One /proc/meminfo read a tick: the scan's, for OTHER and for the used fraction alike."""
    import os

    from carbonwatch.collectors.detect import default_process_scanner

    scanner = default_process_scanner(watched_only=True)
    scanner.watch(os.getpid())
    collector = RamModelCollector(processes=scanner)
    collector.collect(0.0)
    (iv,) = collector.collect(2.0)
    total_bytes = iv.energy_j / (3 / 8 * 2.0) * GIB
    used_bytes = total_bytes * (1 - iv.idle_energy_j / iv.energy_j)
    assert set(iv.shares) == {os.getpid(), OTHER}
    assert sum(iv.shares.values()) == pytest.approx(used_bytes, rel=1e-9)
