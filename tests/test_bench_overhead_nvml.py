"""benchmarks/bench_overhead.py's like-for-like pair with GPUs: codecarbon reads GPUs only through
``pynvml``, so both tools read the replayed H200s through the fake module (tests/fake_pynvml.py
over the replay). These tests hold that the fake answers codecarbon's calls as nvidia-ml-py does,
and that carbonwatch measures exactly the same through it as from the replay directly: the pair
reads the same GPUs."""

import bisect
import importlib.util
import sys
from pathlib import Path

import fake_pynvml as fake
import pynvml
import pytest
from fake_pynvml import FakeGpu, NVMLError, make_module

from carbonwatch.clock import ManualClock
from carbonwatch.collectors.gpu import GpuCollector
from carbonwatch.collectors.nvml import NvmlBackend
from carbonwatch.collectors.trace import load_trace, repeat_trace
from carbonwatch.collectors.trace_gpu import ReplayGpuBackend

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("bench_overhead", ROOT / "benchmarks" /
                                               "bench_overhead.py")
bench = importlib.util.module_from_spec(_spec)
sys.modules.setdefault("bench_overhead", bench)
_spec.loader.exec_module(bench)
TRACE = ROOT / "tests" / "fixtures" / "h200-shared-gpu"


def test_the_calls_codecarbon_adds_answer_as_nvidia_ml_py_does():
    assert [f for f, _ in pynvml.c_nvmlMemory_t._fields_][:3] == ["total", "free", "used"]
    assert fake.NVML_TEMPERATURE_GPU == pynvml.NVML_TEMPERATURE_GPU
    assert fake.NVML_COMPUTEMODE_DEFAULT == pynvml.NVML_COMPUTEMODE_DEFAULT
    nv = make_module([FakeGpu("GPU-0", memory_used_bytes=1 << 30, temperature_c=41)])
    nv.nvmlInit()
    h = nv.nvmlDeviceGetHandleByIndex(0)
    mem = nv.nvmlDeviceGetMemoryInfo(h)
    assert (mem.used, mem.total - mem.free) == (1 << 30, 1 << 30)
    assert nv.nvmlDeviceGetTemperature(h, nv.NVML_TEMPERATURE_GPU) == 41
    with pytest.raises(NVMLError) as bad:
        nv.nvmlDeviceGetTemperature(h, 7)
    assert bad.value.value == fake.NVML_ERROR_INVALID_ARGUMENT
    assert nv.nvmlDeviceGetEnforcedPowerLimit(h) == 700_000  # mW, as NVML reports it
    assert nv.nvmlDeviceGetComputeMode(h) == pynvml.NVML_COMPUTEMODE_DEFAULT
    assert nv.nvmlDeviceGetGraphicsRunningProcesses(h) == []
    nv.nvmlShutdown()
    with pytest.raises(NVMLError) as early:
        nv.nvmlDeviceGetMemoryInfo(h)
    assert early.value.value == fake.NVML_ERROR_UNINITIALIZED


def _measure(through_nvml: bool) -> list[tuple[str, float, float, dict]]:
    clock = ManualClock(0.0)
    trace = repeat_trace(load_trace(TRACE), 2)
    backend = ReplayGpuBackend(trace, clock, devices=2, start_at_s=trace.start_s)
    clock.set(trace.start_s)
    if through_nvml:
        backend = NvmlBackend(nvml=bench.replayed_pynvml(backend, clock))
    collector = GpuCollector(backend, clock=clock)
    out = []
    for k in range(1, 45 * 10 + 1):
        clock.set(trace.start_s + k / 10)
        collector.poll(clock.time())
        if k % 10 == 0:
            out += [(i.device_id, i.end_s, i.energy_j, i.shares)
                    for i in collector.collect(clock.time())]
    collector.close()
    return out


def test_carbonwatch_measures_the_same_through_the_fake_pynvml_as_from_the_replay():
    direct, through = _measure(False), _measure(True)
    assert len(direct) == len(through) == 2 * 45
    for a, b in zip(direct, through, strict=True):
        assert a[:3] == b[:3]  # same device, same interval, same counter energy
        assert a[3].keys() == b[3].keys()
        assert all(a[3][k] == pytest.approx(b[3][k], abs=1e-9) for k in a[3])
    shared = [shares for _, _, _, shares in through if len(shares) == 2]
    assert shared, "the recording's shared phase reaches the split through pynvml too"
    # Both are the recorded counter's: its last reading by 45 s minus its first, per device.
    trace = repeat_trace(load_trace(TRACE), 2)
    at = bisect.bisect_right(trace.energy_t_s, trace.start_s + 45.0) - 1
    counter_j = (trace.energy_mj[at] - trace.energy_mj[0]) / 1000
    assert sum(e for _, _, e, _ in through) == pytest.approx(2 * counter_j, rel=1e-9)
