"""benchmarks/nvml_probe.py without a GPU: the fake pynvml on a simulated clock. The GPU draws a
square wave of power, its energy counter holds the exact integral (the truth), and its sample
buffers get a sample every ``spacing_s`` holding the mean power over the spacing before its stamp,
``lag_s`` late if asked. Nothing sleeps: the probe's sleep moves the simulated clock."""

import importlib.util
import json
import math
import subprocess
import sys
from collections import deque
from pathlib import Path

import pytest
from fake_pynvml import (
    ALL_SYMBOLS,
    NVML_ERROR_NO_PERMISSION,
    OLD_DRIVER_SYMBOLS,
    FakeGpu,
    FakeMig,
    NVMLError,
    make_module,
)

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "benchmarks"


if str(BENCH) not in sys.path:  # the probe imports gpu_check and gpu/ beside it, as when run
    sys.path.append(str(BENCH))
_spec = importlib.util.spec_from_file_location("nvml_probe", BENCH / "nvml_probe.py")
probe = importlib.util.module_from_spec(_spec)
sys.modules.setdefault("nvml_probe", probe)  # dataclasses resolve their module by name
_spec.loader.exec_module(probe)

T0 = 1_800_000_000.0  # Unix seconds when the probe starts (2027)
UUID = "GPU-8932f937-d72c-4106-c12f-20bd9faed9f6"


class Sim:
    """One fake GPU on a simulated clock. Power is ``low_w`` and ``high_w`` in turn for
    ``half_period_s`` each, the first switch to high at T0 + 0.5 s (inside a counter window)."""

    def __init__(self, gpu, low_w=100.0, high_w=400.0, half_period_s=2.0, spacing_s=0.02,
                 lag_s=0.0, util=True, warmup_s=5.0):
        self.gpu, self.low_w, self.high_w, self.half_s = gpu, low_w, high_w, half_period_s
        self.origin_s = T0 + 0.5 - half_period_s  # a low half ends at T0 + 0.5
        self.spacing_us, self.lag_s, self.util = round(spacing_s * 1e6), lag_s, util
        self.t = T0 - warmup_s
        self.perf_s = self.cpu_s = 0.0
        self.base_mj = 1_000_000_000
        self.next_stamp_us = round(self.t * 1e6) + self.spacing_us
        self.advance(T0)

    def watts(self, t):
        return self.high_w if math.floor((t - self.origin_s) / self.half_s) % 2 else self.low_w

    def energy_j(self, t):
        """The exact integral of the square wave from its origin to t."""
        n = math.floor((t - self.origin_s) / self.half_s)
        rest = (t - self.origin_s) - n * self.half_s
        full = (n // 2) * (self.low_w + self.high_w) * self.half_s
        return full + (self.low_w * self.half_s if n % 2 else 0.0) + rest * self.watts(t)

    def advance(self, t_end):
        while self.next_stamp_us <= round(t_end * 1e6):
            s = self.next_stamp_us / 1e6 - self.lag_s
            spacing = self.spacing_us / 1e6
            mean_w = (self.energy_j(s) - self.energy_j(s - spacing)) / spacing
            self.gpu.power_samples.append((self.next_stamp_us, round(mean_w * 1000)))
            if self.util:
                self.gpu.util_samples.append((self.next_stamp_us, 100 if mean_w > 150 else 0))
            self.next_stamp_us += self.spacing_us
        self.gpu.power_mw = round(self.watts(t_end) * 1000)
        self.gpu.energy_mj = self.base_mj + round(self.energy_j(t_end) * 1000)
        self.perf_s += t_end - self.t
        self.t = t_end

    def sleep(self, dt):
        self.advance(self.t + dt)

    def env(self, nv, handle):
        return probe.Env(nv, handle, now=lambda: self.t, sleep=self.sleep,
                         perf=lambda: self.perf_s, cpu=lambda: self.cpu_s)


def _run(seconds=10, calls=20, depth=100, symbols=ALL_SYMBOLS, gpu=None, **sim_args):
    gpu = gpu or FakeGpu(UUID, power_samples=deque(maxlen=depth),
                         util_samples=deque(maxlen=depth))
    sim = Sim(gpu, **sim_args)
    nv = make_module([gpu], symbols=symbols)
    nv.nvmlInit()
    result = probe.probe(sim.env(nv, nv.nvmlDeviceGetHandleByIndex(0)), seconds, calls)
    json.dumps(result, allow_nan=False)  # the JSON holds no NaN: unknowns are null
    assert probe.format_summary(result)
    return result


def test_the_probe_finds_the_buffers_spacing_depth_and_clock():
    result = _run(depth=100, spacing_s=0.02)
    for kind in ("power", "utilization"):
        buf = result["buffers"][kind]
        assert buf["error"] is None and buf["count"] == 100
        assert buf["span_s"] == pytest.approx(99 * 0.02)
        assert buf["spacing_s"] == pytest.approx({"median": 0.02, "min": 0.02, "max": 0.02})
        assert buf["value_type"] == "unsigned int"
        assert buf["newest_age_s"] == pytest.approx(0.0, abs=1e-6)
        assert buf["timestamp_base"] == "unix_us" and buf["offset_s"] == 0.0
        follow = buf["follow"]
        assert follow["reads"] == 10 and follow["not_found"] == 0
        assert follow["new_per_read"] == {"median": 50, "min": 50, "max": 50}
        assert follow["gap_s"]["max"] == pytest.approx(0.02)
        assert follow["reads_with_loss"] == 0
    raw = result["raw"]  # the readings themselves, for analysis after the session
    assert len(raw["counter"]) == 11 and len(raw["polls"]) == 106  # polls half a second on
    assert len(raw["samples"]["power"]) == 100 + 10 * 50 + 25
    # the newest sample is stamped T0 and holds the mean power of the 20 ms before: low, 100 W
    assert result["buffers"]["power"]["last"][-1] == (round(T0 * 1e6), 100_000.0)


def test_a_buffer_shallower_than_the_read_interval_loses_samples_every_read():
    result = _run(depth=25, spacing_s=0.02)  # half a second of samples, read once a second
    buf = result["buffers"]["power"]
    assert buf["count"] == 25 and buf["span_s"] == pytest.approx(0.48)
    follow = buf["follow"]
    assert follow["new_per_read"]["median"] == 25
    assert follow["gap_s"]["median"] == pytest.approx(0.52)  # 25 samples never seen
    assert follow["reads_with_loss"] == follow["reads"] == 10


def test_reads_with_nothing_newer_are_counted_as_not_found():
    result = _run(util=False)  # the utilisation buffer never gets a sample
    util = result["buffers"]["utilization"]
    assert util["error"] == "NOT_FOUND" and util["count"] == 0
    assert util["follow"]["not_found"] == util["follow"]["reads"] == 10
    assert util["follow"]["new_per_read"] == {"median": 0, "min": 0, "max": 0}
    assert result["read_cost"]["samples_utilization_all"]["not_found"] == 20
    assert result["read_cost"]["samples_utilization_all"]["error"] is None
    assert result["buffers"]["power"]["follow"]["not_found"] == 0


def test_the_buffer_matches_the_counter_when_its_samples_agree():
    vs = _run(lag_s=0.0)["vs_counter"]
    assert vs["windows"] == 10
    assert vs["counter_j"] == pytest.approx(4.5 * 100 + 5.5 * 400)  # low 4.5 s, high 5.5 s
    buf = vs["buffer"]
    assert buf["mean_abs_error_w"] == pytest.approx(0.0, abs=0.01)
    assert buf["energy_error_pct"] == pytest.approx(0.0, abs=0.01)
    assert buf["best_lag_s"] == 0.0
    # the 10 Hz polls read the power at an instant: a step inside a second skews its mean
    assert vs["polls_10hz"]["mean_abs_error_w"] > 5.0
    assert sorted(set(vs["counter_w"])) == pytest.approx([100.0, 250.0, 400.0])


def test_a_buffer_a_second_late_is_far_from_the_counter_and_its_lag_is_found():
    vs = _run(lag_s=1.0)["vs_counter"]
    buf = vs["buffer"]
    assert buf["mean_abs_error_w"] == pytest.approx(150.0, abs=1.0)  # every second a level off
    assert buf["best_lag_s"] == pytest.approx(1.0)
    assert buf["mean_abs_error_at_best_lag_w"] == pytest.approx(0.0, abs=0.01)


def test_each_reads_wall_time_and_cpu_time_are_taken_per_call():
    gpu = FakeGpu(UUID)
    sim = Sim(gpu, util=False)
    nv = make_module([gpu])
    nv.nvmlInit()
    real_counter, real_power = nv.nvmlDeviceGetTotalEnergyConsumption, nv.nvmlDeviceGetPowerUsage

    def timed(fn, wall_s, cpu_s):
        def call(*args):
            sim.perf_s += wall_s
            sim.cpu_s += cpu_s
            return fn(*args)
        return call

    nv.nvmlDeviceGetTotalEnergyConsumption = timed(real_counter, 3.8e-3, 50e-6)  # waits
    nv.nvmlDeviceGetPowerUsage = timed(real_power, 1.2e-6, 1.0e-6)  # on the CPU
    env = sim.env(nv, nv.nvmlDeviceGetHandleByIndex(0))
    costs = probe.read_costs(env, 200, {})
    counter = costs["energy_counter"]
    assert counter["calls"] == 50  # the dear read is timed fewer times
    assert counter["wall_us"] == pytest.approx({"median": 3800.0, "p90": 3800.0})
    assert counter["cpu_us"] == pytest.approx({"median": 50.0, "p90": 50.0})
    assert costs["power"]["calls"] == 200
    assert costs["power"]["wall_us"]["median"] == pytest.approx(1.2)
    assert costs["power"]["cpu_us"]["median"] == pytest.approx(1.0)
    # no process has a sample: every call answers NOT_FOUND, which is timed, not an error
    assert costs["process_utilization"]["not_found"] == 200
    assert costs["process_utilization"]["error"] is None


def test_window_means_weigh_each_point_by_the_time_it_stands_for():
    from gpu.probe_report import window_means

    counter = [(0.0, 0), (1.0, 0), (2.0, 0)]
    points = [(0.0, 0.0), (0.9, 100.0), (1.0, 300.0), (2.0, 50.0)]  # a sparse, irregular series
    assert window_means(points, counter) == pytest.approx([0.9 * 100 + 0.1 * 300, 50.0])
    # moved back by a second, the second window's points are the first's; the first is uncovered
    assert window_means(points, counter, shift_s=-1.0) == [None, pytest.approx(120.0)]
    assert window_means([], counter) == [None, None]


def test_spread_is_median_and_nearest_rank_p90():
    assert probe.spread_us([i * 1e-6 for i in range(1, 11)]) == {"median": 5.5, "p90": 9.0}
    assert probe.spread_us([]) is None


def test_a_mig_handle_is_recorded_as_not_supported_not_a_crash():
    gpu = FakeGpu(UUID, migs=[FakeMig("MIG-1")])
    sim = Sim(gpu)
    nv = make_module([gpu])
    nv.nvmlInit()
    mig = nv.nvmlDeviceGetMigDeviceHandleByIndex(nv.nvmlDeviceGetHandleByIndex(0), 0)
    result = probe.probe(sim.env(nv, mig), 3, 5)
    for kind in ("power", "utilization"):
        assert result["buffers"][kind]["error"] == "NOT_SUPPORTED"
        assert result["buffers"][kind]["follow"] == {"error": "NOT_SUPPORTED"}
        assert result["read_cost"][f"samples_{kind}_all"]["error"] == "NOT_SUPPORTED"
    assert result["read_cost"]["energy_counter"]["error"] == "NOT_SUPPORTED"
    assert result["follow_errors"]["counter"] == "NOT_SUPPORTED"
    assert result["vs_counter"] == {}
    assert "power buffer from 0: NOT_SUPPORTED" in probe.format_summary(result)


def test_a_driver_without_get_samples_still_compares_the_polls():
    result = _run(seconds=4, symbols=ALL_SYMBOLS - {"nvmlDeviceGetSamples"})
    assert result["buffers"]["power"]["error"] == "FUNCTION_NOT_FOUND"
    assert "buffer" not in result["vs_counter"]
    assert result["vs_counter"]["polls_10hz"]["mean_abs_error_w"] is not None


def test_error_names_come_from_the_modules_codes():
    nv = make_module([])
    assert probe.error_name(nv, NVMLError(nv.NVML_ERROR_NOT_FOUND)) == "NOT_FOUND"
    assert probe.error_name(nv, RuntimeError("x")) == "RuntimeError"


def test_preflight_names_a_missing_gpu_index_and_pairs_init_with_shutdown():
    nv = make_module([FakeGpu(UUID)])
    assert probe.nvml_preflight(0, nv) is None
    assert probe.nvml_preflight(3, nv) == "no GPU 3: NVML sees 1"
    assert nv.init_count() == 0
    broken = make_module([], init_error=nv.NVML_ERROR_DRIVER_NOT_LOADED)
    assert probe.nvml_preflight(0, broken).startswith("no NVIDIA GPU here: nvmlInit failed")


@pytest.mark.parametrize(("symbols", "raises", "seen", "waited_s"), [
    (ALL_SYMBOLS, {}, True, 1.0),  # seen at once, then a second to settle
    (OLD_DRIVER_SYMBOLS, {}, True, 1.0),  # no _v3: the _v2 list is read
    (ALL_SYMBOLS, {"nvmlDeviceGetComputeRunningProcesses": NVMLError(NVML_ERROR_NO_PERMISSION)},
     None, 21.0),  # no list can be read: 20 s, then the second
])
def test_the_load_starts_and_is_waited_for(symbols, raises, seen, waited_s):
    gpu = FakeGpu(UUID, pids=[4242], raises=raises)
    sim = Sim(gpu)
    nv = make_module([gpu], symbols=symbols)
    nv.nvmlInit()
    env = sim.env(nv, nv.nvmlDeviceGetHandleByIndex(0))
    child, load = probe.start_load(env, [sys.executable, "-c", "import time; time.sleep(60)"], {})
    try:
        assert load["seen_on_gpu"] is seen and load["exited_early"] is None
        assert load["waited_s"] == pytest.approx(waited_s, abs=0.25)
    finally:
        child.kill()
        child.wait()


def _without_a_driver():
    """The scripts run as on a machine without a GPU; skipped where NVML starts."""
    import pynvml

    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        return
    pynvml.nvmlShutdown()
    pytest.skip("this machine has an NVIDIA driver: the scripts would measure it")


def test_the_cli_stops_at_once_without_a_gpu():
    _without_a_driver()
    for extra in ([], ["--load", "train"]):
        out = subprocess.run([sys.executable, str(BENCH / "nvml_probe.py"), *extra],
                             capture_output=True, text=True, timeout=60)
        assert out.returncode == 2
        assert out.stderr.startswith("nvml_probe: cannot run here: no NVIDIA GPU here")
        assert len(out.stderr.strip().splitlines()) == 1 and out.stdout == ""


def test_the_device_script_says_for_each_step_that_there_is_no_gpu(tmp_path):
    import os
    import shutil

    _without_a_driver()
    script = ROOT / "scripts" / "device_check.sh"
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    out = subprocess.run(["bash", str(script)], capture_output=True, text=True, timeout=120,
                         env=dict(os.environ, OUT=str(tmp_path), PYTHON=sys.executable))
    assert out.returncode == 2, out.stdout + out.stderr
    lines = out.stdout.splitlines()
    assert (tmp_path / "summary.txt").read_text().splitlines() == lines
    steps = {line.split(":")[0]: line for line in lines}
    for step in ("probe idle", "gpu_check"):
        assert steps[step].startswith(f"{step}: exit 2 (not run: no NVIDIA GPU here: nvmlInit")
    train = steps["probe under train"]
    assert train.startswith("probe under train: exit 2 (not run: no NVIDIA GPU here") or \
        train == f"probe under train: skipped (PyTorch is not importable by {sys.executable})"
    if shutil.which("nvidia-smi") is None:
        assert steps["nvidia-smi"] == "nvidia-smi: skipped (not found)"
    assert lines[-1] == "device_check: no GPU measured here (the idle probe could not run)"
    assert "nvidia-ml-py " in (tmp_path / "env.txt").read_text()  # the version the probe ran with
