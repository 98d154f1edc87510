"""benchmarks/gpu_check.py without a GPU: its integral, phases, checks, report and exit code, on
made-up runs with known answers and on the recorded H200 trace through the replay backend."""

import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from carbonwatch.collectors.trace import load_trace

ROOT = Path(__file__).resolve().parent.parent
TRACE = ROOT / "tests" / "fixtures" / "h200-shared-gpu"
_spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "benchmarks" / "gpu_check.py")
gc = importlib.util.module_from_spec(_spec)
sys.modules.setdefault("gpu_check", gc)  # dataclasses resolve their module by name
_spec.loader.exec_module(gc)


def test_power_integral_interpolates_at_the_edges_and_holds_beyond_the_samples():
    samples = [(0.0, 100.0), (1.0, 200.0), (2.0, 200.0)]
    assert gc.power_integral_j(samples, 0.0, 2.0) == pytest.approx(350.0)
    assert gc.power_integral_j(samples, 0.5, 1.5) == pytest.approx(0.5 * 175 + 0.5 * 200)
    assert gc.power_integral_j(samples, -1.0, 0.0) == pytest.approx(100.0)
    assert gc.power_integral_j(samples, 2.0, 4.0) == pytest.approx(400.0)
    assert gc.power_integral_j(samples, 1.0, 1.0) == 0.0


def test_the_traces_power_integral_is_the_one_its_readme_states():
    """../shared/traces/README.md: the 10 ms power integral over the 29.6 s window is 8801.0 J."""
    trace = load_trace(TRACE)
    power = [(t, mw / 1000) for t, mw in zip(trace.power_t_s, trace.power_mw, strict=True)]
    assert gc.power_integral_j(power, trace.start_s, trace.end_s) == pytest.approx(8801.0, abs=1.5)


def test_phases_are_cut_at_every_launch_and_exit():
    trace = load_trace(TRACE)
    segs = gc.segments_from_events(trace.events, trace.start_s, trace.end_s)
    names = ["idle", "train alone", "infer + train", "infer alone", "idle"]
    assert [s.name for s in segs] == names
    assert segs[0].start_s == trace.start_s and segs[-1].end_s == trace.end_s
    assert all(a.end_s == b.start_s for a, b in zip(segs, segs[1:], strict=False))


def _run(train_share=1.0, counter_bias=1.0):
    """Idle 100 W for 10 s, the trainer alone at 300 W for 20 s, idle 10 s, both at 500 W for
    10 s, idle 10 s. Power every 5 ms; the collector's 1 s intervals split the active energy
    (above 100 W) with the given share going to the trainer when it is alone."""
    def watts(t):
        return 300.0 if 10 <= t < 30 else 500.0 if 40 <= t < 50 else 100.0

    power = [(k * 0.005, watts(k * 0.005)) for k in range(60 * 200 + 1)]
    intervals = []
    for k in range(60):
        w = watts(k + 0.5)
        energy = w * 1.0 * counter_bias
        active = energy - 100.0
        if 10 <= k < 30:
            parts = {"train": active * train_share, "other": active * (1 - train_share)}
        elif 40 <= k < 50:
            parts = {"train": active * 0.7, "infer": active * 0.3}
        else:
            parts = {}
        intervals.append((float(k), k + 1.0, energy, {**parts, "idle": 100.0}))
    events = [(10.0, "train_launch"), (30.0, "train_exit"), (40.0, "train_launch"),
              (40.0, "infer_launch"), (50.0, "train_exit"), (50.0, "infer_exit")]
    return gc.CheckRun(power, intervals, gc.segments_from_events(events, 0.0, 60.0))


def test_a_faithful_run_passes_and_the_shared_phase_is_reported_not_judged():
    checks = gc.evaluate(_run())
    by_name = {c.name.split(":")[0]: c for c in checks}
    total = checks[0]
    assert total.truth_j == pytest.approx(100 * 30 + 300 * 20 + 500 * 10, rel=1e-9)
    assert total.error_pct == pytest.approx(0.0, abs=1e-6) and total.passed
    solo = by_name["train alone (20.0 s)"]
    assert solo.truth_j == pytest.approx(200 * 20, rel=1e-3) and solo.passed  # 5 ms edges
    shared = [c for c in checks if "solo-rate reference" in c.name]
    assert len(shared) == 2 and all(c.passed is None for c in shared)
    # the infer process never ran alone: no solo rate, so no reference for this phase
    assert all(c.truth_j is None for c in shared)
    assert gc.exit_code(checks) == 0
    assert gc.format_report(checks).splitlines()[-1] == "PASSED: 0 of 2 judged checks failed"


@pytest.mark.parametrize(
    ("train_share", "counter_bias", "failed"),
    [(0.94, 1.0, "train alone"), (0.96, 1.0, None), (1.0, 1.006, "total"), (1.0, 1.004, None)],
)
def test_thresholds_total_half_a_percent_solo_five_percent(train_share, counter_bias, failed):
    checks = gc.evaluate(_run(train_share, counter_bias))
    failing = [c.name for c in checks if c.passed is False]
    if failed is None:
        assert failing == [] and gc.exit_code(checks) == 0
    else:
        assert len(failing) == 1 and failing[0].startswith(failed)
        assert gc.exit_code(checks) == 1
        report = gc.format_report(checks)
        assert any(line.startswith(failed) and line.endswith("FAIL")
                   for line in report.splitlines())


def test_the_recorded_trace_is_checked_through_the_real_collector():
    run = gc.replay_run(TRACE)
    checks = gc.evaluate(run)
    total = checks[0]
    # the device total is the counter delta (8758.0 J by the trace's README), conserved
    assert total.measured_j == pytest.approx(load_trace(TRACE).energy_j, rel=1e-9)
    assert total.measured_j == pytest.approx(8758.0, abs=0.05)
    assert total.truth_j == pytest.approx(8801.0, abs=1.5)
    for _, _, energy, parts in run.intervals:
        assert math.fsum(parts.values()) == pytest.approx(energy, rel=1e-9, abs=1e-9)
    assert any(c.name.startswith("infer alone") for c in checks)


def test_the_script_stops_at_once_without_a_gpu_and_checks_a_trace(tmp_path):
    import pynvml

    try:
        pynvml.nvmlInit()
        pynvml.nvmlShutdown()
        pytest.skip("this machine has an NVIDIA driver: the live check would run")
    except pynvml.NVMLError:
        pass
    script = ROOT / "benchmarks" / "gpu_check.py"
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 2
    assert out.stderr.startswith("gpu_check: cannot run here: no NVIDIA GPU here")
    out = subprocess.run([sys.executable, str(script), "--replay", str(TRACE)],
                         capture_output=True, text=True, timeout=120)
    lines = out.stdout.splitlines()
    assert lines[1].startswith("total: collector vs the trace's 10 ms power integral")
    failed = any(line.endswith("FAIL") for line in lines)
    assert out.returncode == (1 if failed else 0)
    assert json.dumps(lines)  # plain text, one check a line


def test_an_expected_solo_phase_that_is_missing_fails():
    checks = gc.evaluate(_run(), expect_solo=("train", "infer"))
    (missing,) = [c for c in checks if c.passed is False]
    assert missing.name == "infer alone: no solo phase of 2 s or more"
    assert gc.exit_code(checks) == 1


def test_the_live_orchestration_runs_end_to_end_on_a_fake_gpu():
    """live_run itself (phases, flushes at launch and exit, the 5 ms poller thread), through the
    fake pynvml: the GPU draws 100 W idle and 60 W more per running workload (a sleeping child),
    its counter integrating that in wall time; the workloads are its compute processes."""
    import threading
    import time

    import psutil
    from fake_pynvml import FakeGpu, make_module

    me = psutil.Process()
    lock = threading.Lock()

    class LiveGpu(FakeGpu):
        _e_mj, _t, _w = 1e9, None, 100.0

        def _running(self):
            return [c.pid for c in me.children()
                    if c.is_running() and c.status() != psutil.STATUS_ZOMBIE]

        def _advance(self):
            with lock:  # the counter: power integrated between reads (the poller reads too)
                now, watts = time.time(), 100.0 + 60.0 * len(self._running())
                if self._t is not None:
                    self._e_mj += self._w * (now - self._t) * 1000
                self._t, self._w = now, watts
                return watts

        @property
        def power_mw(self):
            return round(self._advance() * 1000)

        @power_mw.setter
        def power_mw(self, value):
            pass

        @property
        def energy_mj(self):
            self._advance()
            return round(self._e_mj)

        @energy_mj.setter
        def energy_mj(self, value):
            pass

        @property
        def pids(self):
            return self._running()

        @pids.setter
        def pids(self, value):
            pass

    nv = make_module([LiveGpu("GPU-8932f937-d72c-4106-c12f-20bd9faed9f6")])
    sleeper = "import time; time.sleep({})"
    run = gc.live_run(0, 2.5, 0.6, nvml=nv,
                      workload=lambda role, s: [sys.executable, "-c", sleeper.format(s)])
    assert nv.init_count() == 0  # every nvmlInit paired with a shutdown
    # the two sleepers of the shared phase may be seen exiting one loop turn apart: a short tail
    segs = [s for s in run.segments if not (len(s.roles) == 1 and s.end_s - s.start_s < 0.5)]
    names = [s.name for s in segs]
    assert names == ["idle", "train alone", "idle", "infer alone", "idle", "infer + train", "idle"]
    assert len(run.power) > 200  # ~200 a second for ~11 s when idle; far fewer on a loaded machine
    checks = gc.evaluate(run, expect_solo=("train", "infer"))
    total, train, infer = checks[:3]
    assert abs(total.error_pct) < 1.0  # counter vs the independent poll of the same power
    for solo, role in ((train, "train"), (infer, "infer")):
        # 60 W above idle for as long as the workload ran: 2.5 s of sleep plus however long the
        # interpreter took to start and exit (seconds on a loaded machine), so take the phase's
        # own length, not the nominal 2.5 s.
        phase = next(s for s in segs if s.roles == frozenset({role}))
        assert solo.truth_j == pytest.approx(60 * (phase.end_s - phase.start_s), rel=0.15)
        # judged, whatever the collector's split gives (whether it passes is the collector's
        # business: here the interval a process exits in has no process left to credit)
        assert solo.error_pct is not None and solo.passed is not None
    assert len(checks) == 5 and all(c.truth_j is not None for c in checks[3:])
