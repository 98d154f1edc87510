"""A small store for the footprint tests: a model trained on an A100 (which has a sourced embodied
figure) and an H200 (which has none), then served on the A100 with calls that report tokens.

Figures are chosen so each can be checked by hand: 300 g/kWh, PUE 1.2; per minute the training
job draws 12 kJ from gpu0 beside 3 kJ of 'other' activity and 5 kJ idle, and 6 kJ from gpu1."""

from __future__ import annotations

from pathlib import Path

from carbonwatch.embodied import record_devices
from carbonwatch.model import DeviceClass, DeviceInfo, Provenance
from carbonwatch.store import open_store

T0 = 1_780_000_000 - 1_780_000_000 % 3600
INTENSITY = 300.0
PUE = 1.2
MODEL = "m-chat"
A100 = "NVIDIA A100-SXM4-80GB"
H200 = "NVIDIA H200"
SERVE_MINUTES = 300
CALLS_PER_MINUTE = 10


def _row(minute_s: int, device: str, consumer: str, phase: str, energy_j: float,
         model: str = MODEL) -> dict:
    return {"minute_s": minute_s, "device_id": device, "device_class": "gpu",
            "consumer": consumer, "phase": phase, "model": model if phase != "idle" else "",
            "energy_j": energy_j, "co2e_g": energy_j / 3.6e6 * PUE * INTENSITY,
            "cost": 0.0, "intensity_g_per_kwh": INTENSITY, "intensity_kind": "actual",
            "provenance": "measured"}


def build_store(path: Path, *, h200_only_job: bool = True) -> Path:
    devices = [
        DeviceInfo("gpu0", DeviceClass.GPU, A100, "nvml-energy-counter", Provenance.MEASURED),
        DeviceInfo("gpu1", DeviceClass.GPU, H200, "nvml-energy-counter", Provenance.MEASURED),
    ]
    rows: list[dict] = []
    for k in range(60):  # hour 0: training on both GPUs
        m = T0 + 60 * k
        rows += [_row(m, "gpu0", "job:train", "training", 12_000.0),
                 _row(m, "gpu0", "other", "other", 3_000.0, ""),
                 _row(m, "gpu0", "idle", "idle", 5_000.0),
                 _row(m, "gpu1", "job:train", "training", 6_000.0)]
    for k in range(30):  # hour 1: an evaluation job on the H200 alone
        if h200_only_job:
            rows.append(_row(T0 + 3600 + 60 * k, "gpu1", "job:h200", "training", 9_000.0,
                             "m-other"))
    calls = []
    for k in range(SERVE_MINUTES):  # hours 2-5: serving on the A100
        m = T0 + 7200 + 60 * k
        rows += [_row(m, "gpu0", "job:serve", "inference", 4_000.0),
                 _row(m, "gpu0", "idle", "idle", 5_000.0)]
        calls.append((m, MODEL, CALLS_PER_MINUTE, 30.0, 3_000.0,
                      3_000.0 / 3.6e6 * PUE * INTENSITY, 0.0, 1_000, 500, CALLS_PER_MINUTE,
                      3_000.0))
    with open_store(path) as store:
        store.insert_job(id="train", name="finetune", kind="training", model=MODEL,
                         source="run", status="finished", started_s=T0, ended_s=T0 + 3600,
                         energy_j=60 * 18_000.0, co2e_g=60 * 18_000.0 / 3.6e6 * PUE * INTENSITY,
                         provenance={"carbon": {"pue": PUE, "intensity": "test-grid"}})
        store.insert_job(id="h200", name="eval", kind="training", model="m-other",
                         source="run", status="finished", started_s=T0 + 3600,
                         ended_s=T0 + 5400, energy_j=30 * 9_000.0,
                         co2e_g=30 * 9_000.0 / 3.6e6 * PUE * INTENSITY)
        store.insert_job(id="serve", name="server", kind="inference", model=MODEL,
                         source="api", status="finished", started_s=T0 + 7200,
                         ended_s=T0 + 7200 + 60 * SERVE_MINUTES,
                         energy_j=SERVE_MINUTES * 4_000.0,
                         co2e_g=SERVE_MINUTES * 4_000.0 / 3.6e6 * PUE * INTENSITY)
        store.add_energy_minutes(rows)
        with store.transaction():
            store.conn.executemany(
                "INSERT INTO call_minute (minute_s, model, calls, busy_s, energy_j, co2e_g, cost,"
                " tokens_in, tokens_out, token_calls, token_energy_j)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", calls)
            record_devices(store.conn, devices, T0)
    return path
