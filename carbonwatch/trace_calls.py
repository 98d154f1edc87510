"""Per-call energy on a recorded trace: ``carbonwatch replay DIR --calls``.

The same path as a live node: the replayed GPU collector and attribution give each process its
energy per interval, and the :class:`~carbonwatch.calls.ledger.CallLedger` splits a serving
process's energy over the calls in ``DIR/calls.csv``. Users check our per-call figures on their own
recordings this way, and the tests check them against generated traces whose per-call energy is
known (:mod:`carbonwatch.testing.synthetic`).

``calls.csv``: a header row, then one row per call. ``start_s`` and ``end_s`` (Unix seconds) are
required; optional columns: ``pid`` (the serving process; default: the trace's inference process),
``model`` (default: that process's role in meta.json), ``weight``, ``tokens_in``, ``tokens_out``,
``batch`` (taken as the weight when no weight is given). Empty cells mean "not reported".
"""

from __future__ import annotations

import csv
import math
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from carbonwatch.calls.ledger import NVML_POWER_LAG_S, CallLedger, CallSpan
from carbonwatch.calls.split import METHOD_FIT
from carbonwatch.collectors.gpushare import GpuOptions
from carbonwatch.collectors.trace import load_trace
from carbonwatch.errors import InputError
from carbonwatch.sampler import AttributedInterval
from carbonwatch.trace_attribution import ReplayReport, replay_trace

CALLS_FILE = "calls.csv"
_OPTIONAL = ("pid", "model", "weight", "tokens_in", "tokens_out", "batch")
# Work measures above this are not a batch size or a token count but a unit mistake.
MAX_MEASURE = 1e15
# The first seconds of a service are held back until its power fit can be tried (see CallLedger).
WARMUP_S = 20.0


@dataclass
class CallsReport:
    replay: ReplayReport
    calls: list[dict[str, Any]]  # calls.csv order
    models: dict[str, dict[str, Any]]
    services: list[dict[str, Any]]
    fitted_calls: int
    overlap_calls: int
    power_lag_s: float
    fit: bool = True
    notes: list[str] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        out = self.replay.as_json()
        out.update({
            "apportionment": {
                "method": "power-fit with overlap-time fallback" if self.fit else "overlap-time",
                "fitted_calls": self.fitted_calls,
                "overlap_calls": self.overlap_calls,
                "power_lag_s": self.power_lag_s,
                "notes": self.notes,
            },
            "services": self.services,
            "models": self.models,
            "calls": self.calls,
        })
        return out


def _default_pid(roles: dict[int, str]) -> int | None:
    """The trace's inference process: the one pid whose role names serving, else the only pid."""
    serving = [p for p, r in roles.items() if any(w in r.lower() for w in ("infer", "serv"))]
    if len(serving) == 1:
        return serving[0]
    return next(iter(roles)) if len(roles) == 1 else None


def _cell(value: str | None, path: Path, line: int, column: str, kind: type) -> Any:
    if value is None or not value.strip():
        return None
    try:
        number = float(value.strip())
    except ValueError:
        raise InputError(f"{path}:{line}: {column} {value!r} is not a number") from None
    if not (math.isfinite(number) and 0 <= number <= MAX_MEASURE):
        raise InputError(f"{path}:{line}: {column} {value!r} must be finite, >= 0 and "
                         f"<= {MAX_MEASURE:g}")
    if kind is int:
        if number != int(number):
            raise InputError(f"{path}:{line}: {column} {value!r} must be a whole number")
        return int(number)
    return number


def read_calls(path: Path, roles: dict[int, str]) -> list[CallSpan]:
    """Parse ``calls.csv``; InputError names the file, line and column at fault."""
    default_pid = _default_pid(roles)
    spans: list[CallSpan] = []
    try:
        with path.open(newline="") as f:
            reader = csv.DictReader(f)
            header = [h.strip() for h in reader.fieldnames or []]
            missing = [c for c in ("start_s", "end_s") if c not in header]
            if missing:
                raise InputError(f"{path}:1: header lacks column(s) {', '.join(missing)} "
                                 f"(got {','.join(header)})")
            reader.fieldnames = header
            for row in reader:
                line = reader.line_num
                if not any((v or "").strip() for v in row.values() if isinstance(v, str)):
                    continue
                try:
                    start_s, end_s = float(row["start_s"]), float(row["end_s"])
                except (TypeError, ValueError):
                    raise InputError(f"{path}:{line}: start_s/end_s must be numbers, got "
                                     f"{row.get('start_s')!r}, {row.get('end_s')!r}") from None
                if not (math.isfinite(start_s) and math.isfinite(end_s)) or end_s < start_s:
                    raise InputError(f"{path}:{line}: need finite start_s <= end_s, got "
                                     f"{start_s!r}, {end_s!r}")
                pid = _cell(row.get("pid"), path, line, "pid", int)
                if pid is None:
                    if default_pid is None:
                        raise InputError(f"{path}:{line}: no pid, and the trace has no single "
                                         f"inference process to give the call to (roles: "
                                         f"{sorted(roles.values())})")
                    pid = default_pid
                elif pid not in roles:
                    raise InputError(f"{path}:{line}: pid {pid} is not a process of the trace "
                                     f"(meta.json pids: {sorted(roles)})")
                model = (row.get("model") or "").strip() or roles[pid]
                weight = _cell(row.get("weight"), path, line, "weight", float)
                batch = _cell(row.get("batch"), path, line, "batch", float)
                spans.append(CallSpan(
                    model, start_s, end_s, pid,
                    weight=weight if weight is not None else batch,
                    tokens_in=_cell(row.get("tokens_in"), path, line, "tokens_in", int),
                    tokens_out=_cell(row.get("tokens_out"), path, line, "tokens_out", int),
                ))
    except UnicodeDecodeError as exc:
        raise InputError(f"{path}: not a text CSV file ({exc})") from None
    except OSError as exc:
        raise InputError(f"{path}: cannot read ({exc})") from None
    return spans


def replay_calls(
    trace_dir: str | Path,
    *,
    idle_policy: str = "separate",
    power_interval_s: float = 0.1,
    counter_interval_s: float = 1.0,
    fit: bool = True,
    power_lag_s: float = NVML_POWER_LAG_S,
    gpu_options: GpuOptions | None = None,
) -> CallsReport:
    """Replay ``trace_dir`` and split each serving process's energy over its calls."""
    path = Path(trace_dir) / CALLS_FILE
    if not path.is_file():
        raise InputError(f"{path}: no calls file (columns start_s,end_s[,pid,model,weight,"
                         "tokens_in,tokens_out,batch])")
    trace = load_trace(trace_dir)
    roles = {pid: role for role, pid in trace.pids.items()}
    spans = read_calls(path, roles)
    ledger = CallLedger(settle_s=2.0, power_lag_s=power_lag_s, fit=fit, warmup_s=WARMUP_S)
    by_pid: dict[int, list[CallSpan]] = defaultdict(list)
    for span in spans:
        by_pid[span.pid].append(span)  # type: ignore[index]
    for pid, items in by_pid.items():
        ledger.add_spans(f"pid:{pid}", items)
    given: dict[str, list[float]] = {f"pid:{pid}": [] for pid in by_pid}
    energy: dict[int, tuple[float, float, str]] = {}  # id(span) -> (energy_j, co2e_g, method)
    between: dict[str, list[float]] = defaultdict(list)

    def take(settlement: Any) -> None:
        for (span, energy_j, co2e_g, _), method in zip(
            settlement.per_call, settlement.per_call_method, strict=True
        ):
            energy[id(span)] = (energy_j, co2e_g, method)
        for consumer, e in settlement.between_calls_j.items():
            between[consumer].append(e)

    def sink(item: AttributedInterval) -> None:
        for consumer, parts in given.items():
            energy_j = item.parts.get(consumer, 0.0)
            if energy_j:
                ledger.add_interval(consumer, item, energy_j)
                parts.append(energy_j)
        take(ledger.settle(item.interval.end_s))

    report = replay_trace(trace_dir, idle_policy=idle_policy, power_interval_s=power_interval_s,
                          counter_interval_s=counter_interval_s, gpu_options=gpu_options,
                          sinks=[sink])
    take(ledger.flush())

    calls = []
    models: dict[str, dict[str, Any]] = {}
    for span in spans:
        energy_j, co2e_g, method = energy[id(span)]
        call = {"start_s": span.start_s, "end_s": span.end_s, "pid": span.pid,
                "model": span.model, "energy_j": energy_j, "co2e_g": co2e_g,
                "provenance": f"apportioned ({method})"}
        for key in ("weight", "tokens_in", "tokens_out"):
            if getattr(span, key) is not None:
                call[key] = getattr(span, key)
        calls.append(call)
        m = models.setdefault(span.model, {"calls": 0, "energy_j": [], "co2e_g": [],
                                           "fitted_calls": 0, "tokens_in": 0, "tokens_out": 0,
                                           "token_calls": 0, "token_energy_j": [],
                                           "token_calls_in": 0})
        m["calls"] += 1
        m["energy_j"].append(energy_j)
        m["co2e_g"].append(co2e_g)
        m["fitted_calls"] += method == METHOD_FIT
        m["tokens_in"] += span.tokens_in or 0  # as the minute rows: None adds 0
        if span.tokens_out is not None:  # per-token figures: the calls that reported output
            m["token_calls"] += 1
            m["token_calls_in"] += span.tokens_in or 0
            m["tokens_out"] += span.tokens_out
            m["token_energy_j"].append(energy_j)
    for m in models.values():
        m["energy_j"] = math.fsum(m["energy_j"])
        m["co2e_g"] = math.fsum(m["co2e_g"])
        token_j = math.fsum(m.pop("token_energy_j"))
        # Per token only over the calls that reported tokens; null when none did.
        m["energy_j_per_output_token"] = token_j / m["tokens_out"] if m["tokens_out"] else None
        total = m.pop("token_calls_in") + m["tokens_out"]
        m["energy_j_per_token"] = token_j / total if m["token_calls"] and total else None

    services = []
    for pid in sorted(by_pid):
        consumer = f"pid:{pid}"
        calls_j = math.fsum(energy[id(s)][0] for s in by_pid[pid])
        services.append({
            "pid": pid, "role": roles[pid], "calls": len(by_pid[pid]),
            "energy_j": math.fsum(given[consumer]),
            "calls_energy_j": calls_j,
            "between_calls_j": math.fsum(between[consumer]),
            "zero_energy_calls": sum(1 for s in by_pid[pid] if energy[id(s)][0] <= 0),
        })
    notes = []
    if fit and ledger.overlap_calls:
        notes.append(f"{ledger.overlap_calls} call(s) were split by overlap time: the power fit "
                     "was not trusted yet (too few readings) or did not explain the service's "
                     "power (r2 < 0.5) when they settled")
    return CallsReport(report, calls, models, services, ledger.fitted_calls,
                       ledger.overlap_calls, power_lag_s, fit, notes)
