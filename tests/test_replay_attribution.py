"""`carbonwatch replay` over the recorded H200 trace: the real GpuCollector, Sampler and
attribution, driven through recorded time."""

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from carbonwatch.model import IDLE, OTHER
from carbonwatch.trace_attribution import replay_trace

TRACE = Path(__file__).parent / "fixtures" / "h200-shared-gpu"
COUNTER_DELTA_J = 8758.0  # ../shared/traces/README.md: energy counter over the 29.6 s window


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "carbonwatch", *args], capture_output=True, text=True, timeout=120
    )


def test_replay_total_matches_the_energy_counter_and_conserves():
    out = _cli("replay", str(TRACE), "--json")
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["total_energy_j"] == pytest.approx(COUNTER_DELTA_J, rel=0.005)
    parts = [p["energy_j"] for p in report["processes"]]
    parts += [report["idle_energy_j"], report["unattributed_energy_j"]]
    assert math.fsum(parts) == pytest.approx(report["total_energy_j"], rel=1e-12)
    assert {p["pid"] for p in report["processes"]} == {416, 438}
    assert all(p["energy_j"] > 0 for p in report["processes"])


@pytest.mark.parametrize("policy", ["separate", "proportional", "even"])
def test_every_interval_conserves_under_each_idle_policy(policy):
    report = replay_trace(TRACE, idle_policy=policy)
    for item in report.intervals:
        assert math.fsum(item.parts.values()) == pytest.approx(item.interval.energy_j, abs=1e-9)
        if policy != "separate" and any(k not in (IDLE, OTHER) for k in item.parts):
            assert IDLE not in item.parts


def test_active_energy_is_split_by_sm_share_each_interval():
    report = replay_trace(TRACE)
    both = only_one = 0
    for item in report.intervals:
        shares = {pid: w for pid, w in item.interval.shares.items() if w > 0}
        active_j = item.interval.active_energy_j
        if len(shares) == 2:
            both += 1
            total_w = sum(shares.values())
            for pid, w in shares.items():
                got = item.parts.get(f"pid:{pid}", 0.0)
                assert got == pytest.approx(active_j * w / total_w, rel=1e-9, abs=1e-12)
        elif len(shares) == 1:
            only_one += 1
            (pid,) = shares
            assert item.parts.get(f"pid:{pid}", 0.0) == pytest.approx(active_j, rel=1e-12)
            other_pid = ({416, 438} - {pid}).pop()
            assert f"pid:{other_pid}" not in item.parts
    assert both > 0 and only_one > 0  # the trace exercises both cases
    assert any(
        i.interval.active_energy_j > 0 and len(i.interval.shares) == 1 for i in report.intervals
    )


def test_trace_with_a_missing_or_malformed_file_is_a_clear_error(tmp_path):
    broken = tmp_path / "trace"
    shutil.copytree(TRACE, broken)
    (broken / "energy.csv").unlink()
    out = _cli("replay", str(broken))
    assert out.returncode == 2
    assert "energy.csv" in out.stderr and "Traceback" not in out.stderr

    shutil.copytree(TRACE, broken, dirs_exist_ok=True)
    lines = (broken / "power.csv").read_text().splitlines()
    lines[5] = "1795697479.78,not-a-number,0"
    (broken / "power.csv").write_text("\n".join(lines) + "\n")
    out = _cli("replay", str(broken))
    assert out.returncode == 2
    assert "power.csv" in out.stderr and "Traceback" not in out.stderr
