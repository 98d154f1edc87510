"""The PromQL the fleet view runs, built from the metric names the daemon exposes.

Pure functions of their arguments, so the queries are tested and documented as text. Why they
look the way they do:

- A daemon's counters resume from its store after a restart, but the restarted daemon may come
  back under another ``instance`` (a DaemonSet pod gets a new IP). Taking the *max* over target
  labels for each series of the daemon's own labels first counts such a node once, not twice.
- A daemon folds the series of jobs that ended long ago into its ``job_id=""`` series (see
  ``carbonwatch.daemon.metrics``): the folded job's series stops, its value moves. So a total is
  taken over the series a node exposes *at one scrape*: now for a node Prometheus sees now, and at
  its last scrape (``@ t``) for a node that stopped answering, so a node going down does not make
  the fleet's totals drop and a fold is never counted twice. Where that time is unknown, the
  node's series at their last values within the lookback stand in (``last_over_time``).
- Sums by node, device, model and phase do not move at a fold. Figures over a window are the
  ``increase`` of those sums (a subquery), which also survives counter resets (a daemon whose
  store was lost starts again at zero). Per job, over a window, the jobs' own series' increase;
  what they leave of the total is the ``job_id=""`` group.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

from carbonwatch.fleet.promql import quote

ENERGY = "carbonwatch_energy_joules_total"
EMISSIONS = "carbonwatch_emissions_grams_total"
COST = "carbonwatch_cost_total"
CALLS = "carbonwatch_inference_calls_total"
DROPPED = "carbonwatch_inference_spans_dropped_total"
UP = "carbonwatch_up"
SCRAPE_UP = "up"  # Prometheus's own per-target series: 0 when the last scrape failed

JOB_LABELS = ("job_id", "job_name")
FOLD_STABLE = ("node", "device", "model", "phase")  # a fold keeps these
ENERGY_LABELS = (*FOLD_STABLE, *JOB_LABELS)
GROUPS = ("node", "model", "phase", "device", *JOB_LABELS)
_RE2_SPECIAL = re.compile(r"([\\.+*?()|\[\]{}^$])")  # escaped in a node-name regex (RE2)


def _dur(seconds: float) -> str:
    return f"{max(1, round(seconds))}s"


def series_labels(metric: str) -> tuple[str, ...]:
    """The labels the daemon itself puts on ``metric``'s series (target labels excluded)."""
    if metric == CALLS:
        return ("node", "model")
    return (*ENERGY_LABELS, "currency") if metric == COST else ENERGY_LABELS


def group_labels(group_by: Sequence[str]) -> tuple[str, ...]:
    unknown = [g for g in group_by if g not in GROUPS]
    if unknown:
        raise ValueError(f"group_by: unknown {', '.join(unknown)}; use any of {', '.join(GROUPS)}")
    return tuple(group_by)


def _by(metric: str, by: Sequence[str]) -> str:
    if metric == COST and "currency" not in by:
        by = (*by, "currency")  # money in two currencies is never added up
    return ", ".join(by)


def counter_total(
    metric: str,
    by: Sequence[str],
    *,
    frozen: Mapping[str, float | None] | None = None,
    lookback_s: float = 3600.0,
) -> str:
    """Σ ``metric`` by ``by``, cumulative: every series a node exposes now, and for each node in
    ``frozen`` (nodes not answering: node -> time of its last scrape, None where unknown) its
    series at that scrape. ``frozen`` None or empty: only nodes Prometheus sees now."""
    own = ", ".join(series_labels(metric))
    parts = [metric]
    for node, t_s in sorted((frozen or {}).items()):
        if t_s is not None:
            parts.append(f"{metric}{{node={quote(node)}}} @ {t_s:.3f}")
    unknown = sorted(n for n, t in (frozen or {}).items() if t is None)
    if unknown:
        regex = quote("|".join(_RE2_SPECIAL.sub(r"\\\1", n) for n in unknown))
        parts.append(f"last_over_time({metric}{{node=~{regex}}}[{_dur(lookback_s)}])")
    inner = " or ".join(parts)
    return f"sum by ({_by(metric, by)}) (max by ({own}) ({inner}))"


def window_step_s(window_s: float) -> float:
    """The subquery resolution of a window: about 1,000 points (at least 1 s apart)."""
    return max(1.0, window_s / 1000)


def window_total(metric: str, by: Sequence[str], window_s: float) -> str:
    """Σ over the last ``window_s`` of ``metric`` by ``by`` (no job label): the increase of the
    per-(node, device, model, phase) sums, which a fold leaves unchanged."""
    stable = [lb for lb in series_labels(metric) if lb not in JOB_LABELS]
    own = ", ".join(series_labels(metric))
    inner = f"sum by ({', '.join(stable)}) (max by ({own}) ({metric}))"
    window = f"{_dur(window_s)}:{_dur(window_step_s(window_s))}"
    return f"sum by ({_by(metric, by)}) (increase(({inner})[{window}]))"


def window_jobs(metric: str, by: Sequence[str], window_s: float) -> str:
    """Σ over the last ``window_s`` of the jobs' own series (``job_id`` not empty) by ``by``."""
    return f'sum by ({_by(metric, by)}) (increase({metric}{{job_id!=""}}[{_dur(window_s)}]))'


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
