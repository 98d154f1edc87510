"""NVML faults through the replay backend: one device of eight fails (lost, no counter,
timeouts, counter reset, power readings of 0 or absurd), the seven others are healthy."""

from __future__ import annotations

import math
import sqlite3

import pytest

from .harness import INFER_PID, MODEL, TRACE, ChaosDaemon, batches_of, fixture_calls, replay_args
from .steady import Acks, check, counter_j, probe_health

FAMILY = "NVML faults (replay backend)"
FAULTY = 3  # the failing device of eight
SPEED = 12.0
GPUS = [f"gpu{i}" for i in range(8)]

# kind -> (faults on device FAULTY, hypothesis about the faulty device)
CASES = {
    "gpu-lost": (
        [{"kind": "lost", "device": FAULTY, "from_s": 12.0}],
        "gpu3 falls off the bus 12 s in: it is reported lost; its energy up to the loss is kept "
        "(the counter's delta up to its last read, plus the power samples after it, estimated), "
        "within 2 % of the counter at the loss",
    ),
    "not-supported": (
        [{"kind": "counter-unsupported", "device": FAULTY}],
        "gpu3 has no energy counter (NVML NotSupported): its energy is integrated from power, "
        "marked estimated, never zero, within 2 % of the counter",
    ),
    "timeouts": (
        [{"kind": "timeout", "device": FAULTY, "from_s": 5.0, "to_s": 14.0,
          "reads": ["counter"]},
         {"kind": "timeout", "device": FAULTY, "from_s": 18.0, "to_s": 22.0}],
        "gpu3's reads time out (the counter for 9 s, every read for 4 s): intervals stay open "
        "and the next good read covers them, so its energy still equals the counter exactly",
    ),
    "counter-reset": (
        [{"kind": "counter-reset", "device": FAULTY, "from_s": 12.35}],
        "gpu3's counter restarts from 0 (driver reload) 12.35 s in: the one interval across the "
        "reset is estimated from power, every other is the counter's delta: within 1 % of the "
        "truth, never negative",
    ),
    "power-zero": (
        [{"kind": "power-zero", "device": FAULTY, "from_s": 3.0, "to_s": 25.0}],
        "gpu3 reads 0 W for 22 s: the zero samples are dropped (not a learned idle baseline), "
        "its energy still equals the counter exactly",
    ),
    "power-absurd": (
        [{"kind": "power-absurd", "device": FAULTY, "from_s": 3.0, "to_s": 25.0}],
        "gpu3 reads 0xFFFFFFFF mW (NVML's junk value) for 22 s: the junk is dropped, its energy "
        "still equals the counter exactly and no power over 5 kW is reported",
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_one_gpu_of_eight_fails(case, tmp_path, experiment):
    """With one replayed GPU of eight failing while calls are ingested, the seven healthy GPUs
    keep measuring (their stored energy equals the trace's counter exactly), the faulty one is
    handled as stated, and the store holds exactly what the collector measured."""
    faults, about_faulty = CASES[case]
    experiment.name = f"one GPU of eight: {case}"
    experiment.hypothesis = (
        f"{about_faulty}. The seven other GPUs keep measuring (stored energy = the trace's "
        "counter delta exactly), the store holds exactly what the collector measured per device "
        "and minute, calls ingested meanwhile are all stored and settled.")
    acks = Acks()
    daemon = ChaosDaemon(tmp_path, *replay_args(SPEED, gpus=8),
                         config={"replay_faults": faults}).start()
    status, job = daemon.request("POST", "/v1/jobs", {"name": "train", "kind": "training",
                                                      "model": "mlp-8192", "pid": 416})
    assert status == 201, job
    acks.jobs.add(job["id"])
    for batch in batches_of(fixture_calls(INFER_PID, MODEL), 200):
        acks.batch(*daemon.request("POST", "/v1/calls", {"calls": batch}))
    daemon.wait_for(daemon.replay_finished, timeout_s=30)
    status, devices = daemon.request("GET", "/v1/devices")
    health = probe_health(daemon)
    assert daemon.stop() == 0
    faulty = devices["devices"][FAULTY]
    experiment.observe(f"gpu{FAULTY}: state {faulty['state']}, method {faulty['method']}, "
                       f"provenance {faulty['provenance']}" +
                       (f" ({faulty['detail']})" if faulty["detail"] else ""))
    with sqlite3.connect(daemon.db) as conn:
        by_device = dict(conn.execute(
            "SELECT device_id, SUM(energy_j) FROM energy_minute GROUP BY 1"))
        provenance = dict(conn.execute(
            "SELECT device_id, group_concat(DISTINCT provenance) FROM energy_minute GROUP BY 1"))
    truth_j = TRACE.energy_j
    got_j = by_device.get(f"gpu{FAULTY}", 0.0)
    experiment.figure("faulty GPU energy (J)", round(got_j, 1))
    experiment.figure("counter delta (J)", round(truth_j, 1))
    if case == "gpu-lost":  # the truth is the counter at the loss
        truth_j = counter_j(TRACE, TRACE.start_s + 12.0) - TRACE.energy_mj[0] / 1000
        experiment.figure("counter delta to the loss (J)", round(truth_j, 1))
    experiment.figure("faulty GPU error vs counter", f"{(got_j - truth_j) / truth_j:+.3%}")
    experiment.figure("healthy GPUs exact", 7)
    experiment.figure("calls acknowledged / stored", acks.calls)
    power_w = [d["power_w"] for d in devices["devices"] if d["power_w"] is not None]
    experiment.figure("max device power reported (W)", round(max(power_w), 1))
    assert max(power_w) < 5000

    if case == "gpu-lost":
        assert faulty["state"] == "lost"
        assert got_j == pytest.approx(truth_j, rel=0.02)
    elif case == "not-supported":
        assert faulty["state"] == "degraded" and faulty["provenance"] == "estimated"
        assert provenance[f"gpu{FAULTY}"] == "estimated"
        assert got_j == pytest.approx(truth_j, rel=0.02) and got_j > 0
    elif case == "counter-reset":
        assert got_j == pytest.approx(truth_j, rel=0.01)
        assert faulty["state"] == "ok"
    else:  # the counter is intact: exact
        assert math.isclose(got_j, truth_j, rel_tol=1e-9)
        assert faulty["state"] == "ok"
    healthy = [d for d in GPUS if d != f"gpu{FAULTY}"]
    counter_devices = healthy + ([f"gpu{FAULTY}"] if case in
                                 ("timeouts", "power-zero", "power-absurd") else [])
    check(experiment, daemon.db, acks, health=health, interval_log=daemon.interval_log,
          trace=TRACE, counter_devices=counter_devices)
