"""RAPL over a real powercap directory tree built in tmp_path, counter wraparound included."""

import pytest

from carbonwatch.clock import ManualClock
from carbonwatch.collectors.processes import ProcessSnapshot, ProcInfo
from carbonwatch.collectors.rapl import RaplCollector
from carbonwatch.errors import NotSupported
from carbonwatch.model import OTHER, DeviceClass, Provenance

MAX_UJ = 262_143_328_850  # a real package's max_energy_range_uj


def _domain(path, name, energy_uj, max_uj=MAX_UJ):
    path.mkdir(parents=True)
    (path / "name").write_text(name + "\n")
    (path / "energy_uj").write_text(f"{energy_uj}\n")
    (path / "max_energy_range_uj").write_text(f"{max_uj}\n")
    return path


@pytest.fixture
def powercap(tmp_path):
    """Two packages, each with core and dram subdomains, as on a two-socket server."""
    root = tmp_path / "powercap"
    (root / "intel-rapl").mkdir(parents=True)  # the control type itself: not a domain
    for n in (0, 1):
        pkg = _domain(root / f"intel-rapl:{n}", f"package-{n}", 1_000_000)
        _domain(pkg / f"intel-rapl:{n}:0", "core", 500_000)
        _domain(pkg / f"intel-rapl:{n}:1", "dram", 2_000_000, max_uj=65_712_999_613)
    return root


def _set(root, domain, energy_uj):
    path = next(root.rglob(f"{domain}/energy_uj"))
    path.write_text(f"{energy_uj}\n")


def test_packages_and_dram_are_measured_devices(powercap):
    collector = RaplCollector(powercap)
    infos = {d.device_id: d for d in collector.devices()}
    assert set(infos) == {"cpu0", "cpu1", "ram0", "ram1"}
    assert infos["cpu0"].device_class is DeviceClass.CPU
    assert infos["ram1"].device_class is DeviceClass.RAM
    assert all(d.method == "rapl" and d.provenance is Provenance.MEASURED for d in infos.values())


def test_energy_is_the_counter_delta(powercap):
    collector = RaplCollector(powercap, clock=ManualClock(100.0))
    _set(powercap, "intel-rapl:0", 1_000_000 + 45_000_000)  # 45 J in 1 s
    _set(powercap, "intel-rapl:0:1", 2_000_000 + 6_000_000)
    by_id = {i.device_id: i for i in collector.collect(101.0)}
    assert by_id["cpu0"].energy_j == pytest.approx(45.0)
    assert by_id["ram0"].energy_j == pytest.approx(6.0)
    assert by_id["cpu1"].energy_j == 0.0
    assert by_id["cpu0"].start_s == 100.0 and by_id["cpu0"].end_s == 101.0
    assert by_id["cpu0"].segments == ((101.0, pytest.approx(45.0)),)


def test_counter_wraparound_uses_max_energy_range(powercap):
    _set(powercap, "intel-rapl:0", MAX_UJ - 1_000_000)
    collector = RaplCollector(powercap)
    assert collector.collect(10.0) == []  # opens the interval
    _set(powercap, "intel-rapl:0", 500_000)  # wrapped: 1 J before the wrap + 0.5 J after
    by_id = {i.device_id: i for i in collector.collect(11.0)}
    assert by_id["cpu0"].energy_j == pytest.approx(1.5)
    _set(powercap, "intel-rapl:0", 3_500_000)
    by_id = {i.device_id: i for i in collector.collect(12.0)}
    assert by_id["cpu0"].energy_j == pytest.approx(3.0)


def test_idle_is_the_lowest_average_power_seen(powercap):
    collector = RaplCollector(powercap, clock=ManualClock(0.0))
    energy_uj = 1_000_000
    idle = []
    for t, watts in ((1, 80), (2, 30), (3, 120)):
        energy_uj += watts * 1_000_000
        _set(powercap, "intel-rapl:0", energy_uj)
        (cpu0,) = [i for i in collector.collect(float(t)) if i.device_id == "cpu0"]
        idle.append(cpu0.idle_energy_j)
    assert idle == pytest.approx([80.0, 30.0, 30.0])


class _Processes:
    """A ProcessSource at the seam: pid 42 is watched, pid 7 is the rest of the machine."""

    def snapshot(self, now_s):
        cpu = now_s  # each pid accrues 1 CPU second per second
        procs = {
            42: ProcInfo(ppid=1, create_time_s=0.0, cpu_s=cpu, rss_bytes=1000),
            7: ProcInfo(ppid=1, create_time_s=0.0, cpu_s=cpu * 3, rss_bytes=3000),
        }
        return ProcessSnapshot(t_s=now_s, procs=procs, watched=frozenset({42}))


def test_shares_come_from_the_process_source(powercap):
    collector = RaplCollector(powercap, clock=ManualClock(10.0), processes=_Processes())
    by_id = {i.device_id: i for i in collector.collect(12.0)}
    assert dict(by_id["cpu0"].shares) == {42: pytest.approx(2.0), OTHER: pytest.approx(6.0)}
    assert dict(by_id["ram0"].shares) == {42: 1000.0, OTHER: 3000.0}


def test_missing_root_is_not_supported(tmp_path):
    with pytest.raises(NotSupported, match="does not exist"):
        RaplCollector(tmp_path / "nope")


def test_root_without_packages_is_not_supported(tmp_path):
    (tmp_path / "intel-rapl").mkdir()
    with pytest.raises(NotSupported, match="no RAPL package domain"):
        RaplCollector(tmp_path)


def test_unreadable_energy_file_is_not_supported(powercap):
    energy = powercap / "intel-rapl:1" / "energy_uj"
    energy.unlink()
    energy.mkdir()  # unreadable as a file even for root, unlike chmod 000
    with pytest.raises(NotSupported, match=r"intel-rapl:1/energy_uj is not readable"):
        RaplCollector(powercap)


def test_permission_denied_explains_the_fix(powercap):
    import os

    if os.geteuid() == 0:
        pytest.skip("root reads files whatever their mode")
    (powercap / "intel-rapl:0" / "energy_uj").chmod(0)
    with pytest.raises(NotSupported, match="permission denied"):
        RaplCollector(powercap)
