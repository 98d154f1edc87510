"""Truth by construction: replay-format GPU traces generated from a known power model.

A recorded trace has no ground truth for how its energy splits among processes; here the truth is
the model: the GPU draws ``idle_w`` always; a steady *trainer* runs kernels in steps (busy
``sm_busy`` of each step) drawing ``power_w`` above idle while busy; a bursty, light inference
*service* answers calls with exponential gaps (a dense burst, then a quiet stretch), a call of work
``weight`` lasting ``c + d*weight`` s and drawing ``a + b*weight`` W while it runs (calls may
overlap, each drawing its own demand), plus ``between_calls_w`` while present and idle; demands add.

From that exact power function it derives what NVML would show, in the format
:mod:`carbonwatch.collectors.trace` defines and :mod:`carbonwatch.collectors.recorder` writes:

- ``energy.csv``: the cumulative counter (integer mJ) moves every ``counter_period_s`` (100 ms),
  read every 100 ms a few ms after it moved;
- ``power.csv``: the device updates its power reading every 100 ms to the mean power over the last
  ``power_lag_s`` (then, with ``power_tail_s`` > 0, through a first-order lag, like the H200 that
  read 113 W while its counter showed 80 W); polled every 10 ms, so the reading trails the truth;
- ``process_util.csv``: one sample per present process every ``sample_period_s`` (+-20 %), its SM%
  the *time-based* busy fraction over the sample's window (so a bursty, light process looks busy),
  each sample missing with probability ``sample_missing``; read by a poll every 0.5 s;
- ``events.csv``, ``calls.csv`` (start_s, end_s, batch, pid, weight), ``meta.json``; and
  ``truth.json``: idle power, each process's true active energy, each call's true energy
  (calls.csv order), the service's between-call energy, the counter total.

Everything is seeded: one (scenario, seed) always writes the same trace.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

TRUTH_FILE = "truth.json"


@dataclass(frozen=True)
class TrainerModel:
    """A steady training process: kernels back to back, busy ``sm_busy`` of the time.

    Times are seconds from the trace start; ``exit_s`` None means 2 s before the trace ends."""

    power_w: float = 350.0  # drawn above idle while its kernels run
    sm_busy: float = 0.9
    step_s: float = 0.03  # one training step; each is 80-120 % of this long
    launch_s: float = 3.0
    exit_s: float | None = None
    pid: int = 4101
    role: str = "train"


@dataclass(frozen=True)
class ServiceModel:
    """A bursty inference service. Calls arrive with exponential gaps (mean ``mean_gap_s`` during a
    burst of ``burst_s``, ``quiet_mean_gap_s`` during the ``quiet_s`` after it); each call's work
    ``weight`` is drawn from ``weights`` (with ``weight_probs``, uniform when None)."""

    demand_a_w: float = 40.0  # a: watts a call draws whatever its size
    demand_b_w: float = 0.5  # b: watts per unit of weight
    duration_c_s: float = 0.003  # c: seconds a call lasts whatever its size
    duration_d_s: float = 0.00005  # d: seconds per unit of weight
    weights: tuple[float, ...] = (1, 2, 4, 8, 16, 32, 64, 128, 256)
    weight_probs: tuple[float, ...] | None = None
    mean_gap_s: float = 0.008
    burst_s: float = 2.0
    quiet_s: float = 2.0
    quiet_mean_gap_s: float = 0.2
    between_calls_w: float = 0.0  # drawn above idle while present and no call runs
    launch_s: float = 3.0
    exit_s: float | None = None
    pid: int = 4202
    role: str = "infer"

    def demand_w(self, weight: float) -> float:
        return self.demand_a_w + self.demand_b_w * weight

    def duration_s(self, weight: float) -> float:
        return self.duration_c_s + self.duration_d_s * weight


@dataclass(frozen=True)
class Scenario:
    duration_s: float = 30.0
    idle_w: float = 80.0
    trainer: TrainerModel | None = None
    service: ServiceModel | None = None
    power_lag_s: float = 0.1  # the power reading is the mean over this window...
    power_tail_s: float = 0.0  # ...then lags further with this time constant (0: not at all)
    sample_period_s: float = 0.5  # per-process SM samples, each 80-120 % of this apart
    sample_missing: float = 0.2  # probability that one sample is lost
    extra_trainers: tuple[TrainerModel, ...] = ()
    counter_period_s: float = 0.1  # the counter and the power reading move this often
    power_poll_s: float = 0.01
    process_poll_s: float = 0.5
    start_s: float = 1_800_000_000.0  # Unix time of the first reading
    gpu_name: str = "Synthetic GPU (carbonwatch.testing.synthetic)"
    uuid: str = "GPU-5e5e5e5e-0000-4000-8000-000000000001"
    counter_offset_mj: int = 123_456_789  # the counter's value at the start (since driver load)

    def trainers(self) -> tuple[TrainerModel, ...]:
        return ((self.trainer,) if self.trainer else ()) + self.extra_trainers


# --- the truth -----------------------------------------------------------------------------------


class _Steps:
    """A piecewise-constant function of time from (t, delta) edges, with its exact integral."""

    def __init__(self, edges: Sequence[tuple[float, float]], indicator: bool = False) -> None:
        order = sorted(range(len(edges)), key=lambda i: edges[i][0])
        self.t = np.array([edges[i][0] for i in order], dtype=float)
        level = np.cumsum(np.array([edges[i][1] for i in order], dtype=float))
        if indicator:  # overlapping spans count once: busy or not
            level = (level > 0.5).astype(float)
        self.level = level
        if len(self.t):
            self.cum = np.concatenate([[0.0], np.cumsum(level[:-1] * np.diff(self.t))])
        else:
            self.cum = np.zeros(0)

    def integral(self, t: Any) -> Any:
        """Integral from -inf to ``t`` (scalar or array)."""
        t_arr = np.asarray(t, dtype=float)
        if not len(self.t):
            return np.zeros_like(t_arr) if t_arr.ndim else 0.0
        i = np.searchsorted(self.t, t_arr, side="right") - 1
        ic = np.maximum(i, 0)
        out = np.where(i < 0, 0.0, self.cum[ic] + self.level[ic] * (t_arr - self.t[ic]))
        return out if t_arr.ndim else float(out)

    def between(self, t0: Any, t1: Any) -> Any:
        return self.integral(t1) - self.integral(t0)


@dataclass
class Truth:
    """What really happened. Energies are joules over the counter's window [start_s, end_s]."""

    idle_w: float
    start_s: float
    end_s: float
    counter_total_j: float  # what the counter says (integer mJ)
    true_total_j: float  # the exact integral of the model's power
    process_energy_j: dict[int, float]  # pid -> true active energy (above idle)
    roles: dict[int, str]
    call_energy_j: list[float]  # in calls.csv order: demand_w x duration of each call
    service_between_calls_j: float
    _power: dict[int, _Steps] = field(default_factory=dict, repr=False, compare=False)
    _busy: dict[int, _Steps] = field(default_factory=dict, repr=False, compare=False)

    @property
    def idle_energy_j(self) -> float:
        return self.idle_w * (self.end_s - self.start_s)

    def active_energy_j(self, pid: int, start_s: float, end_s: float) -> float:
        """A process's true active energy within [start_s, end_s] (only on a generated Truth)."""
        if pid not in self._power:
            raise KeyError(f"no timeline for pid {pid} (a Truth loaded from JSON has none)")
        return float(self._power[pid].between(start_s, end_s))

    def busy_s(self, pid: int, start_s: float, end_s: float) -> float:
        """Seconds the process had a kernel running within [start_s, end_s]."""
        return float(self._busy[pid].between(start_s, end_s))

    def as_json(self) -> dict[str, Any]:
        return {
            "idle_w": self.idle_w,
            "start_s": self.start_s,
            "end_s": self.end_s,
            "counter_total_j": self.counter_total_j,
            "true_total_j": self.true_total_j,
            "idle_energy_j": self.idle_energy_j,
            "processes": {
                str(pid): {"role": self.roles[pid], "energy_j": e}
                for pid, e in sorted(self.process_energy_j.items())
            },
            "call_energy_j": self.call_energy_j,
            "service_between_calls_j": self.service_between_calls_j,
        }


def load_truth(trace_dir: str | Path) -> Truth:
    """Read ``truth.json`` back, without the timelines (window queries need :func:`generate`)."""
    data = json.loads((Path(trace_dir) / TRUTH_FILE).read_text())
    procs = data["processes"]
    return Truth(
        idle_w=float(data["idle_w"]),
        start_s=float(data["start_s"]),
        end_s=float(data["end_s"]),
        counter_total_j=float(data["counter_total_j"]),
        true_total_j=float(data["true_total_j"]),
        process_energy_j={int(p): float(v["energy_j"]) for p, v in procs.items()},
        roles={int(p): str(v["role"]) for p, v in procs.items()},
        call_energy_j=[float(e) for e in data["call_energy_j"]],
        service_between_calls_j=float(data["service_between_calls_j"]),
    )


# --- simulation ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Call:
    start_s: float
    end_s: float
    weight: float
    demand_w: float

    @property
    def energy_j(self) -> float:
        return self.demand_w * (self.end_s - self.start_s)


def _window(launch_s: float, exit_s: float | None, scenario: Scenario) -> tuple[float, float]:
    end = scenario.duration_s - 2.0 if exit_s is None else exit_s
    t0 = scenario.start_s
    if not 0.0 <= launch_s < end <= scenario.duration_s:
        raise ValueError(f"process window [{launch_s}, {end}] must lie inside the trace")
    return t0 + launch_s, t0 + end


def _trainer_spans(model: TrainerModel, scenario: Scenario, rng: np.random.Generator):
    launch, exit_ = _window(model.launch_s, model.exit_s, scenario)
    spans = []
    t = launch
    while t < exit_:
        step = model.step_s * rng.uniform(0.8, 1.2)
        busy = min(model.sm_busy * step, exit_ - t)
        spans.append((t, t + busy))
        t += step
    return launch, exit_, spans


def _service_calls(model: ServiceModel, scenario: Scenario, rng: np.random.Generator):
    launch, exit_ = _window(model.launch_s, model.exit_s, scenario)
    weights = np.array(model.weights, dtype=float)
    probs = None
    if model.weight_probs is not None:
        probs = np.array(model.weight_probs, dtype=float)
        probs = probs / probs.sum()
    period = model.burst_s + model.quiet_s
    calls: list[_Call] = []
    t = launch
    while True:
        in_burst = model.quiet_s <= 0 or (t - launch) % period < model.burst_s
        t += rng.exponential(model.mean_gap_s if in_burst else model.quiet_mean_gap_s)
        w = float(rng.choice(weights, p=probs))
        end = t + model.duration_s(w)
        if end > exit_:
            break
        calls.append(_Call(t, end, w, model.demand_w(w)))
    return launch, exit_, calls


def _merge(spans: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
    out: list[tuple[float, float]] = []
    for a, b in sorted(spans):
        if out and a <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], b))
        else:
            out.append((a, b))
    return out


def generate(out_dir: Path, scenario: Scenario, seed: int) -> Truth:
    """Write a trace for ``scenario`` into ``out_dir`` (created) and return its truth."""
    if scenario.sample_missing < 0 or scenario.sample_missing >= 1:
        raise ValueError("sample_missing must be in [0, 1)")
    rng = np.random.default_rng(seed)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    t0 = scenario.start_s
    t_end = t0 + scenario.duration_s

    power: dict[int, _Steps] = {}
    busy: dict[int, _Steps] = {}
    presence: dict[int, tuple[float, float]] = {}
    roles: dict[int, str] = {}
    energy: dict[int, float] = {}
    calls: list[_Call] = []
    service_pid: int | None = None
    between_j = 0.0

    for model in scenario.trainers():
        if model.pid in roles:
            raise ValueError(f"pid {model.pid} is used twice")
        launch, exit_, spans = _trainer_spans(model, scenario, rng)
        presence[model.pid], roles[model.pid] = (launch, exit_), model.role
        power[model.pid] = _Steps(
            [e for a, b in spans for e in ((a, model.power_w), (b, -model.power_w))]
        )
        busy[model.pid] = _Steps([e for a, b in spans for e in ((a, 1.0), (b, -1.0))], True)
        energy[model.pid] = math.fsum(model.power_w * (b - a) for a, b in spans)
    if scenario.service is not None:
        model_s = scenario.service
        if model_s.pid in roles:
            raise ValueError(f"pid {model_s.pid} is used twice")
        service_pid = model_s.pid
        launch, exit_, calls = _service_calls(model_s, scenario, rng)
        presence[service_pid], roles[service_pid] = (launch, exit_), model_s.role
        union = _merge([(c.start_s, c.end_s) for c in calls])
        edges = [e for c in calls for e in ((c.start_s, c.demand_w), (c.end_s, -c.demand_w))]
        if model_s.between_calls_w > 0:
            w = model_s.between_calls_w
            edges += [(launch, w), (exit_, -w)]
            edges += [e for a, b in union for e in ((a, -w), (b, w))]
            between_j = w * ((exit_ - launch) - math.fsum(b - a for a, b in union))
        power[service_pid] = _Steps(edges)
        busy[service_pid] = _Steps([e for a, b in union for e in ((a, 1.0), (b, -1.0))], True)
        energy[service_pid] = math.fsum(c.energy_j for c in calls) + between_j
    any_busy = _Steps(_all_busy_edges(busy), True)

    def total_e(t: Any) -> Any:  # true energy since t0, J (idle included)
        e = scenario.idle_w * (np.asarray(t, dtype=float) - t0)
        for s in power.values():
            e = e + s.integral(t)
        return e

    # Counter: moves at t0 + k*period to the exact energy so far (integer mJ).
    period = scenario.counter_period_s
    n_ticks = int(math.floor(scenario.duration_s / period + 1e-9))
    ticks = t0 + period * np.arange(n_ticks + 1)
    counter_mj = scenario.counter_offset_mj + np.floor(total_e(ticks) * 1000.0).astype(np.int64)
    # Read a few ms after each move (and once more at the very end, where the replay stops).
    energy_t = ticks + rng.uniform(0.001, 0.004, size=len(ticks))
    energy_t[0] = t0

    # Power: at each tick, the mean over the last power_lag_s, optionally lagged further.
    lag = scenario.power_lag_s
    mean_w = (total_e(ticks) - total_e(ticks - lag)) / lag
    reported = mean_w.copy()
    if scenario.power_tail_s > 0:
        alpha = 1.0 - math.exp(-period / scenario.power_tail_s)
        level = scenario.idle_w
        for i, m in enumerate(mean_w):
            level += alpha * (m - level)
            reported[i] = level
    util = np.clip(np.rint(100.0 * any_busy.between(ticks - lag, ticks) / lag), 0, 100)
    n_polls = int(math.floor(scenario.duration_s / scenario.power_poll_s + 1e-9))
    power_t = t0 + scenario.power_poll_s * np.arange(n_polls + 1)
    power_t[-1] = min(power_t[-1], energy_t[-1])
    idx = np.searchsorted(ticks, power_t, side="right") - 1

    _write_csv(
        out_dir / "power.csv",
        ("t_s", "power_mW", "gpu_util_pct"),
        (
            (float(t), int(round(reported[i] * 1000.0)), int(util[i]))
            for t, i in zip(power_t, idx, strict=True)
        ),
    )
    _write_csv(
        out_dir / "energy.csv",
        ("t_s", "energy_mJ"),
        ((float(t), int(v)) for t, v in zip(energy_t, counter_mj, strict=True)),
    )
    _write_csv(
        out_dir / "process_util.csv",
        ("t_s", "pid", "sample_ts_us", "sm_util_pct", "mem_util_pct"),
        _process_samples(scenario, rng, presence, busy, t0),
    )
    events = sorted(
        [(a, f"{roles[p]}_launch") for p, (a, _) in presence.items()]
        + [(b, f"{roles[p]}_exit") for p, (_, b) in presence.items()]
    )
    _write_csv(out_dir / "events.csv", ("t_s", "event"), [*events, (float(t_end), "end")])
    _write_csv(
        out_dir / "calls.csv",
        ("start_s", "end_s", "batch", "pid", "weight"),
        ((c.start_s, c.end_s, int(round(c.weight)), service_pid, c.weight) for c in calls),
    )
    meta = {
        "gpu": scenario.gpu_name,
        "uuid": scenario.uuid,
        "pids": {roles[p]: p for p in sorted(roles)},
        "recorded_by": "carbonwatch.testing.synthetic",
        "synthetic": {"seed": seed, "scenario": asdict(scenario)},
    }
    (out_dir / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")

    end_s = float(ticks[-1])
    truth = Truth(
        idle_w=scenario.idle_w,
        start_s=t0,
        end_s=end_s,
        counter_total_j=int(counter_mj[-1] - counter_mj[0]) / 1000.0,
        true_total_j=float(total_e(end_s)),
        process_energy_j={p: float(power[p].between(t0, end_s)) for p in sorted(power)},
        roles=roles,
        call_energy_j=[c.energy_j for c in calls],
        service_between_calls_j=between_j,
        _power=power,
        _busy=busy,
    )
    # Within the window the analytic sums and the integrals agree (every process lies inside it).
    for pid, e in energy.items():
        assert math.isclose(truth.process_energy_j[pid], e, rel_tol=1e-9, abs_tol=1e-6), pid
    (out_dir / TRUTH_FILE).write_text(json.dumps(truth.as_json(), indent=1) + "\n")
    return truth


def _all_busy_edges(busy: dict[int, _Steps]) -> list[tuple[float, float]]:
    """Edges of 'some process is busy', from each process's busy indicator."""
    edges: list[tuple[float, float]] = []
    for s in busy.values():
        prev = 0.0
        for t, lv in zip(s.t, s.level, strict=True):
            if lv != prev:
                edges.append((float(t), float(lv - prev)))
                prev = float(lv)
    return edges


def _process_samples(
    scenario: Scenario,
    rng: np.random.Generator,
    presence: dict[int, tuple[float, float]],
    busy: dict[int, _Steps],
    t0: float,
) -> list[tuple[float, int, int, int, int]]:
    """One sample per process every sample_period_s +-20 %, some lost, each read at the first
    0.5 s poll at or after it (as ``nvmlDeviceGetProcessUtilization(last_seen)`` would serve it)."""
    poll_s = scenario.process_poll_s
    phase = rng.uniform(0.0, poll_s)
    rows = []
    for pid in sorted(presence):
        launch, exit_ = presence[pid]
        prev = launch
        while True:
            ts = prev + scenario.sample_period_s * rng.uniform(0.8, 1.2)
            if ts > exit_:
                break
            lost = rng.uniform() < scenario.sample_missing
            if not lost:
                sm = int(round(100.0 * busy[pid].between(prev, ts) / (ts - prev)))
                k = math.ceil((ts - t0 - phase) / poll_s)
                read_s = t0 + phase + max(k, 0) * poll_s
                if read_s <= t0 + scenario.duration_s:
                    rows.append((read_s, pid, int(ts * 1e6), sm, 0))
            prev = ts
    rows.sort(key=lambda r: (r[0], r[2]))
    return rows


def _write_csv(path: Path, header: Sequence[str], rows: Any) -> None:
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)


def solo_trainer(**overrides: Any) -> Scenario:
    """A trainer alone on the GPU, idle before and after."""
    return replace(Scenario(duration_s=30.0, trainer=TrainerModel(launch_s=3.0, exit_s=27.0)),
                   **overrides)


def solo_service(**overrides: Any) -> Scenario:
    """A bursty, light inference service alone on the GPU, idle before and after."""
    return replace(Scenario(duration_s=30.0, service=ServiceModel(launch_s=3.0, exit_s=27.0)),
                   **overrides)


def shared(**overrides: Any) -> Scenario:
    """A steady trainer and a bursty service sharing the GPU for most of the trace."""
    base = Scenario(
        duration_s=40.0,
        trainer=TrainerModel(launch_s=3.0, exit_s=37.0),
        service=ServiceModel(launch_s=5.0, exit_s=35.0),
    )
    return replace(base, **overrides)


def phased(**overrides: Any) -> Scenario:
    """A trainer alone, an idle gap, the service alone, then the service beside a second trainer."""
    base = Scenario(
        duration_s=50.0,
        trainer=TrainerModel(launch_s=3.0, exit_s=15.0),
        service=ServiceModel(launch_s=18.0, exit_s=46.0),
        extra_trainers=(TrainerModel(launch_s=30.0, exit_s=46.0, pid=4103, role="train2"),),
    )
    return replace(base, **overrides)


PRESETS = {
    "solo_trainer": solo_trainer,
    "solo_service": solo_service,
    "shared": shared,
    "phased": phased,
}
