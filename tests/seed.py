"""Seed a realistic carbonwatch store: training jobs and inference services for a few models.

Used by the dashboard and statement tests (small) and by ``benchmarks/bench_dashboard.py`` (a busy
node for 30 days). Rows are written the way the daemon would: jobs through the Store API, the
minute rollups, intensity points and deferred jobs in bulk with ``executemany``.

What the seed guarantees, so tests can rely on it:
- every device has an ``idle`` row every minute (its idle baseline) and, when busy, one row per
  consumer with the active energy above that baseline, split by share on shared GPUs;
- the CPU is ``estimated`` (a TDP model), GPUs are ``measured``;
- gCO2e uses the zone's intensity of that hour and PUE; cost the energy price and PUE;
- ``call_minute`` holds, per model and minute, the serving job's energy over its calls;
- jobs' totals equal the sums of their ``energy_minute`` rows.
"""

from __future__ import annotations

import json
import math
import random
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from carbonwatch.store import Store, open_store

J_PER_KWH = 3.6e6
DAY_S = 86400
CALLS_SHARE = 0.85  # of a serving job's energy in a minute with calls, spent inside the calls


@dataclass(frozen=True)
class SeedSpec:
    """The shape of the seeded node. Times are Unix seconds, UTC, aligned to minutes."""

    end_s: int = 1_767_225_600  # 2026-01-01T00:00Z: fixed, so runs are reproducible
    days: float = 2.0
    gpus: int = 4
    models: Sequence[str] = ("llama-ft", "resnet50", "whisper-s")
    training_jobs: int = 6
    calls: int = 2_000_000  # total inference calls over the span
    zones: Sequence[str] = ("CISO",)
    price_per_kwh: float = 0.15
    pue: float = 1.2
    seed: int = 7
    deferred: bool = True


@dataclass
class SeedResult:
    path: Path
    spec: SeedSpec
    start_s: int
    end_s: int
    job_ids: list[str] = field(default_factory=list)
    service_ids: dict[str, str] = field(default_factory=dict)  # model -> serving job id
    energy_rows: int = 0
    call_rows: int = 0


@dataclass
class _Job:
    id: str
    name: str
    kind: str
    model: str
    devices: list[str]
    start_s: int
    end_s: int
    weight: float  # share weight on shared GPUs
    status: str = "finished"
    energy_by_device: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    co2e_g: float = 0.0
    cost: float = 0.0


def _intensity(zone_index: int, hour_s: int, rng: random.Random) -> float:
    """A diurnal grid: cleaner around midday (solar), dirtier in the evening."""
    base = (240.0, 390.0, 120.0, 310.0)[zone_index % 4]
    hour = (hour_s % DAY_S) / 3600
    return max(20.0, base * (1 + 0.35 * math.cos((hour - 19) / 24 * 2 * math.pi))
               + rng.uniform(-15, 15))


def seed_store(path: str | Path, spec: SeedSpec | None = None) -> SeedResult:
    """Create (or extend) the store at ``path`` with the node described by ``spec``."""
    spec = spec or SeedSpec()
    rng = random.Random(spec.seed)
    end_s = spec.end_s - spec.end_s % 60
    start_s = end_s - int(spec.days * DAY_S) // 60 * 60
    result = SeedResult(Path(path), spec, start_s, end_s)
    gpus = [f"gpu{i}" for i in range(spec.gpus)]
    devices = [*gpus, "cpu0"]
    zone_of = {g: spec.zones[i * len(spec.zones) // len(gpus)] for i, g in enumerate(gpus)}
    zone_of["cpu0"] = spec.zones[0]
    hours = range(start_s - start_s % 3600, end_s + 48 * 3600, 3600)
    intensity = {(z, h): _intensity(zi, h, rng) for zi, z in enumerate(spec.zones) for h in hours}

    jobs = _plan_jobs(spec, rng, gpus, start_s, end_s)
    with open_store(path) as store:
        result.energy_rows, result.call_rows = _write_minutes(
            store, spec, rng, jobs, devices, zone_of, intensity, start_s, end_s
        )
        for job in jobs:
            _insert_job(store, spec, job, end_s)
        _write_intensity(store, spec, intensity, end_s)
        if spec.deferred:
            _write_deferred(store, spec, jobs, intensity, end_s)
    result.job_ids = [j.id for j in jobs if j.kind == "training"]
    result.service_ids = {j.model: j.id for j in jobs if j.kind == "inference"}
    return result


def _plan_jobs(
    spec: SeedSpec, rng: random.Random, gpus: list[str], start_s: int, end_s: int
) -> list[_Job]:
    span = end_s - start_s
    jobs: list[_Job] = []
    # One inference service per model, each pinned to one GPU (the last GPUs, so training and
    # serving share some devices), starting part-way through the span: training comes first.
    for i, model in enumerate(spec.models):
        gpu = gpus[-1 - i % len(gpus)]
        begin = start_s + int(span * (0.15 + 0.25 * (i % 3) / 3)) // 60 * 60
        jobs.append(_Job(f"svc{i:03d}", f"serve-{model}", "inference", model, [gpu], begin,
                         end_s, weight=1.0, status="running"))
    for i in range(spec.training_jobs):
        model = spec.models[i % len(spec.models)]
        width = rng.choice([1, 2, 4, 8])
        width = min(width, len(gpus))
        first = rng.randrange(0, len(gpus) - width + 1)
        duration = int(rng.uniform(0.04, 0.22) * span) // 60 * 60 + 600
        begin = start_s + int(rng.uniform(0, 0.7) * span) // 60 * 60
        jobs.append(_Job(f"train{i:03d}", f"train-{model}-{i}", "training", model,
                         gpus[first:first + width], begin, min(end_s, begin + duration),
                         weight=3.0))
    training = [j for j in jobs if j.kind == "training"]
    if training:
        training[-1].status = "failed"
    return jobs


def _write_minutes(
    store: Store,
    spec: SeedSpec,
    rng: random.Random,
    jobs: list[_Job],
    devices: list[str],
    zone_of: dict[str, str],
    intensity: dict[tuple[str, int], float],
    start_s: int,
    end_s: int,
) -> tuple[int, int]:
    """Energy rows for every device-minute and call rows per model-minute, in batches."""
    by_device: dict[str, list[_Job]] = defaultdict(list)
    for job in jobs:
        for device in job.devices:
            by_device[device].append(job)
    services = [j for j in jobs if j.kind == "inference"]
    calls_per_minute = _calls_per_minute(spec, services, start_s, end_s)
    energy_sql = (
        "INSERT INTO energy_minute (minute_s, device_id, device_class, consumer, phase, model, "
        "energy_j, co2e_g, cost, intensity_g_per_kwh, intensity_kind, provenance, zone) "
        "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)"
    )
    call_sql = ("INSERT INTO call_minute (minute_s, model, calls, busy_s, energy_j, co2e_g, cost) "
                "VALUES (?,?,?,?,?,?,?)")
    energy_rows: list[tuple] = []
    call_rows: list[tuple] = []
    n_energy = n_calls = 0
    factor = spec.pue / J_PER_KWH
    conn = store.conn
    for minute in range(start_s, end_s, 60):
        hour = minute - minute % 3600
        service_energy: dict[str, float] = defaultdict(float)
        service_carbon: dict[str, float] = defaultdict(float)
        for device in devices:
            zone = zone_of[device]
            ci = intensity[(zone, hour)]
            cls = "cpu" if device.startswith("cpu") else "gpu"
            prov = "estimated" if cls == "cpu" else "measured"
            idle_w = 38.0 if cls == "cpu" else 68.0 + int(device[3:]) % 3

            def add(consumer: str, phase: str, model: str, energy_j: float,
                    _zone: str = zone, _ci: float = ci, _cls: str = cls, _prov: str = prov,
                    _device: str = device, _minute: int = minute) -> None:
                energy_rows.append((_minute, _device, _cls, consumer, phase, model, energy_j,
                                    energy_j * factor * _ci, energy_j * factor * spec.price_per_kwh,
                                    _ci, "actual", _prov, _zone))

            add("idle", "idle", "", idle_w * 60)
            if cls == "cpu":
                running = [j for j in jobs if j.start_s <= minute < j.end_s]
                active_w = 9.0 * len(running)
                parts = [(j, 1.0) for j in running]
            else:
                running = [j for j in by_device[device] if j.start_s <= minute < j.end_s]
                if running and any(j.kind == "inference" for j in running):
                    # A serving GPU draws with its load; an idle service still draws a little.
                    running = [j for j in running if j.kind == "training"
                               or calls_per_minute.get((j.model, minute), 0) > 0
                               or rng.random() < 0.5]
                active_w = rng.uniform(260, 420) if running else 0.0
                parts = [(j, j.weight) for j in running]
                if not running and rng.random() < 0.01:
                    add("other", "other", "", rng.uniform(20, 80) * 60)
            total_weight = sum(w for _, w in parts)
            for job, weight in parts:
                energy_j = active_w * 60 * weight / total_weight
                add(f"job:{job.id}", job.kind, job.model, energy_j)
                job.energy_by_device[device] += energy_j
                job.co2e_g += energy_j * factor * ci
                job.cost += energy_j * factor * spec.price_per_kwh
                if job.kind == "inference":
                    service_energy[job.model] += energy_j
                    service_carbon[job.model] += energy_j * factor * ci
        for job in services:
            calls = calls_per_minute.get((job.model, minute), 0)
            if calls:
                # The calls' own share of the serving energy; the rest went between calls.
                energy_j = service_energy[job.model] * CALLS_SHARE
                call_rows.append((minute, job.model, calls, min(60.0, calls * 0.04),
                                  energy_j, service_carbon[job.model] * CALLS_SHARE,
                                  energy_j * factor * spec.price_per_kwh))
        if len(energy_rows) > 50_000:
            n_energy, n_calls = _flush(conn, energy_sql, energy_rows, call_sql, call_rows,
                                       n_energy, n_calls)
    return _flush(conn, energy_sql, energy_rows, call_sql, call_rows, n_energy, n_calls)


def _flush(conn, energy_sql: str, energy_rows: list, call_sql: str, call_rows: list,
           n_energy: int, n_calls: int) -> tuple[int, int]:
    # The store's connection is in autocommit mode, where ``with conn`` opens no transaction
    # and every row would commit on its own (~100x slower): begin one explicitly.
    conn.execute("BEGIN")
    conn.executemany(energy_sql, energy_rows)
    conn.executemany(call_sql, call_rows)
    conn.execute("COMMIT")
    n_energy, n_calls = n_energy + len(energy_rows), n_calls + len(call_rows)
    energy_rows.clear()
    call_rows.clear()
    return n_energy, n_calls


def _calls_per_minute(
    spec: SeedSpec, services: list[_Job], start_s: int, end_s: int
) -> dict[tuple[str, int], int]:
    """Diurnal traffic (busier in the day), scaled so the whole span holds ``spec.calls``."""
    weights: dict[tuple[str, int], float] = {}
    for i, job in enumerate(services):
        popularity = 1.0 / (1 + i)
        for minute in range(job.start_s, job.end_s, 60):
            hour = (minute % DAY_S) / 3600
            daytime = 1.2 + math.sin((hour - 9) / 24 * 2 * math.pi)
            weights[(job.model, minute)] = popularity * daytime
    total = sum(weights.values()) or 1.0
    scale = spec.calls / total
    return {key: int(round(w * scale)) for key, w in weights.items()}


def _insert_job(store: Store, spec: SeedSpec, job: _Job, end_s: int) -> None:
    energy_j = math.fsum(job.energy_by_device.values())
    running = job.status == "running"
    store.insert_job(
        id=job.id,
        name=job.name,
        kind=job.kind,
        model=job.model,
        command=["python", "train.py" if job.kind == "training" else "serve.py",
                 "--model", job.model],
        pids=[10_000 + len(job.id)],
        source="run" if job.kind == "training" else "api",
        status=job.status,
        started_s=float(job.start_s),
        ended_s=None if running else float(job.end_s),
        exit_code=None if running else (1 if job.status == "failed" else 0),
        energy_j=energy_j,
        energy_by_device=dict(job.energy_by_device),
        co2e_g=job.co2e_g,
        cost=job.cost,
        currency="USD",
        provenance={
            "energy": {d: ("estimated (tdp-model)" if d.startswith("cpu")
                           else "measured (nvml-energy-counter)") for d in job.energy_by_device},
            "energy_by_class": {"gpu": "measured", "cpu": "estimated"},
            "carbon": {"intensity": "electricitymaps", "kind": "actual", "pue": spec.pue},
            "cost": f"energy at {spec.price_per_kwh} USD/kWh",
            "attribution": "the tree's share of each device's active energy; idle separate",
        },
    )


def _write_intensity(
    store: Store, spec: SeedSpec, intensity: dict[tuple[str, int], float], end_s: int
) -> None:
    """Actuals up to the end of the span, then a 48 h forecast fetched at the end."""
    rows = []
    for (zone, hour), value in sorted(intensity.items()):
        kind = "actual" if hour < end_s else "forecast"
        fetched = hour + 3600 if kind == "actual" else end_s
        # The forecast is what the provider predicted: close to, not equal to, what happened.
        rows.append((zone, "electricitymaps", kind, "average", float(hour), float(hour + 3600),
                     value, float(fetched)))
    store.conn.execute("BEGIN")
    store.conn.executemany(
        "INSERT OR IGNORE INTO intensity_points (zone, provider, kind, signal, start_s, end_s, "
        "intensity_g_per_kwh, fetched_at_s) VALUES (?,?,?,?,?,?,?,?)", rows)
    store.conn.execute("COMMIT")


def _write_deferred(
    store: Store,
    spec: SeedSpec,
    jobs: list[_Job],
    intensity: dict[tuple[str, int], float],
    end_s: int,
) -> None:
    """One deferred job that ran (with its realised saving), one still queued for tomorrow."""
    zone = spec.zones[0]
    done = next((j for j in jobs if j.kind == "training" and j.status == "finished"), None)
    rows = []
    if done is not None:
        hour = done.start_s - done.start_s % 3600
        submitted = hour - 6 * 3600
        planned = intensity.get((zone, hour), 200.0)
        # Deferred to a cleaner window: running at submit time would have been dirtier.
        base = max(planned * 1.25, intensity.get((zone, submitted - submitted % 3600), 0.0))
        rows.append({
            "id": "def001", "name": done.name, "command": json.dumps(["python", "train.py"]),
            "zone": zone, "submitted_s": float(submitted), "deadline_s": float(done.end_s + 7200),
            "duration_s": float(done.end_s - done.start_s), "interruptible": 0, "status": "done",
            "plan": json.dumps([[done.start_s, done.end_s]]), "plan_intensity_g_per_kwh": planned,
            "baseline_intensity_g_per_kwh": base, "expected_co2e_g": done.co2e_g,
            "planned_at_s": float(submitted), "forecast_fetched_at_s": float(submitted),
            "job_id": done.id, "realised_co2e_g": done.co2e_g,
            "runs": json.dumps([[done.start_s, done.end_s]]),
            "realised_baseline_co2e_g": done.co2e_g * base / planned,
        })
    best = min((h for (z, h) in intensity if z == zone and end_s <= h < end_s + 24 * 3600),
               key=lambda h: intensity[(zone, h)], default=end_s + 3600)
    rows.append({
        "id": "def002", "name": "nightly-retrain", "command": json.dumps(["python", "train.py"]),
        "zone": zone, "submitted_s": float(end_s - 600), "deadline_s": float(end_s + 30 * 3600),
        "duration_s": 7200.0, "interruptible": 1, "status": "queued",
        "plan": json.dumps([[best, best + 7200]]),
        "plan_intensity_g_per_kwh": intensity.get((zone, best), 150.0),
        "baseline_intensity_g_per_kwh": intensity.get((zone, end_s - end_s % 3600), 300.0),
        "expected_co2e_g": 120.0, "planned_at_s": float(end_s - 600),
        "forecast_fetched_at_s": float(end_s), "runs": "[]",
        "saving_band_g_per_kwh": 30.0,  # one sigma of the saving, from the forecast error
    })
    with store.conn:
        store.db["deferred_jobs"].insert_all(rows)
