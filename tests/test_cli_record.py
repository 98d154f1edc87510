"""`carbonwatch record` writes the trace format, and `carbonwatch replay` reads what it wrote. The
source is the recorded H200 trace served live by the replay backend (no GPU here)."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from carbonwatch.clock import ManualClock
from carbonwatch.collectors.gpu import GpuCollector
from carbonwatch.collectors.recorder import Recorder, RecorderGroup, record
from carbonwatch.collectors.trace import load_trace
from carbonwatch.collectors.trace_gpu import ReplayGpuBackend, drive

TRACE = Path(__file__).parent / "fixtures" / "h200-shared-gpu"


def _cli(*args, timeout=60):
    return subprocess.run(
        [sys.executable, "-m", "carbonwatch", *args],
        capture_output=True, text=True, timeout=timeout, env=dict(os.environ),
    )


def test_record_then_replay_reads_what_record_wrote(tmp_path):
    out = tmp_path / "rec"
    done = _cli("record", str(out), "--seconds", "4", "--backend", f"replay:{TRACE}")
    assert done.returncode == 0, done.stderr
    assert f"replay with: carbonwatch replay {out}" in done.stdout
    source, copy = load_trace(TRACE), load_trace(out)
    # Every reading is one the source GPU gave (the replay steps through the trace's rows) ...
    assert set(copy.energy_mj) <= set(source.energy_mj)
    assert set(copy.power_mw) <= set(source.power_mw)
    assert copy.energy_mj == sorted(copy.energy_mj) and copy.energy_j > 0
    assert len(copy.power_t_s) == pytest.approx(400, abs=40)  # 10 ms power polls for 4 s
    # ... and the trainer, launched 3 s into the source trace, was seen starting
    assert copy.pids == {"pid416": 416}
    assert [e for _, e in copy.events][-1] == "end"
    assert copy.meta["recorded_with"] == "carbonwatch record"

    replayed = _cli("replay", str(out), "--json")
    assert replayed.returncode == 0, replayed.stderr
    report = json.loads(replayed.stdout)
    assert report["counter_delta_j"] == pytest.approx(copy.energy_j)
    assert report["total_energy_j"] == pytest.approx(copy.energy_j, rel=1e-9)


def test_record_refuses_an_unknown_gpu_and_an_existing_trace(tmp_path):
    bad = _cli("record", str(tmp_path / "a"), "--seconds", "1", "--gpus", "3",
               "--backend", f"replay:{TRACE}")
    assert bad.returncode == 2 and "no GPU '3'" in bad.stderr
    assert "GPU-00000000-0000-0000-0000-000000000000" in bad.stderr  # says which GPUs exist
    again = _cli("record", str(TRACE), "--seconds", "1", "--backend", f"replay:{TRACE}")
    assert again.returncode == 2 and "already holds a trace" in again.stderr
    none = _cli("record", str(tmp_path / "b"), "--seconds", "1", "--backend", "bogus")
    assert none.returncode == 2 and "expected nvml or replay:DIR" in none.stderr


def test_a_recorder_group_records_several_gpus_that_each_replay_to_the_counter(tmp_path):
    source = load_trace(TRACE)
    clock = ManualClock(source.start_s)
    backend = ReplayGpuBackend(source, clock, devices=2)
    group = RecorderGroup([Recorder(backend, tmp_path / f"gpu{k}", clock, device_index=k)
                           for k in range(2)])
    record(group, clock, source.end_s - source.start_s, sleep=clock.advance)
    group.close()
    for k in range(2):
        copy = load_trace(tmp_path / f"gpu{k}")
        assert copy.meta["uuid"].endswith(f"{k:012d}")
        assert copy.energy_j == pytest.approx(source.energy_j, rel=1e-12)
        replay_clock = ManualClock(copy.start_s)
        collector = GpuCollector(ReplayGpuBackend(copy, replay_clock))
        intervals = list(drive(collector, replay_clock, copy.start_s, copy.end_s))
        assert math.fsum(i.energy_j for i in intervals) == pytest.approx(source.energy_j)


def test_gpus_are_chosen_by_index_uuid_or_mig_uuid_and_lost_ones_left_out():
    import click
    import fake_pynvml as fake
    from fake_pynvml import FakeGpu, FakeMig, make_module

    from carbonwatch.cli.record import _choose
    from carbonwatch.collectors.nvml import NvmlBackend

    uuids = [f"GPU-{i}{i}{i}{i}0000-1111-2222-3333-444455556666" for i in range(4)]
    gpus = [FakeGpu(u) for u in uuids]
    gpus[0].handle_error = fake.NVML_ERROR_NO_PERMISSION  # skipped: positions shift
    gpus[1].handle_error = fake.NVML_ERROR_GPU_IS_LOST  # listed lost: never recorded
    gpus[3].migs = [FakeMig("MIG-aaaa1111-2222-3333-4444-555566667777")]
    backend = NvmlBackend(make_module(gpus))
    # (backend position, physical index): GPU 1 (lost) is position 0
    assert _choose(backend, None) == [(1, 2), (2, 3)]
    assert _choose(backend, "3,GPU-2222,MIG-aaaa,3") == [(2, 3), (1, 2)]
    for bad in ("1", "0", "GPU-9999"):
        with pytest.raises(click.BadParameter, match="no GPU"):
            _choose(backend, bad)
    backend.close()
