"""Two seams for fault-injection (chaos) tests, set as extra keys of the config file.

``replay_faults``: faults the replay backend injects (``replay:DIR`` only), as a TOML array of
tables or a JSON string holding a list of objects::

    replay_faults = '[{"kind": "lost", "device": 3, "from_s": 8.0}]'
    replay_faults = [{kind = "timeout", device = 5, from_s = 2, to_s = 6, reads = ["counter"]}]

``kind`` is a :class:`~carbonwatch.collectors.trace_gpu.FaultKind` value; ``from_s``/``to_s`` are
seconds into the trace (from its first energy row); ``reads`` limits a timeout to some reads.

``interval_log``: a file to which every device interval the collectors close is appended as one
JSON line (device, start, end, measured energy), before attribution: what a test compares the
store with to check that energy is conserved (Σ consumers = the device's measured energy)."""

from __future__ import annotations

import json
import math
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from carbonwatch.collectors.trace_gpu import Fault, FaultKind
from carbonwatch.errors import ConfigError
from carbonwatch.sampler import AttributedInterval

_FAULT_FIELDS = frozenset({"kind", "device", "from_s", "to_s", "reads"})
_READS = frozenset({"counter", "power", "process"})


def replay_faults(raw: Any, trace_start_s: float) -> list[Fault]:
    """The ``replay_faults`` setting as Faults in trace (clock) time; ConfigError if malformed."""
    if raw is None or raw == "":
        return []
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"replay_faults: not valid JSON ({exc.msg})") from None
    if not isinstance(raw, list):
        raise ConfigError("replay_faults: expected a list of fault objects")
    return [_fault(item, i, trace_start_s) for i, item in enumerate(raw)]


def _fault(item: Any, i: int, trace_start_s: float) -> Fault:
    where = f"replay_faults[{i}]"
    if not isinstance(item, dict):
        raise ConfigError(f"{where}: expected an object")
    unknown = sorted(set(item) - _FAULT_FIELDS)
    if unknown:
        raise ConfigError(f"{where}: unknown field(s) {', '.join(unknown)}")
    try:
        kind = FaultKind(item.get("kind"))
    except ValueError:
        kinds = ", ".join(k.value for k in FaultKind)
        raise ConfigError(f"{where}.kind: one of {kinds}, got {item.get('kind')!r}") from None
    device = item.get("device", 0)
    if isinstance(device, bool) or not isinstance(device, int) or device < 0:
        raise ConfigError(f"{where}.device: expected a device index >= 0")
    bounds = []
    for name, default in (("from_s", -math.inf), ("to_s", math.inf)):
        value = item.get(name)
        if value is None:
            bounds.append(default)
        elif isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{where}.{name}: expected seconds into the trace")
        else:
            bounds.append(trace_start_s + float(value))
    reads = item.get("reads", sorted(_READS))
    if not isinstance(reads, list) or not set(reads) <= _READS:
        raise ConfigError(f"{where}.reads: a list of {', '.join(sorted(_READS))}")
    return Fault(kind, device=device, start_s=bounds[0], end_s=bounds[1], reads=frozenset(reads))


class IntervalLog:
    """A Sampler sink appending each interval's measured energy to a JSON-lines file."""

    def __init__(self, path: str | Path) -> None:
        self._file = Path(path).open("a", buffering=1)  # noqa: SIM115 - closed by close()
        self._lock = threading.Lock()

    def __call__(self, item: AttributedInterval) -> None:
        iv = item.interval
        line = json.dumps({"device": iv.device_id, "start_s": iv.start_s, "end_s": iv.end_s,
                           "energy_j": iv.energy_j, "provenance": iv.provenance.value,
                           "parts_j": math.fsum(item.parts.values())})
        with self._lock:
            self._file.write(line + "\n")

    def close(self) -> None:
        with self._lock:
            self._file.close()


def sinks_for(extra: dict[str, Any] | Any) -> Sequence[IntervalLog]:
    path = extra.get("interval_log") if hasattr(extra, "get") else None
    return [IntervalLog(path)] if path else []
