"""Choosing collectors by backend name, with notes explaining each fallback."""

import math
from pathlib import Path

import pynvml
import pytest

from carbonwatch.clock import ManualClock
from carbonwatch.collectors.cpu_model import TdpCpuCollector
from carbonwatch.collectors.detect import build_collectors
from carbonwatch.collectors.gpu import GpuCollector
from carbonwatch.collectors.ram import RamModelCollector
from carbonwatch.collectors.rapl import RaplCollector
from carbonwatch.collectors.trace import load_trace
from carbonwatch.collectors.trace_gpu import drive
from carbonwatch.errors import ConfigError, DeviceError, InputError

TRACE = Path(__file__).parent / "fixtures" / "h200-shared-gpu"


def _nvml_present() -> bool:
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        return False
    pynvml.nvmlShutdown()
    return True


no_gpu = pytest.mark.skipif(_nvml_present(), reason="this machine has an NVIDIA driver")


def _rapl_tree(root, with_dram):
    pkg = root / "intel-rapl:0"
    pkg.mkdir(parents=True)
    for path, name in [(pkg, "package-0")] + ([(pkg / "intel-rapl:0:0", "dram")] * with_dram):
        path.mkdir(exist_ok=True)
        (path / "name").write_text(name)
        (path / "energy_uj").write_text("1000")
        (path / "max_energy_range_uj").write_text("262143328850")
    return root


def test_none_without_rapl_uses_the_tdp_and_ram_models(tmp_path):
    collectors, notes = build_collectors("none", rapl_root=tmp_path / "no-powercap")
    assert [type(c) for c in collectors] == [TdpCpuCollector, RamModelCollector]
    assert any(n.startswith("CPU:") and "does not exist" in n and "TDP" in n for n in notes)
    assert any(n.startswith("GPU: not measured") for n in notes)


def test_readable_rapl_with_dram_replaces_both_models(tmp_path):
    collectors, notes = build_collectors("none", rapl_root=_rapl_tree(tmp_path / "pc", True))
    assert [type(c) for c in collectors] == [RaplCollector]
    assert any("RAM model not used" in n for n in notes)


def test_rapl_without_dram_keeps_the_ram_model(tmp_path):
    collectors, _ = build_collectors("none", rapl_root=_rapl_tree(tmp_path / "pc", False))
    assert [type(c) for c in collectors] == [RaplCollector, RamModelCollector]


@no_gpu
def test_auto_without_a_driver_notes_why_and_measures_the_cpu(tmp_path):
    collectors, notes = build_collectors("auto", rapl_root=tmp_path / "none")
    assert not any(isinstance(c, GpuCollector) for c in collectors)
    assert any("GPU: not measured" in n and "no NVIDIA driver" in n for n in notes)
    assert any(isinstance(c, TdpCpuCollector) for c in collectors)


@no_gpu
def test_nvml_required_but_absent_is_an_error(tmp_path):
    with pytest.raises(DeviceError, match="backend 'nvml' requested but unusable"):
        build_collectors("nvml", rapl_root=tmp_path)


def test_replay_backend_serves_the_trace_gpu_only():
    trace = load_trace(TRACE)
    clock = ManualClock(trace.start_s)
    collectors, notes = build_collectors(f"replay:{TRACE}", clock=clock)
    (collector,) = collectors
    assert isinstance(collector, GpuCollector)
    assert any("replaying" in n for n in notes)
    intervals = list(drive(collector, clock, trace.start_s, trace.end_s))
    assert math.fsum(i.energy_j for i in intervals) == pytest.approx(trace.energy_j, rel=1e-9)


def test_bad_backend_names_are_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="unknown collector backend"):
        build_collectors("cuda")
    with pytest.raises(ConfigError, match="needs a trace directory"):
        build_collectors("replay:")
    with pytest.raises(InputError, match="not found"):
        build_collectors(f"replay:{tmp_path / 'missing'}")
