"""The columnar form of ``POST /v1/calls``: per model, arrays of starts and ends (and optionally of
weights and token counts) instead of one JSON object per call.

Content type ``application/vnd.carbonwatch.calls+json``; the body::

    {"models": [{"model": "resnet50", "pid": 4242, "tags": {"route": "/predict"},
                 "start": [1700000000.10, 1700000000.30], "end": [1700000000.18, 1700000000.41],
                 "weight": [32, 8], "tokens_in": [812, 90], "tokens_out": [40, 12]}],
     "dropped": 0}

``start`` and ``end`` may also be packed: a base64 string of little-endian IEEE-754 float64s
(what the Python client sends). Every group's calls share its model, pid and tags;
``weight``, ``tokens_in`` and ``tokens_out`` are optional, each either absent or one value per
call (``null`` for a call without one). The bounds are the objects form's
(``bodies.call_batch``): times in [0, 1e10] with end >= start, weight a finite number in
[0, 1e12], tokens integers in [0, 1e9], model 1-256 characters, tags as there, no NUL in any
string, at most 10,000 calls a request. A refusal is a 400 naming the field
(``models[0].end[3]``). The spans stored are exactly those the objects form gives for the same
calls (``tests/test_calls_columnar.py`` proves it).

``msgspec`` decodes and type-checks the body in one pass into typed structs (several times faster
than ``json.loads`` plus a walk over 10,000 dicts) and emits the JSON Schema the OpenAPI document
shows. The body is stored as received, as the objects form's is; on restart :func:`any_batch`
re-reads either form."""

from __future__ import annotations

import math
import sys
from array import array
from typing import Annotated, Any

import msgspec

from carbonwatch.calls.ledger import NO_TAGS, CallSpan
from carbonwatch.daemon import bodies, validation
from carbonwatch.daemon.bodies import CallModel, Pid, Tags, Tokens, UnixS, Weight
from carbonwatch.daemon.refusals import learn, refusal
from carbonwatch.daemon.validation import (
    MAX_CALLS_PER_REQUEST,
    MAX_DROPPED_PER_REQUEST,
    MAX_UNIX_S,
    CallBatch,
    bad,
)

CONTENT_TYPE = "application/vnd.carbonwatch.calls+json"
_BIG_ENDIAN = sys.byteorder == "big"



class ModelCalls(msgspec.Struct, forbid_unknown_fields=True):
    """One model's calls (one pid, one set of tags), column by column."""

    model: CallModel
    # A JSON array of numbers, or the values packed: base64 of little-endian IEEE-754 float64s
    # (the Python client's choice: repr() of a float costs more than the rest of the span).
    start: list[UnixS] | bytes
    end: list[UnixS] | bytes
    pid: Pid | None = None
    tags: Tags | None = None
    weight: list[Weight | None] | None = None
    tokens_in: list[Tokens | None] | None = None
    tokens_out: list[Tokens | None] | None = None


class ColumnarBatch(msgspec.Struct, forbid_unknown_fields=True):
    models: list[ModelCalls]
    dropped: Annotated[int, msgspec.Meta(ge=0, le=MAX_DROPPED_PER_REQUEST)] = 0


_DECODER = msgspec.json.Decoder(ColumnarBatch)
learn(ColumnarBatch)


def decode(body: bytes) -> CallBatch:
    """A columnar body -> the same CallBatch the objects form gives; ApiError (400) naming the
    field otherwise."""
    # Malformed JSON, or NaN/Infinity (which JSON lacks): bodies.decode parses it the tolerant
    # way so the 400 names the field that holds the NaN, or says where the JSON breaks; a NUL in
    # any string is refused there too.
    return _spans(bodies.decode(body, _DECODER))


def from_object(obj: Any) -> CallBatch:
    """An already parsed columnar body (a restart re-reading a stored batch)."""
    if type(obj) is not dict:
        raise bad(f"body: expected a JSON object, got {type(obj).__name__}")
    _check_nonfinite(obj)
    try:
        batch = msgspec.convert(obj, ColumnarBatch)
    except msgspec.ValidationError as exc:
        raise refusal(exc, obj) from None
    _check_nul(batch)
    return _spans(batch)


def any_batch(body: bytes) -> CallBatch:
    """Either form of a stored call batch (the columnar one has ``models``, not ``calls``)."""
    obj = validation.parse_json(body, check_nesting=False, nonfinite_to_validator=True)
    if type(obj) is dict and "models" in obj and "calls" not in obj:
        return from_object(obj)
    return bodies.call_batch_from(obj)


def _check_nonfinite(obj: dict[str, Any]) -> None:
    groups = obj.get("models")
    if type(groups) is not list:
        return
    for g, group in enumerate(groups):
        if type(group) is not dict:
            continue
        for name in ("start", "end", "weight"):
            values = group.get(name)
            if type(values) is list:
                for i, v in enumerate(values):
                    if type(v) is float and not math.isfinite(v):
                        raise bad(f"models[{g}].{name}[{i}]: must be a finite number")


def _spans(batch: ColumnarBatch) -> CallBatch:
    spans: list[CallSpan] = []
    total = 0
    for g, group in enumerate(batch.models):
        where = f"models[{g}]"
        starts = _unpacked(group.start, f"{where}.start")
        ends = _unpacked(group.end, f"{where}.end")
        n = len(starts)
        total += n
        if total > MAX_CALLS_PER_REQUEST:
            raise bad(f"models: more than {MAX_CALLS_PER_REQUEST} calls in one request")
        if len(ends) != n:
            raise bad(f"{where}.end: {len(ends)} values, but start has {n}")
        for name in ("weight", "tokens_in", "tokens_out"):
            column = getattr(group, name)
            if column is not None and len(column) != n:
                raise bad(f"{where}.{name}: {len(column)} values, but start has {n}")
        model = group.model
        if model.isspace():
            raise bad(f"{where}.model: must not be empty or blank")
        tags = group.tags or NO_TAGS
        for i in range(n):
            if ends[i] < starts[i]:
                raise bad(f"{where}.end[{i}]: {ends[i]} is before start {starts[i]}")
        pid = group.pid
        weights, t_in, t_out = group.weight, group.tokens_in, group.tokens_out
        if weights is None and t_in is None and t_out is None:
            spans.extend(CallSpan(model, s, e, pid, tags)
                         for s, e in zip(starts, ends, strict=True))
            continue
        none = [None] * n
        spans.extend(
            CallSpan(model, s, e, pid, tags, w, ti, to)
            for s, e, w, ti, to in zip(starts, ends, weights or none, t_in or none, t_out or none,
                                       strict=True)
        )
    return CallBatch(spans, batch.dropped)


def _unpacked(values: list[float] | bytes, where: str) -> list[float]:
    """A time column as floats: packed ones unpacked and held to the bounds msgspec checks on a
    JSON array (finite, within [0, MAX_UNIX_S])."""
    if type(values) is list:
        return values
    packed = array("d")
    try:
        packed.frombytes(values)  # type: ignore[arg-type]
    except ValueError:
        raise bad(f"{where}: packed values must be a whole number of float64s (8 bytes each), "
                  f"got {len(values)} bytes") from None
    if _BIG_ENDIAN:
        packed.byteswap()
    out = packed.tolist()
    hi = MAX_UNIX_S
    # min, max and sum in C first (a NaN may slip past min and max, never past the sum); the
    # Python loop runs only to name the bad value (it cost as much as decoding the whole body).
    total = sum(out)
    if out and not (min(out) >= 0.0 and max(out) <= hi and total == total):
        for i, v in enumerate(out):
            if not 0.0 <= v <= hi:  # also refuses NaN
                raise bad(f"{where}[{i}]: expected a finite number in [0, {hi:g}], got {v}")
    return out


def _check_nul(batch: ColumnarBatch) -> None:
    """A stored body re-read at restart: no NUL in its model or tags (as bodies.decode checks)."""
    for g, group in enumerate(batch.models):
        where = f"models[{g}]"
        if "\x00" in group.model:
            raise bad(f"{where}.model: strings must not contain NUL (\\u0000)")
        for key, value in (group.tags or {}).items():
            if "\x00" in key or (type(value) is str and "\x00" in value):
                raise bad(f"{where}.tags: strings must not contain NUL (\\u0000)")
