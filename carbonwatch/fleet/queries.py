"""The PromQL the fleet view runs, built from the metric names the daemon exposes.

Pure functions of their arguments, so the queries are tested and documented as text. Why they
look the way they do:

- The daemon's ``job`` label (the carbonwatch job's name) collides with Prometheus's own target
  label ``job`` (the scrape job). With ``honor_labels: false`` (the default, and what the shipped
  scrape config keeps) Prometheus renames it ``exported_job``: the label name is a parameter.
- A daemon's counters resume from its store after a restart, but the restarted daemon may come
  back under another ``instance`` (a DaemonSet pod gets a new IP). Taking the *max* over target
  labels for each series of the daemon's own labels first counts such a node once, not twice.
- ``last_over_time(x[lookback])`` keeps a node that stopped answering at its last value, so a node
  going down does not make the fleet's totals drop; :func:`node_status` says which nodes are stale.
- ``increase(x[window])`` is the figure over a window: it survives counter resets (a daemon whose
  store was lost starts again at zero) and sums old and new instances of a restarted node.
"""

from __future__ import annotations

from collections.abc import Sequence

ENERGY = "carbonwatch_energy_joules_total"
EMISSIONS = "carbonwatch_emissions_grams_total"
COST = "carbonwatch_cost_total"
CALLS = "carbonwatch_inference_calls_total"
UP = "carbonwatch_up"
SCRAPE_UP = "up"  # Prometheus's own per-target series: 0 when the last scrape failed

ENERGY_LABELS = ("node", "device", "model", "phase")  # plus the job label
GROUPS = ("node", "model", "phase", "device", "job")


def _dur(seconds: float) -> str:
    return f"{max(1, round(seconds))}s"


def series_labels(metric: str, job_label: str) -> tuple[str, ...]:
    """The labels the daemon itself puts on ``metric``'s series (target labels excluded)."""
    if metric == CALLS:
        return ("node", "model")
    labels = (*ENERGY_LABELS, job_label)
    return (*labels, "currency") if metric == COST else labels


def group_labels(group_by: Sequence[str], job_label: str) -> tuple[str, ...]:
    unknown = [g for g in group_by if g not in GROUPS]
    if unknown:
        raise ValueError(f"group_by: unknown {', '.join(unknown)}; use any of {', '.join(GROUPS)}")
    return tuple(job_label if g == "job" else g for g in group_by)


def counter_total(
    metric: str,
    by: Sequence[str],
    *,
    job_label: str = "exported_job",
    window_s: float | None = None,
    lookback_s: float | None = 3600.0,
) -> str:
    """Σ ``metric`` by ``by`` (label names as stored). ``window_s``: the increase over the last
    ``window_s``; else the cumulative total, each series at its last value within ``lookback_s``
    (None: only series Prometheus sees now, so a down node drops out)."""
    if metric == COST and "currency" not in by:
        by = (*by, "currency")  # money in two currencies is never added up
    outer = ", ".join(by)
    if window_s is not None:
        return f"sum by ({outer}) (increase({metric}[{_dur(window_s)}]))"
    inner = f"last_over_time({metric}[{_dur(lookback_s)}])" if lookback_s else metric
    own = ", ".join(series_labels(metric, job_label))
    return f"sum by ({outer}) (max by ({own}) ({inner}))"


def node_known(lookback_s: float) -> str:
    """Every node seen within the lookback, with the last ``carbonwatch_up`` it reported."""
    return f"max by (node, instance) (last_over_time({UP}[{_dur(lookback_s)}]))"


def node_last_sample() -> str:
    """The timestamp of each node's latest sample (absent once the series went stale)."""
    return f"max by (node, instance) (timestamp({UP}))"


def node_scrape_up(lookback_s: float) -> str:
    """Prometheus's ``up`` of each node's target (absent when the target is gone from discovery)."""
    return (
        f"max by (node, instance) (last_over_time({UP}[{_dur(lookback_s)}]) * 0"
        f" + on (instance, job) group_left () {SCRAPE_UP})"
    )


def node_samples(node_literal: str, lookback_s: float) -> str:
    """The raw ``carbonwatch_up`` samples of one node (its last-seen time once it is stale)."""
    return f"{UP}{{node={node_literal}}}[{_dur(lookback_s)}]"
