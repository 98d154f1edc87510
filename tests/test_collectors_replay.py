"""Replaying the recorded H200 trace through the real GpuCollector."""

import math
from pathlib import Path

import pytest

from carbonwatch.clock import ManualClock
from carbonwatch.collectors.gpu import GpuCollector
from carbonwatch.collectors.trace import load_trace
from carbonwatch.collectors.trace_gpu import ReplayGpuBackend, drive
from carbonwatch.model import DeviceClass, Provenance

TRACE = Path(__file__).parent / "fixtures" / "h200-shared-gpu"
COUNTER_DELTA_J = 8758.0  # last minus first energy row of the trace
TRAIN_PID, INFER_PID = 416, 438


def _replay(power_interval_s=0.1, counter_interval_s=1.0, devices=1):
    trace = load_trace(TRACE)
    clock = ManualClock(trace.start_s)
    collector = GpuCollector(ReplayGpuBackend(trace, clock, devices=devices))
    intervals = list(
        drive(collector, clock, trace.start_s, trace.end_s, power_interval_s, counter_interval_s)
    )
    return trace, collector, intervals


def test_replayed_energy_equals_the_counter_delta_over_the_trace():
    trace, _, intervals = _replay()
    total_j = math.fsum(i.energy_j for i in intervals)
    assert trace.energy_j == pytest.approx(COUNTER_DELTA_J, abs=0.05)
    assert total_j == pytest.approx(COUNTER_DELTA_J, rel=0.005)
    assert all(i.provenance is Provenance.MEASURED for i in intervals)
    assert all(i.method == "nvml-energy-counter" for i in intervals)


def test_intervals_tile_the_trace_without_gaps():
    trace, _, intervals = _replay()
    assert intervals[0].start_s == trace.start_s
    assert intervals[-1].end_s == trace.end_s
    for a, b in zip(intervals, intervals[1:], strict=False):
        assert b.start_s == a.end_s
    assert len(intervals) == math.ceil(trace.end_s - trace.start_s)


@pytest.mark.parametrize("power_interval_s", [0.1, 0.01])
def test_each_intervals_segments_sum_to_its_energy_and_ascend(power_interval_s):
    _, _, intervals = _replay(power_interval_s=power_interval_s)
    for iv in intervals:
        assert math.fsum(e for _, e in iv.segments) == pytest.approx(iv.energy_j, rel=1e-12)
        ends = [t for t, _ in iv.segments]
        assert ends == sorted(ends) and ends[0] > iv.start_s and ends[-1] == iv.end_s
        assert all(e >= 0 for _, e in iv.segments)
        assert len(iv.segments) >= round(iv.duration_s / power_interval_s) - 1


def test_segments_follow_the_power_shape():
    # An interval where training ramps the GPU up from idle puts far more energy in its busy
    # segments than in its idle ones; a flat split would make them equal.
    _, _, intervals = _replay()
    ratios = [
        max(e for _, e in i.segments) / min(e for _, e in i.segments)
        for i in intervals
        if min(e for _, e in i.segments) > 0
    ]
    assert max(ratios) > 2.0


def test_interval_with_one_busy_pid_shares_only_to_that_pid():
    trace, _, intervals = _replay()
    windows = trace.pid_windows()
    both_running = [
        i
        for i in intervals
        if all(windows[p][0] <= i.start_s and i.end_s <= windows[p][1] for p in windows)
    ]
    only_train = [i for i in both_running if set(i.shares) == {TRAIN_PID}]
    assert only_train, "the trace has seconds where only training uses the SMs"
    assert all(i.shares[TRAIN_PID] > 0 for i in only_train)
    assert any(set(i.shares) == {TRAIN_PID, INFER_PID} for i in intervals)


def test_shares_fall_back_to_equal_weights_over_compute_pids():
    # Between train_launch (482.7) and the first process sample (489.3) NVML has no SM samples:
    # the running compute processes share equally.
    trace, _, intervals = _replay()
    early = [i for i in intervals if i.start_s >= 1795697483.0 and i.end_s < 1795697486.0]
    assert early
    assert all(dict(i.shares) == {TRAIN_PID: 1.0} for i in early)
    before = [i for i in intervals if i.end_s < trace.pid_windows()[TRAIN_PID][0]]
    assert before and all(dict(i.shares) == {} for i in before)


def test_idle_baseline_is_the_lowest_power_seen_and_never_exceeds_energy():
    _, _, intervals = _replay()
    for iv in intervals:
        assert 0 <= iv.idle_energy_j <= iv.energy_j
    # The trace idles at ~80 W: late intervals carry about that per second as idle.
    late = intervals[-1]
    assert 60 <= late.idle_energy_j / late.duration_s <= 130


def test_configured_idle_power_is_used():
    trace = load_trace(TRACE)
    clock = ManualClock(trace.start_s)
    collector = GpuCollector(ReplayGpuBackend(trace, clock), idle_power_w=50.0)
    intervals = list(drive(collector, clock, trace.start_s, trace.end_s))
    busy = max(intervals, key=lambda i: i.energy_j)
    assert busy.idle_energy_j == pytest.approx(50.0 * busy.duration_s)


def test_n_replayed_gpus_each_measure_the_trace():
    trace, collector, intervals = _replay(devices=3)
    infos = collector.devices()
    assert [d.device_id for d in infos] == ["gpu0", "gpu1", "gpu2"]
    assert len({d.uuid for d in infos}) == 3
    assert all(d.device_class is DeviceClass.GPU and d.name == "NVIDIA H200" for d in infos)
    for device_id in ("gpu0", "gpu1", "gpu2"):
        total_j = math.fsum(i.energy_j for i in intervals if i.device_id == device_id)
        assert total_j == pytest.approx(trace.energy_j, rel=1e-9)


def test_trace_exposes_calls_and_bounds():
    trace = load_trace(TRACE)
    backend = ReplayGpuBackend(trace, ManualClock(trace.start_s))
    assert len(backend.calls) == 2671
    first = backend.calls[0]
    assert first.start_s < first.end_s and first.batch == 8
    assert backend.start_s == trace.energy_t_s[0] and backend.end_s == trace.energy_t_s[-1]
    assert trace.pids == {"train": TRAIN_PID, "infer": INFER_PID}


def test_replay_can_start_at_another_clock_time():
    trace = load_trace(TRACE)
    clock = ManualClock(1000.0)
    backend = ReplayGpuBackend(trace, clock, start_at_s=1000.0)
    collector = GpuCollector(backend)
    intervals = list(drive(collector, clock, 1000.0, 1000.0 + trace.end_s - trace.start_s))
    assert math.fsum(i.energy_j for i in intervals) == pytest.approx(trace.energy_j, rel=1e-9)
    assert any(TRAIN_PID in i.shares for i in intervals)


def test_device_reads_are_step_functions_of_time():
    trace = load_trace(TRACE)
    clock = ManualClock(trace.start_s)
    device = ReplayGpuBackend(trace, clock).device(0)
    assert device.total_energy_mj() == trace.energy_mj[0]
    clock.set((trace.energy_t_s[1] + trace.energy_t_s[2]) / 2)
    assert device.total_energy_mj() == trace.energy_mj[1]
    clock.set(trace.energy_t_s[2])
    assert device.total_energy_mj() == trace.energy_mj[2]
    assert device.power_mw() == trace.power_mw[trace.power_t_s.index(trace.energy_t_s[2])]
    clock.set(1795697496.5)
    samples = device.process_utilization(1795697496_000000)
    assert {(s.pid, s.ts_us, s.sm_pct) for s in samples} == {
        (INFER_PID, 1795697496220073, 50),
        (TRAIN_PID, 1795697496019946, 50),
    }
    assert device.compute_pids() == [TRAIN_PID, INFER_PID]
    clock.set(1795697505.0)
    assert device.compute_pids() == [INFER_PID]


def test_replayed_process_cpu_time_feeds_cpu_shares():
    from carbonwatch.collectors.processes import cpu_shares
    from carbonwatch.collectors.trace_gpu import ReplayProcessSource

    trace = load_trace(TRACE)
    source = ReplayProcessSource(trace)
    first = source.snapshot(trace.start_s)
    last = source.snapshot(trace.end_s)
    final = {}
    for row in trace.process_cpu:
        final[row.pid] = row.user_s + row.system_s
    assert cpu_shares(first, last) == pytest.approx(final)
    assert last.procs[TRAIN_PID].alive is False and last.procs[INFER_PID].alive is False


def test_collector_given_a_clock_opens_its_interval_at_construction():
    trace = load_trace(TRACE)
    clock = ManualClock(trace.start_s)
    collector = GpuCollector(ReplayGpuBackend(trace, clock), clock=clock)
    clock.set(trace.start_s + 2.0)
    (iv,) = collector.collect(trace.start_s + 2.0)
    assert iv.start_s == trace.start_s
    expected_mj = trace.energy_mj[sum(t <= trace.start_s + 2.0 for t in trace.energy_t_s) - 1]
    assert iv.energy_j == pytest.approx((expected_mj - trace.energy_mj[0]) / 1000.0)
