"""A replayed sampling round is one instant of trace time: with an H200's 3.8 ms counter reads
imposed at 50x trace speed, each read would otherwise land ~0.19 s of trace after the time its
interval is labelled with, and the energy stored up to a time would not be the trace's counter
delta up to that time (the chaos suite's truth check failed this way, once, on a loaded machine)."""

from __future__ import annotations

import bisect
from pathlib import Path

import pytest

from carbonwatch.collectors.gpu import GpuCollector
from carbonwatch.collectors.trace import load_trace
from carbonwatch.collectors.trace_gpu import ReplayGpuBackend, read_latency
from carbonwatch.daemon.trace_clock import ReplayClock
from carbonwatch.grid.static import StaticSource, world_average
from carbonwatch.sampler import Sampler

TRACE = Path(__file__).parent / "fixtures" / "h200-shared-gpu"


def _counter_j(trace, t_s: float) -> float:
    """The recorded counter at ``t_s`` (a step function), read from the trace's own lists."""
    i = bisect.bisect_right(trace.energy_t_s, t_s) - 1
    return trace.energy_mj[max(i, 0)] / 1000.0


def test_energy_up_to_a_round_is_the_counter_delta_up_to_it() -> None:
    trace = load_trace(TRACE)
    clock = ReplayClock(trace.start_s + 10.0, speed=50.0)
    backend = ReplayGpuBackend(trace, clock, devices=2, latency=read_latency("h200"))
    sampler = Sampler([GpuCollector(backend, clock=clock)],
                      intensity=StaticSource(world_average()), owners=dict,
                      power_interval_s=0.001, counter_interval_s=0.001, instant=clock.held)
    got: list[float] = []
    sampler.sinks.append(lambda a: got.append(a.interval.energy_j))
    clock.start()
    first_s = clock.time()
    sampler.start(first_s)
    for _ in range(12):  # each round collects (both devices: a prefetched pair of reads)
        sampler.step(clock.time())
    last_s = clock.time()
    sampler.flush(last_s)
    assert last_s - first_s > 1.0  # the reads' latency moved trace time across counter steps
    expected_j = 2 * (_counter_j(trace, last_s) - _counter_j(trace, first_s))
    assert expected_j > 0
    assert sum(got) == pytest.approx(expected_j, rel=1e-9)
