"""The API's refusals and bounds: :class:`ApiError`, the limits every request is held to, the
tolerant JSON parse that says where a body breaks, and query parameters.

Request bodies are decoded and checked by the msgspec structs of ``bodies.py`` (and
``columnar.py``); every problem raises :class:`ApiError` with a 4xx status and a message naming
the field (``calls[17].end: must be >= start``), so a client can fix its request; nothing here
touches the store, so a rejected request changes nothing."""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Any

from carbonwatch.calls.ledger import CallSpan

MAX_BODY_BYTES = 4 * 1024 * 1024
MAX_DEPTH = 16  # deeper JSON is refused: no legitimate body nests more than 4 levels
MAX_CALLS_PER_REQUEST = 10_000
MAX_PIDS = 4096
MAX_TAGS = 64
MAX_TEXT = 256  # names, models, tag keys
MAX_TAG_VALUE = 1024
MAX_PID = 2**31 - 1  # pid_t; larger values cannot be a process
MAX_UNIX_S = 1e10  # year 2286: later "times" are garbage that would overflow minute keys
# Work measures per call. Generous for any real call (a 1e12-FLOP-unit batch, a billion tokens),
# small enough that sums over millions of calls stay exact in SQLite's 64-bit integers and finite
# in doubles.
MAX_WEIGHT = 1e12
MAX_TOKENS = 10**9
# A client's count of spans it dropped since its last delivered batch: 10^12 is 100k calls/s
# dropped for 115 days. Larger is garbage, and 2^62 twice overflowed SQLite's integer SUM.
MAX_DROPPED_PER_REQUEST = 10**12
JOB_KINDS = ("training", "inference", "other")
Scalar = str | int | float | bool | None


class ApiError(Exception):
    """A request the API refuses; ``status`` is a 4xx, ``message`` names the problem and
    ``field``, where one field is to blame, its path (``calls[3].end``)."""

    def __init__(self, status: int, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.field = field

    def as_json(self) -> dict[str, str]:
        """The answer's body: ``{"error": ..., "field"?: ...}``."""
        return {"error": self.message} if self.field is None else {
            "error": self.message, "field": self.field}


# "calls[3].end: ..." -> calls[3].end; "env (a key): ..." -> env. Not "body: ...", not prose.
_FIELD_FIRST = re.compile(r"([^\W\d]\w*(?:\[\d+\]|\.\w+)*)(?: \(a key\))?: ")


def bad(message: str, field: str | None = None) -> ApiError:
    """A 400; its field is given, or read from a message that starts with one (``pid: ...``)."""
    if field is None and (match := _FIELD_FIRST.match(message)) and match[1] != "body":
        field = match[1]
    return ApiError(400, message, field)


def parse_limit(raw: str, most: int = 1000) -> int:
    """A listing's ``limit`` query parameter: an integer in [1, most], or a 400 naming it."""
    try:
        limit = int(raw)
    except ValueError:
        raise bad(f"limit: expected an integer, got {raw[:32]!r}") from None
    if not 1 <= limit <= most:
        raise bad(f"limit: must be between 1 and {most}")
    return limit


# --- JSON --------------------------------------------------------------------------------------


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON (numbers must be finite)")


def parse_json(
    body: bytes, *, allow_empty: bool = False, check_nesting: bool = True,
    nonfinite_to_validator: bool = False,
) -> Any:
    """Decode a UTF-8 JSON body; NaN/Infinity and nesting deeper than MAX_DEPTH are refused.

    ``check_nesting=False`` skips the walk for bodies whose validator admits no deep value (call
    batches: a 10,000-call walk would cost more than the rest of the validation).
    ``nonfinite_to_validator=True`` decodes NaN/Infinity as floats and leaves their refusal to a
    validator that checks every number's finiteness (call batches), so the 400 names the field
    (``calls[3].tokens_out``) rather than only saying the JSON holds a NaN somewhere."""
    if not body.strip():
        if allow_empty:
            return {}
        raise bad("request body is empty; expected a JSON object")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise bad(f"request body is not UTF-8: {exc.reason} at byte {exc.start}") from None
    try:
        value = json.loads(
            text, parse_constant=float if nonfinite_to_validator else _reject_constant
        )
    except json.JSONDecodeError as exc:
        raise bad(f"malformed JSON at line {exc.lineno} column {exc.colno}: {exc.msg}") from None
    except RecursionError:
        raise bad(f"JSON nested too deeply (limit {MAX_DEPTH} levels)") from None
    except ValueError as exc:  # a NaN constant, or an integer too long to convert
        raise bad(f"invalid JSON: {exc}") from None
    if check_nesting:
        check_depth(value)
    # A NUL reaches a string only as the escape \u0000 (JSON forbids raw control characters):
    # one substring search, and the walk only when it may be there. NUL cuts C strings (argv,
    # environment, paths) short and made a launched job stick in 'launching'.
    if "\\u0000" in text:
        where = _nul_path(value)
        if where is not None:
            raise bad(f"{where}: strings must not contain NUL (\\u0000)")
    return value


def _nul_path(value: Any) -> str | None:
    """The path (``env``, ``command[2]``) of the first string with a NUL in it, key or value."""
    stack: list[tuple[Any, str]] = [(value, "body")]
    while stack:
        item, where = stack.pop()
        if isinstance(item, str):
            if "\0" in item:
                return where
        elif isinstance(item, dict):
            for key, sub in item.items():
                if "\0" in key:
                    return f"{where} (a key)" if where != "body" else f"{key!r} (a key)"
                stack.append((sub, key if where == "body" else f"{where}.{key}"))
        elif isinstance(item, list):
            stack.extend((sub, f"{where}[{i}]") for i, sub in enumerate(item))
    return None


def check_depth(value: Any, limit: int = MAX_DEPTH) -> None:
    """Iterative, so the check itself cannot overflow the stack."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > limit:
            raise bad(f"JSON nested too deeply (limit {limit} levels)")
        if isinstance(item, dict):
            stack.extend((v, depth + 1) for v in item.values() if isinstance(v, dict | list))
        elif isinstance(item, list):
            stack.extend((v, depth + 1) for v in item if isinstance(v, dict | list))


# --- decoded bodies (bodies.py builds them) ------------------------------------------------------


@dataclass(frozen=True)
class NewJob:
    name: str
    kind: str
    model: str | None
    pids: tuple[int, ...]
    tags: dict[str, Scalar]
    identity: str | None
    command: list[str] | None
    owner_uid: int | None = None  # on whose behalf (operators only, e.g. the Slurm prolog)


@dataclass(frozen=True)
class CallBatch:
    spans: list[CallSpan]
    dropped: int


def query_seconds(value: str | None, name: str) -> float | None:
    """``since``/``until`` query values: Unix seconds or ISO-8601 with a zone."""
    if value is None or value == "":
        return None
    try:
        number = float(value)
    except ValueError:
        number = None
    if number is not None:
        if not math.isfinite(number):
            raise bad(f"{name}: must be a finite number of Unix seconds or an ISO-8601 time")
        return _clamp_s(number)
    from datetime import datetime

    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        raise bad(f"{name}: cannot parse {value[:64]!r}; use Unix seconds or ISO-8601 "
                  "like 2026-11-26T12:00:00Z") from None
    if when.tzinfo is None:
        raise bad(f"{name}: time {value[:64]!r} has no zone; add Z (UTC) or an offset")
    return _clamp_s(when.timestamp())


def _clamp_s(t_s: float) -> float:
    """A query bound clamped to [0, MAX_UNIX_S]: nothing is stored outside it, so the answer is
    the same, and 1e308 no longer overflows the store's integer minute keys."""
    return min(max(t_s, 0.0), MAX_UNIX_S)
