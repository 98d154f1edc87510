"""Accuracy on the recorded H200 trace: carbonwatch's GPU total against the energy counter, and the
error of plain power polling (what a tracker that only reads power does) at several intervals.

    .venv/bin/python benchmarks/bench_accuracy.py [TRACE_DIR]
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from carbonwatch.collectors.replay import Fault, FaultKind, load_trace
from carbonwatch.replayer import replay_trace

DEFAULT_TRACE = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "h200-shared-gpu"


def polled_power_energy_j(trace, interval_s: float) -> float:
    """Energy a power poller would report: read power every interval_s from the trace start and
    hold each reading until the next (rectangle rule), over the counter's window."""
    import bisect

    t, end, energy_j = trace.start_s, trace.end_s, 0.0
    while t < end:
        i = max(bisect.bisect_right(trace.power_t_s, t) - 1, 0)
        step = min(interval_s, end - t)
        energy_j += trace.power_mw[i] / 1000.0 * step
        t += interval_s
    return energy_j


def main() -> None:
    trace_dir = Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_TRACE
    trace = load_trace(trace_dir)
    counter_j = trace.energy_j
    print(f"trace {trace_dir.name}: {trace.gpu_name}, {trace.end_s - trace.start_s:.1f} s, "
          f"energy counter delta {counter_j:.1f} J")
    t0 = time.perf_counter()
    report = replay_trace(trace_dir)
    elapsed = time.perf_counter() - t0
    print(f"carbonwatch (counter 1 s, power 0.1 s): {report.total_energy_j:.1f} J, "
          f"error {report.error_pct:+.3f} %  (replay took {elapsed:.2f} s)")
    fallback = replay_trace(trace_dir, faults=[Fault(FaultKind.COUNTER_UNSUPPORTED)])
    print(f"carbonwatch, counter NotSupported -> power integral at 0.1 s ({fallback.provenance}): "
          f"{fallback.total_energy_j:.1f} J, error {fallback.error_pct:+.2f} %")
    for interval_s in (0.1, 1.0, 5.0, 15.0):
        e = polled_power_energy_j(trace, interval_s)
        print(f"plain power polling every {interval_s:>4} s: {e:8.1f} J, "
              f"error {100 * (e - counter_j) / counter_j:+.2f} %")


if __name__ == "__main__":
    main()
