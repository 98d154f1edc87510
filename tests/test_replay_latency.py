"""Replayed reads that take as long as a real device's, and the collector's parallel counter reads.

No timing is asserted (performance lives in benchmarks/): these check that the latency profile is
what the setting names, that reads still return the trace's values, and that reading 8 counters on
the pool closes exactly the intervals that reading them one by one does, faults included."""

import threading
from pathlib import Path

import pytest

from carbonwatch.clock import ManualClock
from carbonwatch.collectors.gpu import GpuCollector
from carbonwatch.collectors.trace import load_trace
from carbonwatch.collectors.trace_gpu import (
    READ_LATENCIES,
    Fault,
    FaultKind,
    ReadLatency,
    ReplayGpuBackend,
    drive,
    read_latency,
)
from carbonwatch.errors import InputError

TRACE = Path(__file__).parent / "fixtures" / "h200-shared-gpu"


def test_h200_profile_is_the_measured_read_times():
    h200 = read_latency("h200")
    assert (h200.counter_s, h200.power_s, h200.util_s, h200.process_s) == (
        3.8e-3, 1.2e-6, 1.4e-6, 10e-6)
    assert read_latency(None) == read_latency("none") == ReadLatency()


def test_unknown_profile_names_the_choices():
    with pytest.raises(InputError, match="'a100'.*none, h200"):
        read_latency("a100")


def test_slow_reads_return_the_same_values():
    trace = load_trace(TRACE)
    clock = ManualClock(trace.start_s + 5.0)
    fast = ReplayGpuBackend(trace, clock).device(0)
    slow = ReplayGpuBackend(trace, clock, latency=READ_LATENCIES["h200"]).device(0)
    assert slow.total_energy_mj() == fast.total_energy_mj()
    assert slow.power_mw() == fast.power_mw()
    assert slow.process_utilization(0) == fast.process_utilization(0)


class _Recording(ReplayGpuBackend):
    """Notes which threads read the counters (to see that the pool, not the caller, read them)."""

    threads: set[str]

    def device(self, index):  # type: ignore[override]
        dev = super().device(index)
        backend = self
        inner = dev.total_energy_mj

        def total_energy_mj() -> int:
            backend.threads.add(threading.current_thread().name)
            return inner()

        dev.total_energy_mj = total_energy_mj  # type: ignore[method-assign]
        return dev


def _intervals(devices: int, faults=()):
    trace = load_trace(TRACE)
    clock = ManualClock(trace.start_s)
    backend = _Recording(trace, clock, devices=devices, faults=faults)
    backend.threads = set()
    collector = GpuCollector(backend, clock=clock)
    try:
        out = list(drive(collector, clock, trace.start_s, trace.end_s))
    finally:
        collector.close()
    return out, backend.threads


def _key(iv):
    return (iv.device_id, iv.start_s, iv.end_s, iv.energy_j, iv.method, iv.provenance)


def test_parallel_counter_reads_close_the_same_intervals_as_one_device_alone():
    trace = load_trace(TRACE)
    t0 = trace.start_s
    faults = [
        Fault(FaultKind.TIMEOUT, device=2, start_s=t0 + 5, end_s=t0 + 8,
              reads=frozenset({"counter"})),
        Fault(FaultKind.COUNTER_RESET, device=5, start_s=t0 + 12.35),
        Fault(FaultKind.LOST, device=7, start_s=t0 + 20),
    ]
    eight, threads = _intervals(8, faults)
    assert any(name.startswith("carbonwatch-counter") for name in threads)
    # Each device of the eight must close what it closes when served alone (read inline).
    for index in (0, 2, 5, 7):
        alone_faults = [Fault(f.kind, device=0, start_s=f.start_s, end_s=f.end_s, reads=f.reads)
                        for f in faults if f.device == index]
        alone, alone_threads = _intervals(1, alone_faults)
        assert not any(name.startswith("carbonwatch-counter") for name in alone_threads)
        mine = [iv for iv in eight if iv.device_id == f"gpu{index}"]
        assert [_key(iv)[1:] for iv in mine] == [_key(iv)[1:] for iv in alone]
        assert mine, index
    # Energy still equals the trace's counter over its span for an untouched device.
    total_j = sum(iv.energy_j for iv in eight if iv.device_id == "gpu0")
    assert total_j == pytest.approx(trace.energy_j, rel=0.01)


def test_a_slow_read_lasts_the_profile_s_time_in_all():
    """The profile is the whole call's time as measured (pynvml included): a replayed read lasts
    at least that long, its own work counted in, and a read slower than that is not held."""
    import time

    from carbonwatch.collectors.trace_gpu import ReadLatency

    lat = ReadLatency(counter_s=0.2)
    started = time.perf_counter()
    lat.finish(lat.counter_s, started)
    assert time.perf_counter() - started >= 0.2
    started = time.perf_counter() - 1.0  # this read already took a second: no wait added
    before = time.perf_counter()
    lat.finish(lat.counter_s, started)
    assert time.perf_counter() - before < 0.2
