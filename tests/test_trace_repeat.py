"""repeat_trace: the recorded H200 played back to back, as a benchmark longer than it replays it.

A replay past a trace's end reads a counter that no longer moves and a device without processes
(the cheapest state there is): bench_overhead's window once lay there without anyone noticing."""

import math
from pathlib import Path

import pytest

from carbonwatch.clock import ManualClock
from carbonwatch.collectors.gpu import GpuCollector
from carbonwatch.collectors.trace import REPEAT_PID_STEP, load_trace, repeat_trace
from carbonwatch.collectors.trace_gpu import ReplayGpuBackend, drive
from carbonwatch.errors import InputError

TRACE = Path(__file__).parent / "fixtures" / "h200-shared-gpu"
COUNTER_DELTA_J = 8758.0  # last minus first energy row of the recording
TRAIN_PID, INFER_PID = 416, 438


@pytest.fixture(scope="module")
def recording():
    return load_trace(TRACE)


def test_the_first_run_is_the_recording_and_each_run_follows_the_last(recording):
    tripled = repeat_trace(recording, 3)
    period_s = recording.end_s - recording.start_s
    assert tripled.start_s == recording.start_s
    assert tripled.end_s == pytest.approx(recording.end_s + 2 * period_s)
    n = len(recording.energy_t_s) - 1  # the recording's last row is the next run's first
    assert tripled.energy_t_s[:n] == recording.energy_t_s[:n]
    assert tripled.energy_mj[:n] == recording.energy_mj[:n]
    for series in (tripled.power_t_s, tripled.energy_t_s, [r.t_s for r in tripled.process_util]):
        assert series == sorted(series)
    assert all(b > a for a, b in zip(tripled.energy_t_s, tripled.energy_t_s[1:], strict=False))
    # The counter never goes back: every run adds the recording's energy.
    assert tripled.energy_mj == sorted(tripled.energy_mj)
    assert tripled.energy_j == pytest.approx(3 * COUNTER_DELTA_J, abs=0.2)


def test_each_run_has_new_processes_that_launch_and_exit_again(recording):
    tripled = repeat_trace(recording, 3)
    period_s = recording.end_s - recording.start_s
    windows = tripled.presence_windows()
    for pid in (TRAIN_PID, INFER_PID):
        first = windows[pid]
        for n in (1, 2):
            launch_s, exit_s = windows[pid + n * REPEAT_PID_STEP]
            assert launch_s == pytest.approx(first[0] + n * period_s)
            assert exit_s == pytest.approx(first[1] + n * period_s)
    assert tripled.pids["train.2"] == TRAIN_PID + 2 * REPEAT_PID_STEP
    assert sum(1 for r in tripled.process_util if r.pid == INFER_PID + REPEAT_PID_STEP) == sum(
        1 for r in recording.process_util if r.pid == INFER_PID)
    assert len(tripled.calls) == 3 * len(recording.calls)


def test_a_replay_of_two_runs_measures_the_recorded_energy_twice_and_both_runs_processes(
        recording):
    # Against the recording's own counter (not the transform): the real collector, driven
    # through 59 s of replay, measures twice what the H200 measured once, and splits the second
    # run between that run's training and inference processes as it split the first run's.
    doubled = repeat_trace(recording, 2)
    clock = ManualClock(doubled.start_s)
    collector = GpuCollector(ReplayGpuBackend(doubled, clock, devices=1))
    intervals = list(drive(collector, clock, doubled.start_s, doubled.end_s))
    total_j = math.fsum(i.energy_j for i in intervals)
    assert total_j == pytest.approx(2 * COUNTER_DELTA_J, rel=0.005)
    period_s = recording.end_s - recording.start_s
    mid_s = doubled.start_s + period_s
    by_run: list[dict[int, float]] = [{}, {}]
    for iv in intervals:
        run = 0 if iv.end_s <= mid_s else 1
        active_j = iv.energy_j - iv.idle_energy_j
        weight = math.fsum(iv.shares.values())
        for pid, share in iv.shares.items():
            if isinstance(pid, int):
                key = pid % REPEAT_PID_STEP
                by_run[run][key] = by_run[run].get(key, 0.0) + active_j * share / weight
    assert set(by_run[1]) == {TRAIN_PID, INFER_PID}
    assert {p for iv in intervals if iv.end_s > mid_s for p in iv.shares} >= {
        TRAIN_PID + REPEAT_PID_STEP, INFER_PID + REPEAT_PID_STEP}
    # The second run's active energy is the first's, up to the idle baseline learned meanwhile
    # (6,368 J then 6,286 J), and its split close to it: the power fit, trained on the first run,
    # now weighs in (training 4,546 then 4,717 J; inference 1,822 then 1,569 J).
    assert math.fsum(by_run[1].values()) == pytest.approx(math.fsum(by_run[0].values()), rel=0.05)
    for pid in (TRAIN_PID, INFER_PID):
        assert by_run[1][pid] == pytest.approx(by_run[0][pid], rel=0.2)


def test_a_replay_past_a_recordings_end_measures_nothing_more(recording):
    # Why benchmarks repeat the trace: after its last row the counter stays where it was.
    clock = ManualClock(recording.start_s)
    collector = GpuCollector(ReplayGpuBackend(recording, clock, devices=1))
    end_s = recording.end_s + 20.0
    late = [iv for iv in drive(collector, clock, recording.start_s, end_s)
            if iv.start_s >= recording.end_s]
    assert late and math.fsum(iv.energy_j for iv in late) == 0.0


def test_repeating_once_is_the_recording_and_bad_counts_are_refused(recording):
    assert repeat_trace(recording, 1) is recording
    with pytest.raises(InputError, match="at least once"):
        repeat_trace(recording, 0)
