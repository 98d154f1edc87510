"""The pure half of benchmarks/nvml_probe.py: summaries of what the probe read, its comparison
with the energy counter, and the printed report. No NVML, no clock: tests feed it lists."""

from __future__ import annotations

import bisect
import math
import statistics
from collections.abc import Sequence
from typing import Any

LOSS_FACTOR = 1.5  # a gap over this many spacings before a read's first new sample: samples lost


def spread_us(values_s: Sequence[float]) -> dict[str, float] | None:
    """Median and p90 (nearest rank) of durations in seconds, in microseconds."""
    if not values_s:
        return None
    ordered = sorted(values_s)
    p90 = ordered[min(len(ordered) - 1, math.ceil(0.9 * len(ordered)) - 1)]
    return {"median": round(statistics.median(ordered) * 1e6, 3), "p90": round(p90 * 1e6, 3)}


def spacing_s(samples: Sequence[tuple[int, float]]) -> dict[str, float] | None:
    gaps = [(b - a) / 1e6 for (a, _), (b, _) in zip(samples, samples[1:], strict=False)]
    if not gaps:
        return None
    return {"median": statistics.median(gaps), "min": min(gaps), "max": max(gaps)}



def buffer_follow_summary(reads: list[dict[str, Any]], spacing: float | None) -> dict[str, Any]:
    """New samples per read, the gap before each read's first new sample, and lost samples: a gap
    over LOSS_FACTOR x the buffer's median spacing (the buffer dropped them before this read)."""
    reads = [r for r in reads if not r["edge"]]
    gaps = [(r["first_us"] - r["since_us"]) / 1e6 for r in reads if r["new"] and r["since_us"]]
    new = [r["new"] for r in reads]
    return {
        "reads": len(reads), "not_found": sum(r["error"] == "NOT_FOUND" for r in reads),
        "other_errors": sum(r["error"] not in (None, "NOT_FOUND") for r in reads),
        "new_per_read": {"median": statistics.median(new), "min": min(new), "max": max(new)}
        if new else None,
        "gap_s": {"median": statistics.median(gaps), "max": max(gaps)} if gaps else None,
        "reads_with_loss": sum(g > LOSS_FACTOR * spacing for g in gaps) if spacing else None,
        "read_wall_us": spread_us([r["wall_s"] for r in reads]),
        "read_cpu_us": spread_us([r["cpu_s"] for r in reads]),
    }


# --- c. against the energy counter ---------------------------------------------------------------


def window_means(points: Sequence[tuple[float, float]], counter: Sequence[tuple[float, int]],
                 shift_s: float = 0.0) -> list[float | None]:
    """Time-weighted mean of the (t, W) points over each window between two counter reads, each
    point standing for the time since the point before (as a sample averaged over its period
    does; an irregular or sparse series is weighted by time, not by count), the points' times
    moved back by ``shift_s`` (a source that lags the truth by L matches at shift L). None where
    the points do not cover the window."""
    times = [t for t, _ in points]  # in time order, as read
    out: list[float | None] = []
    for (ta, _), (tb, _) in zip(counter, counter[1:], strict=False):
        a, b = ta + shift_s, tb + shift_s
        j = bisect.bisect_right(times, a)  # the first point after the window's start
        if j == 0 or times[-1] < b:
            out.append(None)
            continue
        energy = 0.0
        while True:
            energy += points[j][1] * (min(times[j], b) - max(times[j - 1], a))
            if times[j] >= b:
                break
            j += 1
        out.append(energy / (b - a))
    return out


def mean_abs_error_w(means: Sequence[float | None], truth: Sequence[float]) -> float | None:
    """None unless at least half the windows have a value: too few to judge."""
    pairs = [(m, t) for m, t in zip(means, truth, strict=True) if m is not None]
    if not pairs or 2 * len(pairs) < len(truth):
        return None
    return math.fsum(abs(m - t) for m, t in pairs) / len(pairs)


def against_counter(counter: Sequence[tuple[float, int]],
                    sources: dict[str, list[tuple[float, float]]]) -> dict[str, Any]:
    """Per second and over the whole window, each (t, W) source against the counter's delta."""
    if len(counter) < 2:
        return {"error": "fewer than two counter reads"}
    truth_w = [(eb - ea) / 1000.0 / (tb - ta)
               for (ta, ea), (tb, eb) in zip(counter, counter[1:], strict=False)]
    lengths = [tb - ta for (ta, _), (tb, _) in zip(counter, counter[1:], strict=False)]
    counter_j = (counter[-1][1] - counter[0][1]) / 1000.0
    out: dict[str, Any] = {"windows": len(truth_w), "counter_j": counter_j,
                           "counter_w": [round(w, 2) for w in truth_w]}
    for name, points in sources.items():
        means = window_means(points, counter)
        energy_j = (math.fsum(m * s for m, s in zip(means, lengths, strict=True) if m is not None)
                    if all(m is not None for m in means) else None)
        lags = [(mean_abs_error_w(window_means(points, counter, k / 20), truth_w), k / 20)
                for k in range(-40, 41)]
        judged = [(e, lag) for e, lag in lags if e is not None]
        best = min(judged, key=lambda p: (p[0], abs(p[1]))) if judged else None
        out[name] = {
            "mean_abs_error_w": mean_abs_error_w(means, truth_w),
            "energy_j": energy_j,
            "energy_error_pct": 100.0 * (energy_j - counter_j) / counter_j
            if energy_j is not None and counter_j else None,
            "best_lag_s": best[1] if best else None,
            "mean_abs_error_at_best_lag_w": best[0] if best else None,
            "per_window_w": [None if m is None else round(m, 2) for m in means],
        }
    return out


def _f(value: Any, spec: str = ".1f") -> str:
    return "-" if value is None else format(value, spec)


def format_summary(result: dict[str, Any]) -> str:
    lines = [f"{'read':<24} {'calls':>5} {'wall us med/p90':>16} {'cpu us med/p90':>16}  note"]
    def pair(d: dict[str, float] | None) -> str:
        return f"{_f((d or {}).get('median'))}/{_f((d or {}).get('p90'))}"

    for name, c in result["read_cost"].items():
        note = c["error"] or (f"{c['not_found']} NOT_FOUND" if c["not_found"] else "")
        lines.append(f"{name:<24} {c['calls']:>5} {pair(c['wall_us']):>16} "
                     f"{pair(c['cpu_us']):>16}  {note}")
    for kind, b in result["buffers"].items():
        sp, fo = b.get("spacing_s") or {}, b["follow"]
        lines.append(f"{kind} buffer from 0: {b['error']}" if b["error"] else
                     f"{kind} buffer from 0: {b['count']} samples over {b['span_s']:.2f} s, "
                     f"spacing {sp.get('median', 0):.4f} s ({sp.get('min', 0):.4f}-"
                     f"{sp.get('max', 0):.4f}), {b['value_type']}, newest "
                     f"{b['newest_age_s']:.3f} s old ({b['timestamp_base']})")
        if "error" in fo:
            lines.append(f"  once a second: {fo['error']}")
            continue
        per, gap = fo["new_per_read"] or {}, fo["gap_s"] or {}
        lines.append(f"  once a second: {fo['reads']} reads, {per.get('median', '-')} new "
                     f"({per.get('min', '-')}-{per.get('max', '-')}), {fo['not_found']} NOT_FOUND,"
                     f" gap {_f(gap.get('median'), '.3f')} s (max {_f(gap.get('max'), '.3f')}), "
                     f"{fo['reads_with_loss']} reads lost samples")
    vs = result["vs_counter"]
    for name in ("buffer", "polls_10hz"):
        if (v := vs.get(name)) is not None:
            lines.append(f"{name} vs counter, {vs['windows']} s: error {_f(v['mean_abs_error_w'])}"
                         f" W a second, energy {_f(v['energy_error_pct'], '+.2f')} % of "
                         f"{vs['counter_j']:.1f} J, best lag {_f(v['best_lag_s'], '+.2f')} s "
                         f"({_f(v['mean_abs_error_at_best_lag_w'])} W)")
    lines += [f"follow: {what} read failed: {err}" for what, err in result["follow_errors"].items()]
    return "\n".join(lines)
