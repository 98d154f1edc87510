"""CPU per call in the CallLedger alone: spans with batch tags (as bench_ingest sends them), one
1 s GPU interval of ten readings per second, a settle per interval, per-call output on (the
settled calls as arrays, as the daemon reads them; ``--tuples`` also builds the (span, energy,
carbon, cost) tuple of each call, as ``carbonwatch replay --calls`` reads them).

    .venv/bin/python benchmarks/bench_calls_ledger.py [--calls 600000] [--no-fit] [--tuples]
"""

from __future__ import annotations

import argparse
import time

from carbonwatch.calls.ledger import NVML_POWER_LAG_S, CallLedger, CallSpan
from carbonwatch.grid.types import IntensityPoint
from carbonwatch.model import DeviceClass, EnergyInterval, Provenance
from carbonwatch.sampler import AttributedInterval


def interval(start_s: float, energy_j: float) -> AttributedInterval:
    segments = tuple((start_s + (k + 1) / 10, energy_j / 10) for k in range(10))
    iv = EnergyInterval("gpu0", DeviceClass.GPU, start_s, start_s + 1, energy_j, 0.0,
                        Provenance.MEASURED, "nvml-energy-counter", {}, segments)
    point = IntensityPoint(start_s, start_s + 1, 400.0, "actual", "average", "bench", "US", None)
    return AttributedInterval(iv, point, {"svc": energy_j})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=600_000)
    parser.add_argument("--seconds", type=int, default=60)
    parser.add_argument("--no-fit", action="store_true", help="overlap time only")
    parser.add_argument("--tuples", action="store_true", help="read each settlement's per_call")
    args = parser.parse_args()
    n, seconds = args.calls, args.seconds
    step_s = seconds / n
    spans = [CallSpan("bench", i * step_s, i * step_s + step_s * 0.8, 438,
                      {"batch": 1 << (i % 11)}) for i in range(n)]
    ledger = CallLedger(settle_s=5.0, power_lag_s=NVML_POWER_LAG_S, fit=not args.no_fit)
    per_second = n // seconds
    started = time.process_time()
    for s in range(seconds):
        ledger.add_spans("svc", spans[s * per_second:(s + 1) * per_second])
        ledger.add_interval("svc", interval(float(s), 300.0), 300.0)
        out = ledger.settle(s + 1.0)
        if args.tuples:
            out.per_call  # noqa: B018 - built on first read
    out = ledger.flush()
    if args.tuples:
        out.per_call  # noqa: B018
    cpu_s = time.process_time() - started
    print(f"{n:,} calls: {cpu_s / n * 1e6:.2f} µs of CPU a call ({n / cpu_s:,.0f} calls per "
          f"CPU-second); {ledger.fitted_calls:,} by power fit, {ledger.overlap_calls:,} by overlap")


if __name__ == "__main__":
    main()
