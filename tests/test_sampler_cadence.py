"""The sampling loop wakes at the power-poll cadence only when a collector polls (issue 16: each
wake-up costs CPU; a CPU-only node need only wake to collect, once a second)."""

from __future__ import annotations

from pathlib import Path

import pytest

from carbonwatch.clock import ManualClock
from carbonwatch.collectors.cpu_model import CpuTdp, TdpCpuCollector
from carbonwatch.collectors.gpu import GpuCollector
from carbonwatch.collectors.ram import W_PER_GIB, RamModelCollector
from carbonwatch.collectors.trace import load_trace
from carbonwatch.collectors.trace_gpu import ReplayGpuBackend
from carbonwatch.grid.static import StaticSource, world_average
from carbonwatch.ledger import EnergyLedger
from carbonwatch.pricing import Pricing
from carbonwatch.sampler import Sampler

TRACE = Path(__file__).parent / "fixtures" / "h200-shared-gpu"


def _cpu_ram() -> list:
    cpu = TdpCpuCollector(tdp=CpuTdp("test cpu", 100.0, None, "test"), load=lambda now_s: 0.5)
    ram = RamModelCollector(memory=lambda: (8 * 2**30, 4 * 2**30))
    return [cpu, ram]


def _wake_times(sampler: Sampler, start_s: float, until_s: float) -> list[float]:
    sampler.start(start_s)
    now_s, wakes = start_s, []
    while True:
        now_s = sampler.step(now_s)
        if now_s > until_s:
            return wakes
        wakes.append(now_s)


def test_a_cpu_only_sampler_wakes_once_a_second_and_measures_every_second():
    ledger = EnergyLedger(Pricing())
    sampler = Sampler(_cpu_ram(), intensity=StaticSource(world_average()), owners=dict,
                      sinks=[ledger], power_interval_s=0.1, counter_interval_s=1.0)
    wakes = _wake_times(sampler, 1000.0, 1010.0)
    assert wakes == [1000.0 + k for k in range(1, 11)]
    # Nothing is lost by not waking at 10 Hz: the 10 s are all measured, 100 W of TDP at half
    # load (codecarbon's model: 10 % + 90 % x 0.5^3 = 21.25 W) and 8 GiB of RAM.
    expected_j = 21.25 * 10 + W_PER_GIB * 8 * 10
    assert ledger.device_total_j() == pytest.approx(expected_j, rel=1e-9)


def test_a_gpu_makes_the_sampler_poll_ten_times_a_second():
    trace = load_trace(TRACE)
    clock = ManualClock(trace.start_s)
    gpu = GpuCollector(ReplayGpuBackend(trace, clock), clock=clock)
    sampler = Sampler([gpu, *_cpu_ram()], intensity=StaticSource(world_average()), owners=dict,
                      power_interval_s=0.1, counter_interval_s=1.0)
    wakes = _wake_times(sampler, trace.start_s, trace.start_s + 2.0)
    assert len(wakes) >= 19  # every 0.1 s (floats: 19 or 20 within the 2 s)
    assert max(b - a for a, b in zip(wakes, wakes[1:], strict=False)) <= 0.1 + 1e-9
