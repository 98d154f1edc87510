"""Request bodies: parse strictly, validate fully, and say exactly what is wrong.

Every problem raises :class:`ApiError` with a 4xx status and a message naming the field
(``calls[17].end: must be >= start``), so a client can fix its request; nothing here touches the
store, so a rejected request changes nothing."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, NoReturn

from carbonwatch.calls import NO_TAGS, CallSpan

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
    """A request the API refuses; ``status`` is a 4xx, ``message`` names the problem."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def bad(message: str) -> ApiError:
    return ApiError(400, message)


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


def _object(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise bad(f"{where}: expected a JSON object, got {_type(value)}")
    return value


def _type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


def _unknown(obj: Mapping[str, Any], allowed: frozenset[str], where: str) -> None:
    extra = sorted(set(obj) - allowed)
    if extra:
        raise bad(f"{where}: unknown field(s) {', '.join(map(repr, extra))}")


def text(value: Any, where: str, *, max_len: int = MAX_TEXT) -> str:
    if not isinstance(value, str):
        raise bad(f"{where}: expected a string, got {_type(value)}")
    if not value.strip():
        raise bad(f"{where}: must not be empty")
    if len(value) > max_len:
        raise bad(f"{where}: longer than {max_len} characters")
    return value


def optional_text(value: Any, where: str) -> str | None:
    return None if value is None else text(value, where)


def integer(value: Any, where: str, *, lo: int, hi: int) -> int:
    # bool is an int in Python but never a valid count or pid in JSON
    if isinstance(value, bool) or not isinstance(value, int):
        raise bad(f"{where}: expected an integer, got {_type(value)}")
    if not lo <= value <= hi:
        raise bad(f"{where}: must be between {lo} and {hi}, got {value}")
    return value


def pid(value: Any, where: str) -> int:
    return integer(value, where, lo=1, hi=MAX_PID)


def seconds(value: Any, where: str) -> float:
    """A Unix time in seconds: a finite, non-negative number."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise bad(f"{where}: expected a number (Unix seconds), got {_type(value)}")
    try:
        value = float(value)
    except OverflowError:
        raise bad(f"{where}: number out of range") from None
    if not math.isfinite(value):
        raise bad(f"{where}: must be a finite number (NaN and Infinity are not allowed)")
    if not 0 <= value <= MAX_UNIX_S:
        raise bad(f"{where}: must be Unix seconds between 0 and {MAX_UNIX_S:.0f}, got {value}")
    return value


def measure(value: Any, where: str, *, hi: float) -> float:
    """A work measure: a finite number in [0, hi]."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise bad(f"{where}: expected a number, got {_type(value)}")
    if isinstance(value, float) and not math.isfinite(value):  # from 1e400 (NaN is not JSON)
        raise bad(f"{where}: must be a finite number (NaN and Infinity are not allowed)")
    if not 0 <= value <= hi:
        shown = f"{value:g}" if isinstance(value, float) else str(value)[:40]  # 10**400: no float
        raise bad(f"{where}: must be between 0 and {hi:g}, got {shown}")
    return float(value)


def token_count(value: Any, where: str) -> int:
    """A token count: a whole number in [0, MAX_TOKENS] (1.0 is not one: tokens are counted)."""
    if isinstance(value, float):
        if not math.isfinite(value):
            raise bad(f"{where}: must be a finite integer (NaN and Infinity are not allowed)")
        raise bad(f"{where}: expected an integer token count, got {value!r}")
    return integer(value, where, lo=0, hi=MAX_TOKENS)


def tags(value: Any, where: str) -> dict[str, Scalar]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise bad(f"{where}: expected an object of tags, got {_type(value)}")
    if len(value) > MAX_TAGS:
        raise bad(f"{where}: more than {MAX_TAGS} tags")
    for key, item in value.items():
        if len(key) > MAX_TEXT:
            raise bad(f"{where}: tag name longer than {MAX_TEXT} characters")
        if isinstance(item, str):
            if len(item) > MAX_TAG_VALUE:
                raise bad(f"{where}.{key}: longer than {MAX_TAG_VALUE} characters")
        elif isinstance(item, float):
            if not math.isfinite(item):  # unreachable from JSON, reachable from 1e400
                raise bad(f"{where}.{key}: must be a finite number")
        elif item is not None and not isinstance(item, int | bool):
            raise bad(f"{where}.{key}: tag values must be strings, numbers, booleans or null, "
                      f"got {_type(item)}")
    return value


# --- bodies ------------------------------------------------------------------------------------


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


_JOB_FIELDS = frozenset({"name", "kind", "model", "pid", "pids", "tags", "identity", "command",
                         "owner_uid"})


def new_job(body: Any) -> NewJob:
    obj = _object(body, "body")
    _unknown(obj, _JOB_FIELDS, "body")
    if "name" not in obj:
        raise bad("name: required")
    if "kind" not in obj:
        raise bad(f"kind: required, one of {', '.join(JOB_KINDS)}")
    kind = obj["kind"]
    if kind not in JOB_KINDS:
        raise bad(f"kind: must be one of {', '.join(JOB_KINDS)}, got {json.dumps(kind)[:80]}")
    if obj.get("pid") is not None and obj.get("pids") is not None:
        raise bad("pid, pids: give one of them, not both")
    pids: list[int] = []
    if obj.get("pid") is not None:
        pids = [pid(obj["pid"], "pid")]
    elif obj.get("pids") is not None:
        raw = obj["pids"]
        if not isinstance(raw, list):
            raise bad(f"pids: expected an array of integers, got {_type(raw)}")
        if len(raw) > MAX_PIDS:
            raise bad(f"pids: more than {MAX_PIDS} pids")
        pids = [pid(p, f"pids[{i}]") for i, p in enumerate(raw)]
    command = obj.get("command")
    if command is not None:
        if not isinstance(command, list) or not all(isinstance(a, str) for a in command):
            raise bad("command: expected an array of strings")
        if sum(len(a) for a in command) > 64 * 1024:
            raise bad("command: longer than 65536 characters")
    return NewJob(
        name=text(obj["name"], "name"),
        kind=kind,
        model=optional_text(obj.get("model"), "model"),
        pids=tuple(dict.fromkeys(pids)),  # de-duplicated, order kept
        tags=tags(obj.get("tags"), "tags"),
        identity=optional_text(obj.get("identity"), "identity"),
        command=command,
        owner_uid=None if obj.get("owner_uid") is None
        else integer(obj["owner_uid"], "owner_uid", lo=0, hi=2**32 - 2),
    )


def job_end(body: Any) -> int | None:
    """``{"exit_code": N}`` or an empty body; returns the exit code or None."""
    obj = _object(body, "body")
    _unknown(obj, frozenset({"exit_code"}), "body")
    code = obj.get("exit_code")
    return None if code is None else integer(code, "exit_code", lo=-(2**31), hi=2**31 - 1)


@dataclass(frozen=True)
class CallBatch:
    spans: list[CallSpan]
    dropped: int


_CALL_FIELDS = frozenset({"model", "start", "end", "pid", "tags", "weight", "tokens_in",
                          "tokens_out"})
_WORK_FIELDS = ("weight", "tokens_in", "tokens_out")
_BATCH_FIELDS = frozenset({"calls", "dropped"})


def call_batch(body: Any) -> CallBatch:
    """``{"calls": [{"model", "start", "end", "pid"?, "tags"?, "weight"?, "tokens_in"?,
    "tokens_out"?}], "dropped"?: N}``.

    This is the ingestion hot path (up to 10,000 calls a request): the common case is checked
    with plain type tests and only a failing call goes through the message-building helpers."""
    obj = _object(body, "body")
    _unknown(obj, _BATCH_FIELDS, "body")
    if "calls" not in obj:
        raise bad("calls: required (an array of call objects)")
    raw = obj["calls"]
    if not isinstance(raw, list):
        raise bad(f"calls: expected an array, got {_type(raw)}")
    if len(raw) > MAX_CALLS_PER_REQUEST:
        raise bad(f"calls: {len(raw)} calls in one request; at most {MAX_CALLS_PER_REQUEST}")
    dropped = obj.get("dropped")
    dropped = 0 if dropped is None else integer(dropped, "dropped", lo=0,
                                                      hi=MAX_DROPPED_PER_REQUEST)
    spans = []
    append = spans.append
    max_w, max_t = MAX_WEIGHT, MAX_TOKENS
    for i, call in enumerate(raw):
        if type(call) is not dict:
            raise bad(f"calls[{i}]: expected a JSON object, got {_type(call)}")
        get = call.get
        model, start, end, pid_, tags_ = (get("model"), get("start"), get("end"), get("pid"),
                                          get("tags"))
        # Chained comparisons also refuse NaN and +-inf, and compare huge integers exactly.
        if not (
            type(model) is str and 0 < len(model) <= MAX_TEXT and not model.isspace()
            and (type(start) is float or type(start) is int)
            and (type(end) is float or type(end) is int)
            and 0 <= start <= end <= MAX_UNIX_S
            and (pid_ is None or (type(pid_) is int and 0 < pid_ <= MAX_PID))
            and (tags_ is None or _flat_tags(tags_))
        ):
            _explain_call(call, i)
        extra = len(call) - 3 - ("pid" in call) - ("tags" in call)
        if not extra:
            append(CallSpan(model, float(start), float(end), pid_, tags_ or NO_TAGS))
            continue
        # Work measures (or unknown fields): weight a finite number in [0, MAX_WEIGHT], tokens
        # integers in [0, MAX_TOKENS]; any other extra field is unknown. Inline: a function
        # call per call would cost a fifth of this check.
        weight, tokens_in, tokens_out = get("weight"), get("tokens_in"), get("tokens_out")
        if not (
            extra == ("weight" in call) + ("tokens_in" in call) + ("tokens_out" in call)
            and (weight is None
                 or ((type(weight) is float or type(weight) is int) and 0 <= weight <= max_w))
            and (tokens_in is None or (type(tokens_in) is int and 0 <= tokens_in <= max_t))
            and (tokens_out is None or (type(tokens_out) is int and 0 <= tokens_out <= max_t))
        ):
            _explain_call(call, i)
        append(CallSpan(model, float(start), float(end), pid_, tags_ or NO_TAGS,
                        None if weight is None else float(weight), tokens_in, tokens_out))
    return CallBatch(spans, dropped)


def _flat_tags(value: Any) -> bool:
    """The common case of :func:`tags`, without building messages."""
    if type(value) is not dict or len(value) > MAX_TAGS:
        return False
    for key, item in value.items():
        kind = type(item)
        if len(key) > MAX_TEXT:
            return False
        if kind is str:
            if len(item) > MAX_TAG_VALUE:
                return False
        elif not (kind is int or kind is bool or item is None
                  or (kind is float and -math.inf < item < math.inf)):
            return False
    return True


def _explain_call(call: dict[str, Any], i: int) -> NoReturn:
    """Raise the precise error for a call the fast path refused."""
    where = f"calls[{i}]"
    _unknown(call, _CALL_FIELDS, where)
    if "model" not in call or call["model"] is None:
        given = [name for name in ("tokens_in", "tokens_out") if call.get(name) is not None]
        if given:  # per-token figures are per model: tokens without one could never be counted
            raise bad(f"{where}.model: required with {' and '.join(given)} (tokens are counted "
                      "per model)")
    for name in ("model", "start", "end"):
        if name not in call:
            raise bad(f"{where}.{name}: required")
    text(call["model"], f"{where}.model")
    start = seconds(call["start"], f"{where}.start")
    end = seconds(call["end"], f"{where}.end")
    if end < start:
        raise bad(f"{where}.end: must be >= start (end {end} < start {start})")
    if call.get("pid") is not None:
        pid(call["pid"], f"{where}.pid")
    tags(call.get("tags"), f"{where}.tags")
    if call.get("weight") is not None:
        measure(call["weight"], f"{where}.weight", hi=MAX_WEIGHT)
    for name in ("tokens_in", "tokens_out"):
        if call.get(name) is not None:
            token_count(call[name], f"{where}.{name}")
    raise bad(f"{where}: invalid call")  # unreachable: every refusal above has a message


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
