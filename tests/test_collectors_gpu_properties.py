"""Properties of GpuCollector over arbitrary traces: counter energy is conserved and every
interval's segments sum to its energy, whatever the power shape or polling rates."""

import math
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from carbonwatch.clock import ManualClock
from carbonwatch.collectors.gpu import GpuCollector
from carbonwatch.collectors.replay import ReplayGpuBackend, Trace, drive


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
