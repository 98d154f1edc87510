"""Learned GPU idle baselines: kept per GPU UUID in the store, read back by replay, written by
`carbonwatch run`; the gpu_idle_power_w setting overrides them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from daemon_helpers import DaemonProcess

from carbonwatch.collectors.gpuidle import parse_idle_setting
from carbonwatch.collectors.gpushare import gpu_options
from carbonwatch.config import load_settings
from carbonwatch.errors import ConfigError
from carbonwatch.store import open_store
from carbonwatch.store.gpu_idle import load_gpu_idle, save_gpu_idle
from carbonwatch.testing.synthetic import TrainerModel, generate, solo_trainer


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "carbonwatch", *args],
        capture_output=True, text=True, timeout=120, env={**os.environ, **(env or {})},
    )


def test_baselines_round_trip_by_uuid(tmp_path: Path) -> None:
    store = open_store(tmp_path / "cw.db")
    try:
        assert load_gpu_idle(store.conn) == {}
        save_gpu_idle(store.conn, "GPU-a", 81.5, 12.0, 1_800_000_000.0)
        save_gpu_idle(store.conn, "GPU-b", 60.0, 3.0, 1_800_000_001.0)
        save_gpu_idle(store.conn, "GPU-a", 79.0, 30.0, 1_800_000_002.0)  # relearned: replaced
        assert load_gpu_idle(store.conn) == {"GPU-a": 79.0, "GPU-b": 60.0}
        with pytest.raises(ValueError, match="finite"):
            save_gpu_idle(store.conn, "GPU-a", float("nan"), 1.0, 0.0)
        with pytest.raises(ValueError, match="UUID"):
            save_gpu_idle(store.conn, "", 80.0, 1.0, 0.0)
    finally:
        store.close()
    reader = open_store(tmp_path / "cw.db", read_only=True)
    try:
        assert load_gpu_idle(reader.conn)["GPU-a"] == 79.0
    finally:
        reader.close()


def test_the_setting_takes_one_value_or_one_per_uuid() -> None:
    assert parse_idle_setting("") == (None, {})
    assert parse_idle_setting(" 80 ") == (80.0, {})
    assert parse_idle_setting("GPU-a=80, GPU-b=95.5") == (None, {"GPU-a": 80.0, "GPU-b": 95.5})
    settings = load_settings(env={"CARBONWATCH_GPU_IDLE_POWER_W": "GPU-a=70"}, config_path=None)
    options = gpu_options(settings, {"GPU-a": 90.0, "GPU-c": 85.0})
    assert options.idle_w is None and options.idle_w_by_uuid == {"GPU-a": 70.0}
    assert options.stored_idle_w == {"GPU-a": 90.0, "GPU-c": 85.0}
    assert options.share_window_s == 5.0


@pytest.mark.parametrize(
    ("value", "message"),
    [("lots", "'lots' is not a number"), ("-5", ">= 0"), ("GPU-a=", "for GPU-a"),
     ("=80", "expected UUID=W"), ("GPU-a=80,GPU-b", "expected UUID=W")],
)
def test_a_bad_setting_is_a_clear_error(value: str, message: str) -> None:
    with pytest.raises(ConfigError, match="gpu_idle_power_w") as info:
        load_settings(env={"CARBONWATCH_GPU_IDLE_POWER_W": value}, config_path=None)
    assert message in str(info.value)


def _busy_from_start(tmp_path: Path) -> tuple[Path, str]:
    """A trace with no process-free interval: the baseline can only come from elsewhere."""
    scenario = solo_trainer(duration_s=10.0, trainer=TrainerModel(launch_s=0.05, exit_s=9.95))
    generate(tmp_path / "trace", scenario, seed=3)
    return tmp_path / "trace", scenario.uuid


def test_replay_starts_from_the_stored_baseline_and_the_setting_overrides_it(
    tmp_path: Path,
) -> None:
    trace, uuid = _busy_from_start(tmp_path)
    db = tmp_path / "cw.db"
    store = open_store(db)
    save_gpu_idle(store.conn, uuid, 77.0, 40.0, 1_800_000_000.0)
    store.close()

    out = _cli("replay", str(trace), "--db", str(db), "--json")
    assert out.returncode == 0, out.stderr
    baseline = json.loads(out.stdout)["idle_baseline"]
    assert baseline["uuid"] == uuid
    assert baseline["power_w"] == 77.0 and baseline["source"] == "learned-from-counter"
    assert "earlier" in baseline["detail"]

    out = _cli("replay", str(trace), "--db", str(db), "--json",
               env={"CARBONWATCH_GPU_IDLE_POWER_W": "66"})
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["idle_baseline"]["source"] == "configured"
    assert report["idle_baseline"]["power_w"] == 66.0
    assert report["idle_energy_j"] == pytest.approx(66.0 * 10.0, rel=0.02)
    assert set(report["split_methods"]) <= {"solo", "none"}
    assert all(i["split_method"] for i in report["interval_splits"])

    out = _cli("replay", str(trace), "--db", str(tmp_path / "new.db"), "--json")
    assert json.loads(out.stdout)["idle_baseline"]["source"] == "lowest-power-reading"
    assert not (tmp_path / "new.db").exists()  # replay only reads the store


def test_run_keeps_what_it_learned_for_the_next_start(tmp_path: Path) -> None:
    # The replayed GPU idles for its first 12 s: `carbonwatch run` learns its idle power from the
    # counter over those process-free seconds and leaves it in the store under the GPU's UUID.
    scenario = solo_trainer(duration_s=30.0, trainer=TrainerModel(launch_s=12.0, exit_s=28.0))
    generate(tmp_path / "trace", scenario, seed=4)
    db = tmp_path / "cw.db"
    out = _cli("run", "--db", str(db), "--backend", f"replay:{tmp_path / 'trace'}", "--json",
               "--", sys.executable, "-c", "import time; time.sleep(7)")
    assert out.returncode == 0, out.stderr
    store = open_store(db, read_only=True)
    try:
        learned = load_gpu_idle(store.conn)
    finally:
        store.close()
    # Read in real time, each 1 s counter delta is off by up to one 100 ms counter step; over
    # contiguous process-free intervals the deltas telescope, so ~6 s of them land within ~2 %.
    assert learned[scenario.uuid] == pytest.approx(scenario.idle_w, rel=0.03)


def test_the_daemon_learns_persists_and_restarts_from_the_baseline(tmp_path: Path) -> None:
    # First daemon: a replayed GPU idle for 6 s, then a trainer; the learned baseline is written
    # under the GPU's UUID and shown on /v1/devices.
    scenario = solo_trainer(duration_s=20.0, trainer=TrainerModel(launch_s=6.0, exit_s=18.0))
    generate(tmp_path / "idle-first", scenario, seed=5)
    db = tmp_path / "cw.db"
    with DaemonProcess(db, "--backend", f"replay:{tmp_path / 'idle-first'}",
                       "--replay-speed", "10") as daemon:
        daemon.wait_for(daemon.replay_finished)
        status, devices = daemon.request("GET", "/v1/devices")
        assert status == 200
    (gpu,) = [d for d in devices["devices"] if d["class"] == "gpu"]
    assert gpu["uuid"] == scenario.uuid
    assert gpu["idle_source"] == "learned-from-counter"
    assert gpu["idle_power_w"] == pytest.approx(scenario.idle_w, rel=0.02)
    store = open_store(db, read_only=True)
    try:
        stored = load_gpu_idle(store.conn)[scenario.uuid]
    finally:
        store.close()
    assert stored == pytest.approx(scenario.idle_w, rel=0.02)

    # Second daemon: the same GPU busy from the first second: it starts from the stored value.
    trace, _ = _busy_from_start(tmp_path)
    with DaemonProcess(db, "--backend", f"replay:{trace}", "--replay-speed", "10") as daemon:
        status, devices = daemon.request("GET", "/v1/devices")
    (gpu,) = [d for d in devices["devices"] if d["class"] == "gpu"]
    assert gpu["idle_power_w"] == pytest.approx(stored)
    assert "learned from the energy counter earlier" in gpu["detail"]
