"""The recorder writes the replay format: record a replayed GPU, then replay the recording."""

import json
import math
from pathlib import Path

import pytest

from carbonwatch.clock import ManualClock
from carbonwatch.collectors.gpu import GpuCollector
from carbonwatch.collectors.recorder import Recorder, record
from carbonwatch.collectors.trace import load_trace
from carbonwatch.collectors.trace_gpu import Fault, FaultKind, ReplayGpuBackend, drive
from carbonwatch.model import Provenance

TRACE = Path(__file__).parent / "fixtures" / "h200-shared-gpu"


def _record(out_dir, faults=(), roles=None):
    trace = load_trace(TRACE)
    clock = ManualClock(trace.start_s)
    backend = ReplayGpuBackend(trace, clock, faults=faults)
    with Recorder(backend, out_dir, clock, roles=roles, meta={"power_limit_mW": 700000}) as rec:
        record(rec, clock, trace.end_s - trace.start_s, sleep=clock.advance)
    return trace


def test_recording_a_replayed_gpu_replays_to_the_same_energy(tmp_path):
    original = _record(tmp_path / "rec", roles={"train": 416})
    copy = load_trace(tmp_path / "rec")
    assert copy.energy_j == pytest.approx(original.energy_j, rel=1e-12)
    assert copy.start_s == pytest.approx(original.start_s)
    assert len(copy.power_t_s) == pytest.approx((original.end_s - original.start_s) / 0.01, abs=3)
    assert len(copy.energy_t_s) == pytest.approx((original.end_s - original.start_s) / 0.1, abs=3)

    clock = ManualClock(copy.start_s)
    collector = GpuCollector(ReplayGpuBackend(copy, clock))
    intervals = list(drive(collector, clock, copy.start_s, copy.end_s))
    assert math.fsum(i.energy_j for i in intervals) == pytest.approx(original.energy_j, rel=1e-9)
    assert any(set(i.shares) == {416} for i in intervals)
    assert any(set(i.shares) == {416, 438} for i in intervals)


def test_recording_keeps_process_samples_events_and_meta(tmp_path):
    original = _record(tmp_path / "rec", roles={"train": 416})
    copy = load_trace(tmp_path / "rec")

    def key(r):
        return (r.pid, r.sample_ts_us, r.sm_pct, r.mem_pct)

    assert {key(r) for r in copy.process_util} == {key(r) for r in original.process_util}
    assert copy.pids == {"train": 416, "pid438": 438}
    windows, truth = copy.pid_windows(), original.pid_windows()
    for pid in (416, 438):
        assert windows[pid][0] == pytest.approx(truth[pid][0], abs=0.5)  # process poll: 0.5 s
        assert windows[pid][1] == pytest.approx(truth[pid][1], abs=0.5)
    meta = json.loads((tmp_path / "rec" / "meta.json").read_text())
    assert meta["gpu"] == "NVIDIA H200" and meta["power_limit_mW"] == 700000
    assert copy.events[-1][1] == "end"


def test_recording_a_gpu_without_counter_replays_as_estimated(tmp_path):
    original = _record(tmp_path / "rec", faults=[Fault(FaultKind.COUNTER_UNSUPPORTED)])
    copy = load_trace(tmp_path / "rec")
    assert not copy.has_counter
    clock = ManualClock(copy.start_s)
    collector = GpuCollector(ReplayGpuBackend(copy, clock))
    intervals = list(drive(collector, clock, copy.start_s, copy.end_s))
    assert all(i.provenance is Provenance.ESTIMATED for i in intervals)
    assert math.fsum(i.energy_j for i in intervals) == pytest.approx(original.energy_j, rel=0.02)
