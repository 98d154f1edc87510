"""Per-call energy accuracy on generated traces with known per-call energy: overlap time alone
against the fitted power model, through the same path as ``carbonwatch replay DIR --calls``.

The traces come from :mod:`carbonwatch.testing.synthetic`: a call of work ``w`` lasts
``c + d*w`` seconds and draws ``a + b*w`` watts, so its power and its duration both grow with its
work; the power readings trail and blur the power as NVML's do, and the per-process SM samples are
sparse. Each call's true energy is its demand times its duration. Reported per scenario (a
service alone on the GPU, and beside a trainer) over several seeds: the median and p90 of
|estimate - truth| / truth over all calls, the calls' sum against the service's true active
energy, the calls given 0 J, and per weight class the mean estimate over the mean truth.

    .venv/bin/python benchmarks/bench_calls_accuracy.py [--seeds 1 2 3 4 5 6 7 8] [--markdown]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np

from carbonwatch.testing.synthetic import PRESETS, generate
from carbonwatch.trace_calls import replay_calls

SCENARIOS = {"alone": "solo_service", "beside a trainer": "shared"}


def measure(scenario: str, seed: int, fit: bool) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        truth = generate(Path(tmp), PRESETS[scenario](), seed)
        report = replay_calls(tmp, fit=fit)
    got = np.array([c["energy_j"] for c in report.calls])
    want = np.array(truth.call_energy_j)
    weight = np.array([c["weight"] for c in report.calls])
    [service] = report.services
    given = service["energy_j"] / truth.process_energy_j[service["pid"]]
    return {
        "err": np.abs(got - want) / want,
        # The split alone: against the truth scaled by what the device attribution gave it.
        "split_err": np.abs(got - want * given) / (want * given),
        "given": given,
        "sum_ratio": got.sum() / truth.process_energy_j[service["pid"]],
        "zero": int((got <= 0).sum()),
        "calls": len(got),
        "fitted": report.fitted_calls,
        "by_class": {float(w): (got[weight == w].mean() / want[weight == w].mean(),
                                float(np.median(np.abs(got - want)[weight == w]
                                                / want[weight == w])))
                     for w in np.unique(weight)},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3, 4, 5, 6, 7, 8])
    parser.add_argument("--markdown", action="store_true", help="print markdown tables")
    args = parser.parse_args()

    summary = []
    classes: dict[tuple[str, str], dict[float, list[tuple[float, float]]]] = {}
    for label, scenario in SCENARIOS.items():
        for method, fit in (("overlap time", False), ("power fit", True)):
            runs = [measure(scenario, seed, fit) for seed in args.seeds]
            err = np.concatenate([r["err"] for r in runs])
            split_err = np.concatenate([r["split_err"] for r in runs])
            sums = [r["sum_ratio"] for r in runs]
            given = [r["given"] for r in runs]
            summary.append((label, method, float(np.median(err)), float(np.quantile(err, 0.9)),
                            min(sums), max(sums), sum(r["zero"] for r in runs),
                            sum(r["fitted"] for r in runs), sum(r["calls"] for r in runs),
                            float(np.median(split_err)), min(given), max(given)))
            acc = classes.setdefault((label, method), {})
            for r in runs:
                for w, v in r["by_class"].items():
                    acc.setdefault(w, []).append(v)
            print(f"{label:16} {method:12} median {summary[-1][2]:6.1%}  p90 {summary[-1][3]:6.1%}"
                  f"  calls' sum / true {min(sums):.3f}..{max(sums):.3f}  zero-J calls "
                  f"{summary[-1][6]}  fitted {summary[-1][7]}/{summary[-1][8]}", flush=True)

    if args.markdown:
        print(f"\nSeeds {args.seeds}; errors over all calls of all seeds.\n")
        print("| service | split | median error | p90 error | calls' sum / true active "
              "(per seed) | calls at 0 J | calls by power fit | service given / true (device) "
              "| median error vs given |")
        print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
        for label, method, med, p90, lo, hi, zero, fitted, n, split, g_lo, g_hi in summary:
            print(f"| {label} | {method} | {med:.1%} | {p90:.1%} | {lo:.3f} .. {hi:.3f} | "
                  f"{zero} | {fitted} / {n} | {g_lo:.3f} .. {g_hi:.3f} | {split:.1%} |")
    weights = sorted({w for acc in classes.values() for w in acc})
    print("\nPer weight class: mean estimate / mean truth (median error), mean over seeds\n")
    print("| service | split | " + " | ".join(f"w={w:g}" for w in weights) + " |")
    print("| --- | --- | " + " | ".join("---" for _ in weights) + " |")
    for (label, method), acc in classes.items():
        cells = []
        for w in weights:
            vals = acc.get(w, [])
            ratio = float(np.mean([v[0] for v in vals])) if vals else float("nan")
            med = float(np.mean([v[1] for v in vals])) if vals else float("nan")
            cells.append(f"{ratio:.2f} ({med:.0%})")
        print(f"| {label} | {method} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
