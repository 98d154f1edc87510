"""Plotly figures and number formats for the dashboard, built from ``data`` results.

Figures are plain dicts (plotly's JSON form): building ``go.Figure`` objects validates every
property and cost more than the queries behind them. Times are shown in UTC.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from carbonwatch.dashboard import data as d
from carbonwatch.model import J_PER_KWH

Figure = dict[str, Any]

PHASE_COLORS = {"training": "#2f6db5", "inference": "#e0782f", "idle": "#a3a9b0",
                "other": "#8b6bbf"}
PALETTE = ("#2f6db5", "#e0782f", "#3a9a5b", "#c23b4e", "#8b6bbf", "#8c6d46", "#d16fb2",
           "#5f6b77", "#a8a33a", "#2aa3b5")
METRIC_LABELS = {"energy_j": "Energy (kWh)", "co2e_g": "Emissions (kg CO2e)", "cost": "Cost"}


def iso(t_s: float) -> str:
    """UTC time in the form plotly's date axes read (no zone suffix: the axis says UTC)."""
    return datetime.fromtimestamp(t_s, UTC).strftime("%Y-%m-%d %H:%M:%S")


def when(t_s: float | None) -> str:
    return "—" if t_s is None else datetime.fromtimestamp(t_s, UTC).strftime("%Y-%m-%d %H:%M UTC")


def fmt_energy(j: float) -> str:
    wh = j / 3600
    for unit, scale in (("GWh", 1e9), ("MWh", 1e6), ("kWh", 1e3)):
        if abs(wh) >= scale:
            return f"{wh / scale:,.2f} {unit}"
    return f"{wh:,.2f} Wh"


def fmt_mass(g: float) -> str:
    for unit, scale in (("t", 1e6), ("kg", 1e3)):
        if abs(g) >= scale:
            return f"{g / scale:,.2f} {unit} CO2e"
    return f"{g:,.2f} g CO2e"


def fmt_money(x: float | None, currency: str, known: bool = True) -> str:
    if x is None or not known:
        return "unknown"
    return f"{x:,.2f} {currency}" if abs(x) >= 0.1 else f"{x:,.4f} {currency}"


def per_bucket(seconds: int) -> str:
    """'minute', '5 min', 'hour', '3 h', 'day': the unit a bucketed series is per."""
    names = {60: "minute", 3600: "hour", 86400: "day", 7 * 86400: "week"}
    if seconds in names:
        return names[seconds]
    return f"{seconds // 3600} h" if seconds % 3600 == 0 else f"{seconds // 60} min"


def fmt_duration(seconds: float | None) -> str:
    if seconds is None:
        return "running"
    h, rem = divmod(int(seconds), 3600)
    return f"{h}h {rem // 60:02d}m" if h else f"{rem // 60}m {rem % 60:02d}s"


def scaled(metric: str, value: float) -> float:
    """Display unit of a metric: kWh, kg CO2e, currency."""
    return value / J_PER_KWH if metric == "energy_j" else value / 1000 if metric == "co2e_g" \
        else value


def _layout(**extra: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "template": "plotly_white",
        "font": {"family": "system-ui, -apple-system, Segoe UI, sans-serif", "size": 12},
        "margin": {"l": 56, "r": 16, "t": 36, "b": 40},
        "legend": {"orientation": "h", "y": -0.18},
        "hovermode": "x unified",
        # Keeps the user's zoom and hidden traces across the interval refreshes.
        "uirevision": "keep",
    }
    base.update(extra)
    return base


def empty_figure(text: str) -> Figure:
    return {"data": [], "layout": _layout(
        xaxis={"visible": False}, yaxis={"visible": False},
        annotations=[{"text": text, "showarrow": False, "font": {"size": 14, "color": "#666"},
                      "xref": "paper", "yref": "paper", "x": 0.5, "y": 0.5}])}


# --- overview -------------------------------------------------------------------------------
def totals_figure(ov: d.Overview, currency: str) -> Figure:
    """Training, inference, idle and other side by side, one panel per unit. ``customdata``
    carries the unrounded store figures (J, g, currency) for hover and for checking."""
    return phase_totals_figure(ov.totals, currency, ov.cost_known)


def phase_totals_figure(
    totals: Mapping[str, Mapping[str, float]], currency: str, cost_known: bool
) -> Figure:
    """``totals_figure`` of any {phase: {metric: value}} (the overview's, or the fleet's)."""
    phases = list(d.PHASES)
    traces, layout = [], _layout(hovermode="closest", showlegend=False)
    for i, metric in enumerate(d.METRICS, start=1):
        label = METRIC_LABELS[metric] if metric != "cost" else f"Cost ({currency})"
        raw = [totals.get(p, {}).get(metric, 0.0) for p in phases]
        traces.append({
            "type": "bar", "name": metric, "x": phases, "y": [scaled(metric, v) for v in raw],
            "customdata": raw, "marker": {"color": [PHASE_COLORS[p] for p in phases]},
            "xaxis": f"x{i}", "yaxis": f"y{i}",
            "hovertemplate": "%{x}: %{y:,.3f}<extra>" + label + "</extra>",
        })
        lo, hi = (i - 1) / 3 + 0.04, i / 3 - 0.04
        layout[f"xaxis{i}"] = {"domain": [lo, hi], "anchor": f"y{i}", "tickangle": -30}
        layout[f"yaxis{i}"] = {"anchor": f"x{i}", "title": {"text": label}, "rangemode": "tozero"}
        if metric == "cost" and not cost_known:
            layout["annotations"] = [{"text": "cost unknown: no energy price configured",
                                      "xref": f"x{i} domain", "yref": f"y{i} domain", "x": 0.5,
                                      "y": 0.5, "showarrow": False}]
    layout["margin"] = {"l": 56, "r": 16, "t": 16, "b": 64}
    return {"data": traces, "layout": layout}


def phase_share_figure(ov: d.Overview) -> Figure:
    values = [ov.totals[p]["energy_j"] / J_PER_KWH for p in d.PHASES]
    return {"data": [{
        "type": "pie", "hole": 0.55, "labels": list(d.PHASES), "values": values,
        "sort": False, "marker": {"colors": [PHASE_COLORS[p] for p in d.PHASES]},
        "textinfo": "label+percent", "hovertemplate": "%{label}: %{value:,.2f} kWh<extra></extra>",
    }], "layout": _layout(showlegend=False, margin={"l": 8, "r": 8, "t": 8, "b": 8},
                          annotations=[{"text": "energy", "showarrow": False,
                                        "font": {"size": 13, "color": "#555"}}])}


def cumulative_figure(ov: d.Overview, currency: str, top: int = 8) -> Figure:
    """Cumulative training (solid) and inference (dashed) per model; a marker where inference
    overtook training."""
    curves = [c for c in ov.curves if c.t_s][:top]
    if not curves:
        return empty_figure("No training or inference in this range")
    metric = ov.metric
    unit = METRIC_LABELS[metric] if metric != "cost" else f"Cost ({currency})"
    traces: list[dict[str, Any]] = []
    marks_x, marks_y, marks_text = [], [], []
    for i, c in enumerate(curves):
        color = PALETTE[i % len(PALETTE)]
        x = [iso(t) for t in c.t_s]
        for phase, dash in (("training", "solid"), ("inference", "dash")):
            traces.append({
                "type": "scatter", "mode": "lines", "x": x, "name": f"{c.model} {phase}",
                "legendgroup": c.model,
                "y": [scaled(metric, v) for v in getattr(c, phase)],
                "line": {"color": color, "dash": dash, "width": 2},
            })
        if c.crossover is not None:
            marks_x.append(iso(c.crossover.t_s))
            marks_y.append(scaled(metric, c.crossover.value))
            marks_text.append(f"{c.model}: inference overtook training")
    if marks_x:
        traces.append({
            "type": "scatter", "mode": "markers", "name": "inference overtook training",
            "x": marks_x, "y": marks_y, "text": marks_text,
            "hovertemplate": "%{text}<extra></extra>",
            "marker": {"symbol": "star", "size": 14, "color": "#c23b4e",
                       "line": {"color": "white", "width": 1}},
        })
    return {"data": traces, "layout": _layout(
        yaxis={"title": {"text": f"cumulative {unit}"}, "rangemode": "tozero"},
        xaxis={"title": {"text": "UTC"}}, hovermode="closest", legend={"orientation": "v"},
        margin={"l": 64, "r": 16, "t": 16, "b": 40})}


def provenance_figure(ov: d.Overview) -> Figure:
    """How the energy was obtained (measured counters or estimates) and which intensity priced
    it (actual grid data, forecast, static average)."""
    total = ov.total_energy_j or 1.0
    traces = []
    colors = {"measured": "#3a9a5b", "estimated": "#e0b02f", "actual": "#3a9a5b",
              "forecast": "#7fb3d5", "static": "#e0b02f", "mixed": "#b0a0d0"}
    for row, parts in (("energy", ov.energy_by_provenance),
                       ("intensity", ov.energy_by_intensity_kind)):
        for name, energy in sorted(parts.items()):
            traces.append({
                "type": "bar", "orientation": "h", "y": [row], "x": [100 * energy / total],
                "name": f"{row}: {name}", "marker": {"color": colors.get(name, "#999")},
                "text": [f"{name} {100 * energy / total:.1f}%"], "textposition": "inside",
                "hovertemplate": f"{row} {name}: %{{x:.1f}}% of energy<extra></extra>",
            })
    return {"data": traces, "layout": _layout(
        barmode="stack", showlegend=False, hovermode="closest",
        xaxis={"range": [0, 100], "title": {"text": "% of energy"}},
        margin={"l": 70, "r": 16, "t": 8, "b": 40})}


# --- models ---------------------------------------------------------------------------------
def model_trend_figure(trend: d.ModelTrend, currency: str) -> Figure:
    if not trend.t_s:
        return empty_figure(f"No inference calls for {trend.model} in this range")
    x = [iso(t) for t in trend.t_s]
    wh = [None if v is None else v / 3600 for v in trend.per_1000["energy_j"]]
    return {"data": [
        {"type": "bar", "x": x, "y": trend.calls, "name": "calls", "yaxis": "y",
         "marker": {"color": "#cfd8e3"}},
        {"type": "scatter", "mode": "lines+markers", "x": x, "y": trend.per_1000["co2e_g"],
         "name": "g CO2e per 1,000 calls", "yaxis": "y2", "line": {"color": "#c23b4e"}},
        {"type": "scatter", "mode": "lines", "x": x, "y": wh, "name": "Wh per 1,000 calls",
         "yaxis": "y2", "line": {"color": PHASE_COLORS["inference"], "dash": "dot"}},
    ], "layout": _layout(
        yaxis={"title": {"text": f"calls per {per_bucket(trend.bucket_s)}"}},
        yaxis2={"title": {"text": "per 1,000 calls"}, "overlaying": "y", "side": "right",
                "rangemode": "tozero"},
        xaxis={"title": {"text": "UTC"}}, margin={"l": 64, "r": 64, "t": 16, "b": 40})}


# --- jobs -----------------------------------------------------------------------------------
def job_power_figure(job: d.JobDetail) -> Figure:
    if not job.power_w:
        return empty_figure("No energy attributed to this job yet")
    traces = [{"type": "scatter", "mode": "lines", "name": device, "x": [iso(t) for t in ts],
               "y": watts, "line": {"color": PALETTE[i % len(PALETTE)], "shape": "hv"}}
              for i, (device, (ts, watts)) in enumerate(sorted(job.power_w.items()))]
    return {"data": traces, "layout": _layout(
        yaxis={"title": {"text": f"mean W per {per_bucket(job.bucket_s)}"},
               "rangemode": "tozero"},
        xaxis={"title": {"text": "UTC"}})}


def job_shares_figure(job: d.JobDetail) -> Figure:
    devices = sorted(job.shares)
    colors = {"this job": "#2f6db5", "other jobs": "#e0782f", "idle": "#a3a9b0",
              "other": "#8b6bbf"}
    traces = []
    for part, color in colors.items():
        kwh = [job.shares[dev][part] / J_PER_KWH for dev in devices]
        totals = [sum(job.shares[dev].values()) or 1.0 for dev in devices]
        traces.append({
            "type": "bar", "orientation": "h", "name": part, "y": devices,
            "x": [100 * job.shares[dev][part] / t for dev, t in zip(devices, totals, strict=True)],
            "customdata": kwh, "marker": {"color": color},
            "hovertemplate": f"{part}: %{{x:.1f}}% (%{{customdata:,.3f}} kWh)<extra></extra>",
        })
    return {"data": traces, "layout": _layout(
        barmode="stack", hovermode="closest", xaxis={"range": [0, 100],
                                                     "title": {"text": "% of device energy"}},
        margin={"l": 60, "r": 16, "t": 8, "b": 40}, height=max(160, 60 + 36 * len(devices)))}


# --- grid -----------------------------------------------------------------------------------
def grid_figure(view: d.GridView) -> Figure:
    traces: list[dict[str, Any]] = []
    for i, s in enumerate(view.zones):
        color = PALETTE[i % len(PALETTE)]
        for kind, points, dash in (("actual", s.actual, "solid"), ("forecast", s.forecast, "dot")):
            if not points:
                continue
            x, y = [], []
            for start, end, value in points:  # steps: each point holds over its interval
                x += [iso(start), iso(end)]
                y += [value, value]
            traces.append({"type": "scatter", "mode": "lines", "x": x, "y": y,
                           "name": f"{s.zone} {kind} ({s.provider})",
                           "line": {"color": color, "dash": dash}})
    shapes = []
    for job in view.deferred:
        # Planned: full-height bands; executed: a strip along the bottom, so a job that ran
        # exactly as planned still shows both.
        for start, end in job["plan"]:
            shapes.append(_band(start, end or start, "rgba(58,154,91,0.20)", 0.0, 1.0))
        for start, end in job["executed"]:
            if start is not None:
                shapes.append(_band(start, end or view.window.end_s, "rgba(47,109,181,0.75)",
                                    0.0, 0.06))
    if not traces:
        return empty_figure("No grid intensity recorded for this range")
    # Legend entries for the bands (shapes have no legend of their own).
    for name, color in (("planned window", "rgba(58,154,91,0.5)"),
                        ("executed window", "rgba(47,109,181,0.6)")):
        traces.append({"type": "scatter", "mode": "markers", "x": [None], "y": [None],
                       "name": name, "marker": {"symbol": "square", "size": 12, "color": color}})
    return {"data": traces, "layout": _layout(
        shapes=shapes, yaxis={"title": {"text": "g CO2e / kWh"}, "rangemode": "tozero"},
        xaxis={"title": {"text": "UTC"}},
        margin={"l": 64, "r": 16, "t": 16, "b": 40})}


def _band(start: float, end: float, color: str, y0: float, y1: float) -> dict[str, Any]:
    return {"type": "rect", "xref": "x", "yref": "paper", "x0": iso(start), "x1": iso(end),
            "y0": y0, "y1": y1, "fillcolor": color, "line": {"width": 0}, "layer": "below"}


# --- devices --------------------------------------------------------------------------------
def devices_figure(view: d.DevicesView) -> Figure:
    if not view.devices:
        return empty_figure("No device readings in this range")
    traces = []
    for i, dev in enumerate(view.devices):
        color = PALETTE[i % len(PALETTE)]
        x = [iso(t) for t in dev.t_s]
        traces.append({"type": "scatter", "mode": "lines", "x": x, "y": dev.power_w,
                       "name": dev.device_id, "legendgroup": dev.device_id,
                       "line": {"color": color, "width": 1.6}})
        traces.append({"type": "scatter", "mode": "lines", "x": x, "y": dev.idle_w,
                       "name": f"{dev.device_id} idle", "legendgroup": dev.device_id,
                       "showlegend": False, "line": {"color": color, "width": 1, "dash": "dot"},
                       "hovertemplate": "idle %{y:.0f} W<extra>" + dev.device_id + "</extra>"})
    return {"data": traces, "layout": _layout(
        yaxis={"title": {"text": f"mean W per {per_bucket(view.window.bucket_s)}"},
               "rangemode": "tozero"},
        xaxis={"title": {"text": "UTC"}}, legend={"orientation": "v"},
        margin={"l": 64, "r": 16, "t": 16, "b": 40})}


def ratio(a: float, b: float) -> str:
    return "—" if not b or not math.isfinite(a / b) else f"{a / b:,.2f}×"
