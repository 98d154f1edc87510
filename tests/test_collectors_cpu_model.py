"""CPU energy from codecarbon's TDP table and its load formula, where RAPL is unreadable."""

import os
import subprocess
import sys
import time

import psutil
import pytest

from carbonwatch.collectors.cpu_model import (
    TdpCpuCollector,
    cpu_tdp,
    detect_cpu_brand,
    load_cpu_power_table,
    match_cpu,
    power_from_load_w,
)
from carbonwatch.collectors.detect import default_process_scanner
from carbonwatch.collectors.processes import ProcessSnapshot, ProcInfo
from carbonwatch.collectors.procfs import busy_cpu_seconds, total_cpu_seconds
from carbonwatch.errors import DeviceError
from carbonwatch.model import OTHER, DeviceClass, Provenance


def test_table_is_read_from_the_installed_codecarbon_without_importing_it():
    code = (
        "import sys; from carbonwatch.collectors.cpu_model import load_cpu_power_table as t;"
        "print(len(t()), 'codecarbon' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    count, imported = out.stdout.split()
    assert int(count) > 4000 and imported == "False", out.stderr


@pytest.mark.parametrize(
    ("brand", "name", "tdp_w"),
    [
        ("Intel(R) Xeon(R) Platinum 8480+ CPU @ 2.00GHz", "Intel Xeon Platinum 8480+", 350.0),
        ("AMD EPYC 7763 64-Core Processor", "AMD EPYC 7763", 280.0),
        ("Intel(R) Core(TM) i7-10510U CPU @ 1.80GHz", "Intel Core i7-10510U", 15.0),
        ("Intel(R) Xeon(R) CPU E5-2690 v4 @ 2.60GHz", "Intel Xeon E5-2690 v4", 135.0),
    ],
)
def test_brand_strings_match_the_table(brand, name, tdp_w):
    table = load_cpu_power_table()
    assert match_cpu(brand, table) == name
    got = cpu_tdp(brand, table)
    assert got.tdp_w == tdp_w and got.matched == name and name in got.detail


def test_unknown_or_vague_cpu_falls_back_to_4_w_per_thread_and_says_so():
    got = cpu_tdp("AMD EPYC", load_cpu_power_table(), threads=16)  # a VM hiding the model
    assert got.matched is None and got.tdp_w == 64.0
    assert "not in codecarbon's CPU table" in got.detail and "16 logical CPUs" in got.detail
    collector = TdpCpuCollector(tdp=got, load=lambda now_s: 0.0)
    (info,) = collector.devices()
    assert info.provenance is Provenance.ESTIMATED and info.method == "tdp-model"
    assert info.detail == got.detail


def test_ambiguous_match_is_refused():
    table = {"Acme X1 Fast": 100.0, "Acme X1 Slow": 50.0}
    assert match_cpu("Acme X1", table) is None
    assert match_cpu("Acme X1 Fast CPU @ 3.0GHz", table) == "Acme X1 Fast"


def test_load_formula_is_codecarbons_cubic_with_a_10_percent_floor():
    assert power_from_load_w(200.0, 0.0) == pytest.approx(20.0)
    assert power_from_load_w(200.0, 0.5) == pytest.approx(200.0 * (0.1 + 0.9 * 0.125))
    assert power_from_load_w(200.0, 1.0) == pytest.approx(200.0)
    assert power_from_load_w(200.0, 1.7) == pytest.approx(200.0)  # clamped


def test_brand_is_read_from_cpuinfo(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nvendor_id\t: GenuineIntel\nmodel name\t: Acme X1 Fast\n")
    assert detect_cpu_brand(cpuinfo) == "Acme X1 Fast"


class _Processes:
    def snapshot(self, now_s):
        procs = {9: ProcInfo(1, 0.0, now_s * 0.5, 10), 3: ProcInfo(1, 0.0, now_s, 10)}
        return ProcessSnapshot(t_s=now_s, procs=procs, watched=frozenset({9}))


def test_collector_energy_idle_and_shares():
    loads = iter([0.0, 0.5, 1.0])
    tdp = cpu_tdp("Acme X1 Fast", {"Acme X1 Fast": 100.0})
    collector = TdpCpuCollector(tdp=tdp, processes=_Processes(), load=lambda now_s: next(loads))
    assert collector.collect(10.0) == []
    (a,) = collector.collect(12.0)
    assert a.device_id == "cpu" and a.device_class is DeviceClass.CPU
    assert a.energy_j == pytest.approx(2 * 100.0 * (0.1 + 0.9 * 0.125))
    assert a.idle_energy_j == pytest.approx(2 * 10.0)
    assert dict(a.shares) == {9: pytest.approx(1.0), OTHER: pytest.approx(2.0)}
    (b,) = collector.collect(13.0)
    assert b.energy_j == pytest.approx(100.0) and b.provenance is Provenance.ESTIMATED


class _MachineTimes:
    """Snapshots that carry /proc/stat's busy and total CPU seconds, as the light scan's do."""

    def __init__(self, figures):
        self._figures = iter(figures)

    def snapshot(self, now_s):
        busy_s, total_s = next(self._figures)
        if busy_s is None:
            return ProcessSnapshot(t_s=now_s, procs={}, watched=frozenset({9}))
        procs = {9: ProcInfo(1, 0.0, busy_s / 2, 10)}
        return ProcessSnapshot(t_s=now_s, procs=procs, watched=frozenset({9}), busy_cpu_s=busy_s,
                               total_cpu_s=total_s, rest_from_busy=True)


def test_load_comes_from_the_snapshots_cpu_times_without_reading_proc_stat_again(monkeypatch):
    def no_second_read():
        raise AssertionError("psutil.cpu_times() read: the snapshot's figures should be used")

    monkeypatch.setattr(psutil, "cpu_times", no_second_read)
    tdp = cpu_tdp("Acme X1 Fast", {"Acme X1 Fast": 100.0})
    source = _MachineTimes([(0.0, 0.0), (4.0, 8.0), (12.0, 16.0), (None, None)])
    collector = TdpCpuCollector(tdp=tdp, processes=source)
    assert collector.collect(10.0) == []
    (a,) = collector.collect(12.0)  # 4 of 8 CPU seconds busy
    assert a.energy_j == pytest.approx(2 * 100.0 * (0.1 + 0.9 * 0.5**3))
    assert dict(a.shares) == {9: pytest.approx(2.0), OTHER: pytest.approx(2.0)}
    (b,) = collector.collect(13.0)  # 8 of 8
    assert b.energy_j == pytest.approx(100.0)
    with pytest.raises(DeviceError, match="CPU load unknown"):  # never a made-up load
        collector.collect(14.0)


def test_without_machine_times_in_the_snapshots_the_load_is_psutils():
    tdp = cpu_tdp("Acme X1 Fast", {"Acme X1 Fast": 100.0})
    collector = TdpCpuCollector(tdp=tdp, processes=_Processes())
    collector.collect(10.0)
    (a,) = collector.collect(11.0)
    assert 10.0 <= a.energy_j <= 100.0 and a.idle_energy_j == pytest.approx(10.0)


def test_the_light_scans_load_agrees_with_psutil_over_the_same_interval():
    """The truth: psutil's own parse of /proc/stat just outside the collector's interval."""
    scanner = default_process_scanner(watched_only=True)
    scanner.watch(os.getpid())
    tdp = cpu_tdp("Acme X1 Fast", {"Acme X1 Fast": 100.0})
    collector = TdpCpuCollector(tdp=tdp, processes=scanner)
    before = psutil.cpu_times()
    collector.collect(0.0)
    cpu0 = time.process_time()
    while time.process_time() < cpu0 + 0.3:  # a busy interval, so the load is not ~0
        sum(i * i for i in range(10_000))
    (iv,) = collector.collect(1.0)
    after = psutil.cpu_times()
    truth = (busy_cpu_seconds(after) - busy_cpu_seconds(before)) / (
        total_cpu_seconds(after) - total_cpu_seconds(before))
    load = ((iv.energy_j / 100.0 - 0.1) / 0.9) ** (1 / 3)
    assert load == pytest.approx(truth, abs=0.1)
    assert iv.shares[os.getpid()] >= 0.2
