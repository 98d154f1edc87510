"""GpuCollector under the faults real GPUs show: counter resets, no counter, lost devices,
timeouts and junk power readings (injected through the replay backend's fault hooks)."""

import logging
import math
from pathlib import Path

import pytest

from carbonwatch.clock import ManualClock
from carbonwatch.collectors.gpu import GpuCollector
from carbonwatch.collectors.trace import load_trace
from carbonwatch.collectors.trace_gpu import Fault, FaultKind, ReplayGpuBackend, drive
from carbonwatch.model import DeviceState, Provenance

TRACE = Path(__file__).parent / "fixtures" / "h200-shared-gpu"


def _run(faults, devices=1, power_interval_s=0.1):
    trace = load_trace(TRACE)
    clock = ManualClock(trace.start_s)
    collector = GpuCollector(ReplayGpuBackend(trace, clock, devices=devices, faults=faults))
    intervals = list(drive(collector, clock, trace.start_s, trace.end_s, power_interval_s))
    return trace, collector, intervals


def test_counter_reset_rebaselines_and_estimates_that_interval(caplog):
    trace = load_trace(TRACE)
    reset_s = trace.start_s + 12.35
    with caplog.at_level(logging.WARNING):
        _, collector, intervals = _run([Fault(FaultKind.COUNTER_RESET, start_s=reset_s)])
    estimated = [i for i in intervals if i.provenance is Provenance.ESTIMATED]
    assert len(estimated) == 1
    (est,) = estimated
    assert est.start_s < reset_s <= est.end_s
    assert est.method == "nvml-power-integral" and est.energy_j > 0
    assert sum("reset" in r.getMessage() for r in caplog.records) == 1
    # Every other interval is still the counter's delta: the total stays close to the truth.
    total_j = math.fsum(i.energy_j for i in intervals)
    assert total_j == pytest.approx(trace.energy_j, rel=0.01)
    assert collector.devices()[0].state is DeviceState.OK


def test_unsupported_counter_integrates_power_close_to_the_counter():
    trace, collector, intervals = _run([Fault(FaultKind.COUNTER_UNSUPPORTED)])
    assert all(i.provenance is Provenance.ESTIMATED for i in intervals)
    assert all(i.method == "nvml-power-integral" for i in intervals)
    assert all(i.energy_j > 0 for i in intervals)  # never zero
    total_j = math.fsum(i.energy_j for i in intervals)
    assert total_j == pytest.approx(trace.energy_j, rel=0.02)  # README: +0.5 % at 10 ms
    for iv in intervals:
        assert math.fsum(e for _, e in iv.segments) == pytest.approx(iv.energy_j, rel=1e-12)
    (info,) = collector.devices()
    assert info.state is DeviceState.DEGRADED
    assert info.provenance is Provenance.ESTIMATED and "counter" in info.detail


def test_counter_lost_support_mid_run_switches_to_power_integral():
    trace = load_trace(TRACE)
    _, collector, intervals = _run(
        [Fault(FaultKind.COUNTER_UNSUPPORTED, start_s=trace.start_s + 10)]
    )
    measured = [i for i in intervals if i.provenance is Provenance.MEASURED]
    estimated = [i for i in intervals if i.provenance is Provenance.ESTIMATED]
    assert measured and estimated
    assert max(i.end_s for i in measured) <= min(i.start_s for i in estimated)
    assert math.fsum(i.energy_j for i in intervals) == pytest.approx(trace.energy_j, rel=0.02)


def test_lost_gpu_stops_while_the_other_keeps_measuring():
    trace = load_trace(TRACE)
    lost_s = trace.start_s + 8.55
    _, collector, intervals = _run([Fault(FaultKind.LOST, device=1, start_s=lost_s)], devices=2)
    gpu0 = [i for i in intervals if i.device_id == "gpu0"]
    gpu1 = [i for i in intervals if i.device_id == "gpu1"]
    assert math.fsum(i.energy_j for i in gpu0) == pytest.approx(trace.energy_j, rel=1e-9)
    assert gpu1 and max(i.end_s for i in gpu1) <= lost_s
    # The part-second before the loss is estimated from its power samples, not dropped.
    assert gpu1[-1].provenance is Provenance.ESTIMATED and gpu1[-1].energy_j > 0
    states = {d.device_id: d.state for d in collector.devices()}
    assert states == {"gpu0": DeviceState.OK, "gpu1": DeviceState.LOST}


def test_counter_timeout_keeps_the_interval_open():
    trace = load_trace(TRACE)
    fault = Fault(
        FaultKind.TIMEOUT,
        start_s=trace.start_s + 4.5,
        end_s=trace.start_s + 7.5,
        reads=frozenset({"counter"}),
    )
    _, _, intervals = _run([fault])
    assert math.fsum(i.energy_j for i in intervals) == pytest.approx(trace.energy_j, rel=1e-9)
    long = [i for i in intervals if i.duration_s > 1.5]
    assert len(long) == 1 and long[0].duration_s == pytest.approx(4.0)
    assert long[0].provenance is Provenance.MEASURED


def test_power_timeouts_and_junk_readings_do_not_disturb_the_counter():
    trace = load_trace(TRACE)
    faults = [
        Fault(FaultKind.POWER_ZERO, start_s=trace.start_s + 2, end_s=trace.start_s + 5),
        Fault(FaultKind.POWER_ABSURD, start_s=trace.start_s + 6, end_s=trace.start_s + 9),
        Fault(
            FaultKind.TIMEOUT,
            start_s=trace.start_s + 10,
            end_s=trace.start_s + 12,
            reads=frozenset({"power", "process"}),
        ),
    ]
    _, _, intervals = _run(faults)
    assert math.fsum(i.energy_j for i in intervals) == pytest.approx(trace.energy_j, rel=1e-9)
    for iv in intervals:
        assert math.fsum(e for _, e in iv.segments) == pytest.approx(iv.energy_j, rel=1e-12)
        # A 0 W glitch must not become the idle baseline, nor 4 MW make idle exceed energy.
        assert iv.idle_energy_j / iv.duration_s > 40


def test_junk_power_is_not_integrated_when_the_counter_is_missing():
    trace = load_trace(TRACE)
    faults = [
        Fault(FaultKind.COUNTER_UNSUPPORTED),
        Fault(FaultKind.POWER_ABSURD, start_s=trace.start_s + 6, end_s=trace.start_s + 7),
    ]
    _, _, intervals = _run(faults)
    assert math.fsum(i.energy_j for i in intervals) == pytest.approx(trace.energy_j, rel=0.03)
