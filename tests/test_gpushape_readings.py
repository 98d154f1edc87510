"""PowerReadings, the ring the power-lag estimate reads: the same numbers, in the same order, as
the last N readings appended, and the same estimate as from a list of those readings."""

import random
from collections import deque

from carbonwatch.collectors.gpushape import PowerReadings, estimate_power_lag


def test_ring_holds_the_last_readings_oldest_first():
    rng = random.Random(7)
    for size in (1, 5, 64):
        ring, truth = PowerReadings(size), deque(maxlen=size)
        for i in range(3 * size + 2):
            reading = (i * 0.1 + rng.random() * 0.01, 100.0 + rng.random() * 50.0)
            ring.append(*reading)
            truth.append(reading)
            t, p = ring.arrays()
            assert len(ring) == len(truth)
            assert list(zip(t.tolist(), p.tolist(), strict=True)) == list(truth)


def test_estimate_from_the_ring_equals_the_estimate_from_the_list():
    rng = random.Random(3)
    ring, readings = PowerReadings(1200), deque(maxlen=1200)
    power_w = 100.0
    for i in range(1500):
        power_w = min(max(power_w + rng.gauss(0, 20), 60.0), 400.0)
        ring.append(i * 0.1, power_w)
        readings.append((i * 0.1, power_w))
    # Counter intervals whose energy is the readings' integral 0.6 s later (lagging power).
    intervals = []
    for k in range(90, 150):
        inside = [p for t, p in readings if k - 0.6 <= t < k + 0.4]
        intervals.append((float(k), k + 1.0, sum(inside) * 0.1))
    lag_s = estimate_power_lag(ring, intervals, 0.1)
    assert lag_s == estimate_power_lag(list(readings), intervals, 0.1)
    assert lag_s != 0.1  # the readings moved enough to tell the shifts apart
