"""The truth-by-construction generator: its readings must integrate to its own truth, or nothing
measured against it means anything."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest

from carbonwatch.collectors.trace import load_trace
from carbonwatch.testing.synthetic import (
    PRESETS,
    ServiceModel,
    TrainerModel,
    generate,
    load_truth,
    phased,
    shared,
    solo_trainer,
)


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_counter_and_truth_agree_within_quantisation(tmp_path: Path, preset: str) -> None:
    truth = generate(tmp_path, PRESETS[preset](), seed=3)
    trace = load_trace(tmp_path)
    # The counter's delta is the model's exact energy, floored to whole mJ at each end.
    assert trace.energy_j == truth.counter_total_j
    assert abs(truth.counter_total_j - truth.true_total_j) < 0.001
    # The parts add up to the whole: idle plus every process's true active energy.
    parts = truth.idle_energy_j + math.fsum(truth.process_energy_j.values())
    assert parts == pytest.approx(truth.true_total_j, abs=1e-6)
    # The counter moves only every 100 ms: each 100 ms delta stays within one quantum of the
    # model's energy over that step (idle 80 W + at most ~800 W of demand).
    deltas = [b - a for a, b in zip(trace.energy_mj, trace.energy_mj[1:], strict=False)]
    assert min(deltas) >= 80.0 * 0.1 * 1000 - 1
    assert max(deltas) <= (80.0 + 900.0) * 0.1 * 1000


def test_power_readings_integrate_to_the_truth(tmp_path: Path) -> None:
    truth = generate(tmp_path, shared(), seed=4)
    trace = load_trace(tmp_path)
    ts, pw = trace.power_t_s, trace.power_mw
    integral_j = math.fsum(
        pw[i] / 1000.0 * (ts[i + 1] - ts[i]) for i in range(len(ts) - 1)
    )
    # A 100 ms mean shifted by up to 100 ms: the integral differs only at the edges.
    assert integral_j == pytest.approx(truth.true_total_j, rel=0.005)


def test_calls_carry_their_true_energy(tmp_path: Path) -> None:
    service = ServiceModel(launch_s=2.0, exit_s=18.0, between_calls_w=5.0)
    scenario = solo_trainer(duration_s=20.0, trainer=None, service=service)
    truth = generate(tmp_path, scenario, seed=5)
    rows = _rows(tmp_path / "calls.csv")
    assert len(rows) == len(truth.call_energy_j) > 100
    for row, energy_j in zip(rows, truth.call_energy_j, strict=True):
        w = float(row["weight"])
        duration_s = float(row["end_s"]) - float(row["start_s"])
        assert int(row["pid"]) == service.pid
        assert int(row["batch"]) == round(w)
        assert duration_s == pytest.approx(service.duration_s(w), abs=1e-6)
        assert energy_j == pytest.approx(service.demand_w(w) * duration_s, rel=1e-9)
    assert truth.service_between_calls_j > 0
    assert math.fsum(truth.call_energy_j) + truth.service_between_calls_j == pytest.approx(
        truth.process_energy_j[service.pid], rel=1e-9
    )
    # Calls overlap in bursts: each still carries its own demand (the sum exceeds busy time x max).
    starts = [float(r["start_s"]) for r in rows]
    ends = [float(r["end_s"]) for r in rows]
    assert any(s < e for s, e in zip(starts[1:], ends, strict=False))


def test_sm_samples_are_time_based_sparse_and_some_missing(tmp_path: Path) -> None:
    scenario = shared(sample_missing=0.3)
    truth = generate(tmp_path, scenario, seed=6)
    rows = _rows(tmp_path / "process_util.csv")
    trainer, service = scenario.trainer, scenario.service
    assert trainer is not None and service is not None
    by_pid: dict[int, list[dict[str, str]]] = {}
    for r in rows:
        by_pid.setdefault(int(r["pid"]), []).append(r)
    sm_train = [float(r["sm_util_pct"]) for r in by_pid[trainer.pid]]
    assert sum(sm_train) / len(sm_train) == pytest.approx(90.0, abs=3.0)
    # The light service looks busy by time although it draws a tenth of the trainer's power.
    sm_service = [float(r["sm_util_pct"]) for r in by_pid[service.pid]]
    assert sum(sm_service) / len(sm_service) > 15.0
    assert truth.process_energy_j[service.pid] < 0.15 * truth.process_energy_j[trainer.pid]
    # One sample per ~0.5 s per process, about 30 % of them lost.
    expected = (34.0 / 0.5) + (30.0 / 0.5)
    assert 0.55 * expected < len(rows) < 0.85 * expected
    # Each row is read at a poll after its own sample time.
    assert all(float(r["t_s"]) * 1e6 >= int(r["sample_ts_us"]) for r in rows)


def test_the_power_reading_lags_after_activity(tmp_path: Path) -> None:
    scenario = solo_trainer(power_tail_s=1.0)
    truth = generate(tmp_path, scenario, seed=7)
    trace = load_trace(tmp_path)
    assert scenario.trainer is not None and scenario.trainer.exit_s is not None
    exit_s = scenario.start_s + scenario.trainer.exit_s
    after = [p / 1000.0 for t, p in zip(trace.power_t_s, trace.power_mw, strict=True)
             if exit_s + 0.5 <= t < exit_s + 1.0]
    # Truth: the GPU is back at idle; the reading is still well above it.
    assert truth.active_energy_j(scenario.trainer.pid, exit_s, exit_s + 1.0) == 0.0
    assert min(after) > 1.3 * truth.idle_w


def test_same_seed_same_trace_other_seed_other_trace(tmp_path: Path) -> None:
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    generate(a, phased(), seed=11)
    generate(b, phased(), seed=11)
    generate(c, phased(), seed=12)
    for name in ("power.csv", "energy.csv", "process_util.csv", "calls.csv", "truth.json"):
        assert (a / name).read_bytes() == (b / name).read_bytes()
    assert (a / "calls.csv").read_bytes() != (c / "calls.csv").read_bytes()


def test_truth_json_round_trips_and_trace_loads(tmp_path: Path) -> None:
    truth = generate(tmp_path, phased(), seed=13)
    loaded = load_truth(tmp_path)
    assert loaded == truth
    trace = load_trace(tmp_path)
    assert trace.pids == {"train": 4101, "infer": 4202, "train2": 4103}
    assert set(trace.pid_windows()) == {4101, 4202, 4103}
    assert len(trace.calls) == len(truth.call_energy_j)
    with pytest.raises(KeyError):
        loaded.active_energy_j(4101, truth.start_s, truth.end_s)


def test_bad_scenarios_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="inside the trace"):
        generate(tmp_path, solo_trainer(trainer=TrainerModel(launch_s=5.0, exit_s=99.0)), seed=1)
    with pytest.raises(ValueError, match="sample_missing"):
        generate(tmp_path, solo_trainer(sample_missing=1.0), seed=1)
    with pytest.raises(ValueError, match="used twice"):
        generate(tmp_path, shared(service=ServiceModel(pid=4101)), seed=1)
