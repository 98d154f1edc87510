"""The daemon's request bodies as typed msgspec structs: one pass decodes, type-checks and bounds
them, and the same structs give the OpenAPI document its request schemas (``openapi.py``), so the
validator and the document cannot drift apart.

What a JSON Schema cannot say is checked after decoding, beside the body that needs it: a call's
``end >= start``, ``pid`` or ``pids`` but not both, a command line's total length, no NUL in any
string (one substring search; the walk only when the escape is there). A refusal is an
:class:`~carbonwatch.daemon.validation.ApiError` (400) whose message starts with the field's path
(``calls[3].end: must be >= start``); ``refusals.py`` turns msgspec's messages into those."""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal, TypeVar

import msgspec
from msgspec import Meta

from carbonwatch.calls.ledger import NO_TAGS, CallSpan
from carbonwatch.daemon import validation
from carbonwatch.daemon.refusals import learn, refusal
from carbonwatch.daemon.validation import (
    MAX_CALLS_PER_REQUEST,
    MAX_DROPPED_PER_REQUEST,
    MAX_PID,
    MAX_PIDS,
    MAX_TAG_VALUE,
    MAX_TAGS,
    MAX_TEXT,
    MAX_TOKENS,
    MAX_UNIX_S,
    MAX_WEIGHT,
    CallBatch,
    NewJob,
    bad,
)

T = TypeVar("T")
MAX_ARGS = 4096  # a deferred job's argv entries
MAX_ARG = 64 * 1024  # characters in one argv entry, and in a registered job's whole command
MAX_ENV = 4096
MAX_PATH = 4096  # cwd, provider_url
JobKind = Literal["training", "inference", "other"]

# Names, models, identities: 1-256 characters, not all blank (`\S` is searched, as JSON Schema's
# `pattern` is).
Text = Annotated[str, Meta(min_length=1, max_length=MAX_TEXT, pattern=r"\S")]
# A call's model: the same bounds, but not-blank is checked after decoding (msgspec's regex cost
# 0.9 us a call, more than the rest of the decode); the schema still says it.
CallModel = Annotated[str, Meta(min_length=1, max_length=MAX_TEXT,
                                extra_json_schema={"pattern": r"\S"})]
Pid = Annotated[int, Meta(ge=1, le=MAX_PID, description="a process id (pid_t)")]
UnixS = Annotated[float, Meta(ge=0.0, le=MAX_UNIX_S, description="Unix seconds (UTC)")]
Weight = Annotated[float, Meta(ge=0.0, le=MAX_WEIGHT,
                               description="the call's work (batch size, FLOPs)")]
Tokens = Annotated[int, Meta(ge=0, le=MAX_TOKENS)]
# Tag integers within SQLite's (the store keeps tags as JSON text that SQL reads back).
TagValue = (Annotated[str, Meta(max_length=MAX_TAG_VALUE)]
            | Annotated[int, Meta(ge=-(2**63), le=2**63 - 1)] | float | bool | None)
Tags = Annotated[dict[Annotated[str, Meta(max_length=MAX_TEXT)], TagValue],
                 Meta(max_length=MAX_TAGS)]


# --- jobs --------------------------------------------------------------------------------------


class JobRequest(msgspec.Struct, forbid_unknown_fields=True):
    """POST /v1/jobs: register a job (its pids and their process trees are attributed to it)."""

    name: Text
    kind: JobKind
    model: Text | None = None
    pid: Pid | None = None
    pids: Annotated[list[Pid], Meta(max_length=MAX_PIDS)] | None = None
    tags: Tags | None = None
    identity: Annotated[Text, Meta(
        description="a running job with the same identity (Slurm job, pod) is the same job")
    ] | None = None
    command: Annotated[list[str], Meta(
        max_length=MAX_ARGS, description=f"argv; at most {MAX_ARG} characters in all")
    ] | None = None
    owner_uid: Annotated[int, Meta(
        ge=0, le=2**32 - 2, description="operators only: the user the job belongs to")
    ] | None = None


class JobEndRequest(msgspec.Struct, forbid_unknown_fields=True):
    """POST /v1/jobs/{id}/end (an empty body is an empty object)."""

    exit_code: Annotated[int, Meta(ge=-(2**31), le=2**31 - 1)] | None = None


# --- calls: the objects form (the columnar one is in columnar.py) --------------------------------


class CallObject(msgspec.Struct, forbid_unknown_fields=True, gc=False):
    """One inference call: its model, when it ran, and optionally its pid, tags and work."""

    model: CallModel
    start: UnixS
    end: Annotated[float, Meta(ge=0.0, le=MAX_UNIX_S, description="Unix seconds, >= start")]
    pid: Pid | None = None
    tags: Tags | None = None
    weight: Weight | None = None
    tokens_in: Annotated[Tokens, Meta(description="prompt tokens")] | None = None
    tokens_out: Annotated[Tokens, Meta(description="generated tokens")] | None = None


class CallsRequest(msgspec.Struct, forbid_unknown_fields=True, gc=False):
    """POST /v1/calls, the objects form: one JSON object per call."""

    calls: Annotated[list[CallObject], Meta(max_length=MAX_CALLS_PER_REQUEST)]
    dropped: Annotated[int, Meta(
        ge=0, le=MAX_DROPPED_PER_REQUEST,
        description="spans the client dropped since its last successful batch")] | None = None


# --- deferred jobs (the scheduler's routes) ------------------------------------------------------


class DeferredRequest(msgspec.Struct, forbid_unknown_fields=True):
    """POST /v1/deferred: run a command at the lowest-carbon time before its deadline."""

    command: Annotated[list[Annotated[str, Meta(max_length=MAX_ARG)]],
                       Meta(min_length=1, max_length=MAX_ARGS)]
    name: Annotated[str, Meta(max_length=MAX_TEXT)] | None = None
    kind: JobKind = "training"
    deadline_s: Annotated[float, Meta(description="Unix seconds")] | None = None
    deadline: Annotated[str, Meta(description="ISO-8601 with a zone, or +12h")] | None = None
    duration_s: float | str | None = None
    duration: Annotated[float | str, Meta(description="2h, 1h30m, PT2H, or auto")] | None = None
    interruptible: bool = False
    zone: Annotated[str, Meta(max_length=MAX_TEXT)] | None = None
    provider: Annotated[str, Meta(max_length=MAX_TEXT)] | None = None
    provider_url: Annotated[str, Meta(
        max_length=MAX_PATH, description="only the daemon's provider_url or one listed in its "
        "provider_urls setting")] | None = None
    cwd: Annotated[str, Meta(max_length=MAX_PATH,
                             description="absolute directory to run in")] | None = None
    env: Annotated[dict[str, str], Meta(max_length=MAX_ENV)] = msgspec.field(
        default_factory=dict)
    via: Annotated[Literal["", "local", "slurm"], Meta(
        description="slurm: command is sbatch's arguments; submitted with --begin")] = ""


REQUESTS = (JobRequest, JobEndRequest, CallsRequest, DeferredRequest)
learn(*REQUESTS)
_JOB = msgspec.json.Decoder(JobRequest)
_JOB_END = msgspec.json.Decoder(JobEndRequest)
_CALLS = msgspec.json.Decoder(CallsRequest)
_DEFERRED = msgspec.json.Decoder(DeferredRequest)


def decode(body: bytes, decoder: msgspec.json.Decoder[T], *, allow_empty: bool = False) -> T:
    """Decode and validate ``body`` into the decoder's struct, or raise a 400 naming the field.

    Malformed JSON, bad UTF-8 and NaN/Infinity (which JSON lacks, and some clients send) fail
    msgspec's decode without a path; the body is then parsed the tolerant way to say where."""
    if not body.strip():
        if not allow_empty:
            raise bad("request body is empty; expected a JSON object")
        body = b"{}"
    try:
        value = decoder.decode(body)
    except msgspec.ValidationError as exc:
        raise refusal(exc, _parsed(body)) from None
    except msgspec.DecodeError:
        value = _tolerant(body, decoder.type)
    # A NUL reaches a string only as the escape \u0000: parse_json names the string holding one
    # (it cuts C strings short: argv, environment, paths, and the store's text).
    if b"\\u0000" in body:
        validation.parse_json(body, check_nesting=False)
    return value


def _parsed(body: bytes) -> Any:
    """A refused body parsed the slow way, only to word its refusal: JSON nested deeper than
    MAX_DEPTH is refused as such (whatever field it sits in), and the parse lets the message name
    a dict's key. None where Python's parser refuses it too (msgspec's message stands)."""
    try:
        obj = json.loads(body)
    except RecursionError:
        raise bad(f"JSON nested too deeply (limit {validation.MAX_DEPTH} levels)") from None
    except (json.JSONDecodeError, UnicodeDecodeError):
        # msgspec refuses a field before it reaches where the JSON breaks: say where it breaks
        validation.parse_json(body, nonfinite_to_validator=True)
        return None
    except ValueError:  # an integer of 5,000 digits: msgspec's "number out of range" stands
        return None
    validation.check_depth(obj)
    return obj


def _tolerant(body: bytes, type_: Any) -> Any:
    obj = validation.parse_json(body, nonfinite_to_validator=True)  # names where JSON breaks
    where = nonfinite_path(obj)
    if where is not None:
        raise bad(f"{where}: must be a finite number (NaN and Infinity are not allowed)")
    try:  # JSON that Python reads and msgspec does not (a lone surrogate in a string)
        return msgspec.convert(obj, type_)
    except msgspec.ValidationError as exc:
        raise refusal(exc, obj) from None


def nonfinite_path(value: Any) -> str | None:
    """The path (``calls[1].tokens_in``) of the first NaN or infinite number, or None."""
    stack: list[tuple[Any, str]] = [(value, "")]
    while stack:
        item, where = stack.pop()
        if type(item) is float and not -float("inf") < item < float("inf"):
            return where or "body"
        if isinstance(item, dict):
            stack.extend((v, f"{where}.{k}" if where else str(k)) for k, v in item.items())
        elif isinstance(item, list):
            stack.extend((v, f"{where}[{i}]") for i, v in enumerate(item))
    return None


def new_job(body: bytes) -> NewJob:
    job = decode(body, _JOB)
    if job.pid is not None and job.pids is not None:
        raise bad("pid, pids: give one of them, not both")
    pids = [job.pid] if job.pid is not None else job.pids or []
    if job.command is not None and sum(map(len, job.command)) > MAX_ARG:
        raise bad(f"command: longer than {MAX_ARG} characters")
    return NewJob(name=job.name, kind=job.kind, model=job.model,
                  pids=tuple(dict.fromkeys(pids)),  # de-duplicated, order kept
                  tags=job.tags or {}, identity=job.identity, command=job.command,
                  owner_uid=job.owner_uid)


def job_end(body: bytes) -> int | None:
    """``{"exit_code": N}`` or an empty body; returns the exit code or None."""
    return decode(body, _JOB_END, allow_empty=True).exit_code


def call_batch(body: bytes) -> CallBatch:
    """``POST /v1/calls`` in the objects form: ``{"calls": [{"model", "start", "end", "pid"?,
    "tags"?, "weight"?, "tokens_in"?, "tokens_out"?}], "dropped"?: N}``. The ingestion hot path
    (up to 10,000 calls a request): msgspec checks every bound; end >= start and a model that is
    not all blank are left."""
    return _spans(decode(body, _CALLS))


def call_batch_from(obj: Any) -> CallBatch:
    """An already parsed objects-form body (a restart re-reading a stored batch)."""
    where = nonfinite_path(obj)
    if where is not None:
        raise bad(f"{where}: must be a finite number (NaN and Infinity are not allowed)")
    try:
        batch = msgspec.convert(obj, CallsRequest)
    except msgspec.ValidationError as exc:
        raise refusal(exc, obj) from None
    return _spans(batch)


def _spans(batch: CallsRequest) -> CallBatch:
    spans = []
    append = spans.append
    for i, c in enumerate(batch.calls):
        start, end = c.start, c.end
        if end < start:
            raise bad(f"calls[{i}].end: must be >= start (end {end} < start {start})")
        if c.model.isspace():
            raise bad(f"calls[{i}].model: must not be empty or blank")
        append(CallSpan(c.model, start, end, c.pid, c.tags or NO_TAGS, c.weight, c.tokens_in,
                        c.tokens_out))
    return CallBatch(spans, batch.dropped or 0)


def deferred(body: bytes) -> DeferredRequest:
    """A deferred submission, typed; its deadline, duration, cwd and env rules are checked where
    they are turned into a Submission (``deferred_routes``), which knows the clock."""
    return decode(body, _DEFERRED)
