"""Properties of GpuCollector over arbitrary traces: counter energy is conserved and every
interval's segments sum to its energy, whatever the power shape or polling rates."""

import dataclasses
import math
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from carbonwatch.clock import ManualClock
from carbonwatch.collectors.gpu import GpuCollector
from carbonwatch.collectors.trace import ProcessUtilRow, Trace
from carbonwatch.collectors.trace_gpu import ReplayGpuBackend, drive
from carbonwatch.grid.static import StaticSource, world_average
from carbonwatch.sampler import Sampler


@st.composite
def traces(draw):
    n = draw(st.integers(min_value=2, max_value=60))
    start_s = 1_700_000_000.0
    steps_s = draw(st.lists(st.floats(0.01, 0.5), min_size=n, max_size=n))
    t_s = list(start_s + t for t in _cumsum(steps_s))
    power_mw = draw(st.lists(st.integers(0, 800_000), min_size=n, max_size=n))
    gains_mj = draw(st.lists(st.integers(0, 80_000), min_size=n - 1, max_size=n - 1))
    energy_mj = [1_000_000, *(1_000_000 + g for g in _cumsum(gains_mj))]
    trace = Trace(
        directory=Path("."),
        power_t_s=t_s,
        power_mw=power_mw,
        gpu_util_pct=[0.0] * n,
        energy_t_s=t_s,
        energy_mj=energy_mj,
        process_util=[],
        events=[],
        meta={"gpu": "synthetic"},
    )
    power_interval_s = draw(st.sampled_from([0.01, 0.05, 0.1, 0.3]))
    counter_interval_s = draw(st.sampled_from([0.2, 0.5, 1.0, 2.5]))
    return trace, power_interval_s, counter_interval_s


def _cumsum(values):
    total = 0
    out = []
    for v in values:
        total += v
        out.append(total)
    return out


@settings(max_examples=60, deadline=None)
@given(traces())
def test_counter_energy_is_conserved_and_segments_sum(case):
    trace, power_interval_s, counter_interval_s = case
    clock = ManualClock(trace.start_s)
    collector = GpuCollector(ReplayGpuBackend(trace, clock))
    intervals = list(
        drive(collector, clock, trace.start_s, trace.end_s, power_interval_s, counter_interval_s)
    )
    assert math.fsum(i.energy_j for i in intervals) == pytest.approx(trace.energy_j, abs=1e-6)
    for iv in intervals:
        assert math.fsum(e for _, e in iv.segments) == pytest.approx(iv.energy_j, abs=1e-9)
        ends = [t for t, _ in iv.segments]
        assert ends == sorted(ends) and ends[-1] == iv.end_s and ends[0] > iv.start_s
        assert 0.0 <= iv.idle_energy_j <= iv.energy_j


@st.composite
def shared_traces(draw):
    """A trace as above, plus up to three processes with arbitrary, sparse SM samples and
    launch/exit events: every split path (solo, power-fit, sm-share, even, none) is reachable."""
    trace, power_interval_s, counter_interval_s = draw(traces())
    start_s, end_s = trace.start_s, trace.end_s
    pids = draw(st.lists(st.integers(100, 103), min_size=1, max_size=3, unique=True))
    rows, events, roles = [], [], {}
    for pid in pids:
        role = f"p{pid}"
        roles[role] = pid
        a = draw(st.floats(start_s - 1.0, end_s))
        b = draw(st.floats(a, end_s + 1.0))
        events += [(a, f"{role}_launch"), (b, f"{role}_exit")]
        for ts in draw(st.lists(st.floats(start_s, end_s), max_size=20)):
            read_s = ts + draw(st.floats(0.0, 1.0))
            sm = draw(st.integers(0, 100))
            rows.append(ProcessUtilRow(read_s, pid, int(ts * 1e6), sm, 0.0))
    rows.sort(key=lambda r: r.t_s)
    shared = dataclasses.replace(
        trace, process_util=rows, events=sorted(events), meta={"gpu": "synthetic", "pids": roles}
    )
    return shared, power_interval_s, counter_interval_s


@settings(max_examples=80, deadline=None)
@given(shared_traces(), st.sampled_from(["separate", "proportional", "even"]))
def test_every_shared_interval_conserves_whatever_the_samples(case, policy):
    trace, power_interval_s, counter_interval_s = case
    clock = ManualClock(trace.start_s)
    collector = GpuCollector(ReplayGpuBackend(trace, clock))
    sampler = Sampler([collector], intensity=StaticSource(world_average()),
                      owners=lambda: {pid: f"pid:{pid}" for pid in trace.pids.values()},
                      idle_policy=policy)
    intervals = list(
        drive(collector, clock, trace.start_s, trace.end_s, power_interval_s, counter_interval_s)
    )
    assert math.fsum(i.energy_j for i in intervals) == pytest.approx(trace.energy_j, abs=1e-6)
    for iv in intervals:
        assert iv.split_method in {"solo", "power-fit", "sm-share", "even", "none"}
        assert all(math.isfinite(w) and w >= 0 for w in iv.shares.values())
        parts = sampler.attribute(iv, {pid: f"pid:{pid}" for pid in trace.pids.values()}).parts
        assert all(v >= 0 for v in parts.values())
        assert math.fsum(parts.values()) == pytest.approx(iv.energy_j, abs=1e-9)
