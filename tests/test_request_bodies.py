"""The OpenAPI document's request schemas and the daemon's validator cannot drift: both come from
the msgspec structs of ``daemon/bodies.py`` and ``daemon/columnar.py``, and on fuzzed bodies
(valid and not) a JSON Schema validator reading the served document and the structs' decoder
agree, body by body. Cross-field rules a schema cannot say (end >= start, pid or pids) are
checked after decoding and are outside this agreement."""

from __future__ import annotations

import json
from typing import Any

import jsonschema
import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from carbonwatch.daemon import bodies, columnar, openapi
from carbonwatch.daemon.validation import ApiError

DOC = openapi.DOCUMENT


# JSON Schema counts 1.0 as an integer; the daemon, as most decoders, takes only the literal 1 for
# an integer field (a token count written 1.0 is refused, as before msgspec). The one difference,
# said here rather than hidden: the checker below reads "integer" as the daemon does.
_Validator = jsonschema.validators.extend(
    jsonschema.Draft202012Validator,
    type_checker=jsonschema.Draft202012Validator.TYPE_CHECKER.redefine(
        "integer", lambda _, v: type(v) is int))


def schema_accepts(name: str, body: Any) -> bool:
    root = {"$ref": f"#/components/schemas/{name}", "components": DOC["components"]}
    return _Validator(root).is_valid(body)


def struct_accepts(struct: type, body: Any) -> bool:
    try:
        decoded = msgspec.json.decode(json.dumps(body).encode(), type=struct)
    except msgspec.ValidationError:
        return False
    # A call's model the schema's pattern refuses (all blank) is refused after decoding, not by
    # msgspec (its regex cost more than the rest of a call's decode): the same rule, said here.
    groups = getattr(decoded, "calls", None) or getattr(decoded, "models", None) or []
    return not any(g.model.isspace() for g in groups)


def test_every_request_body_is_the_schema_of_the_struct_that_decodes_it():
    _, generated = msgspec.json.schema_components(
        [*bodies.REQUESTS, columnar.ColumnarBatch], ref_template="#/components/schemas/{name}")
    schemas = DOC["components"]["schemas"]
    for name, schema in generated.items():
        assert schemas[name] == schema, name
    refs = {}
    for path, ops in DOC["paths"].items():
        for method, op in ops.items():
            for kind, content in op.get("requestBody", {}).get("content", {}).items():
                refs[(method.upper(), path, kind)] = content["schema"]["$ref"].rsplit("/", 1)[1]
    assert refs == {
        ("POST", "/v1/jobs", "application/json"): "JobRequest",
        ("POST", "/v1/jobs/{id}/end", "application/json"): "JobEndRequest",
        ("POST", "/v1/calls", "application/json"): "CallsRequest",
        ("POST", "/v1/calls", columnar.CONTENT_TYPE): "ColumnarBatch",
        ("POST", "/v1/deferred", "application/json"): "DeferredRequest",
    }


texts = st.sampled_from(["", " ", "\t", "m", "résumé", "x" * 256, "x" * 257])
ints = st.sampled_from([-1, 0, 1, 2**31 - 1, 2**31, 10**9, 10**9 + 1, 10**12, 10**12 + 1,
                        2**63, 2**70])
floats = st.sampled_from([-0.5, 0.0, 1.5, 1e10, 1e10 + 1, 1e12, 2e12, 1e300])
anything = st.one_of(st.none(), st.booleans(), texts, ints, floats, st.just([1]), st.just({}))
tags = st.one_of(anything, st.dictionaries(st.sampled_from(["k", "k" * 257]),
                                           anything, max_size=2))


def _bodies(fields: dict[str, st.SearchStrategy[Any]]) -> st.SearchStrategy[dict[str, Any]]:
    """Objects with any subset of ``fields`` (each well or badly typed) and sometimes a stranger."""
    return st.fixed_dictionaries({}, optional={**fields, "colour": st.just("red")})


calls_bodies = st.fixed_dictionaries({}, optional={
    "calls": st.one_of(anything, st.lists(_bodies({
        "model": st.one_of(texts, anything), "start": st.one_of(floats, ints, anything),
        "end": st.one_of(floats, ints), "pid": st.one_of(ints, anything), "tags": tags,
        "weight": st.one_of(floats, ints, anything), "tokens_in": st.one_of(ints, anything),
        "tokens_out": st.one_of(ints, floats)}), max_size=3)),
    "dropped": st.one_of(ints, anything)})
job_bodies = _bodies({
    "name": st.one_of(texts, anything), "kind": st.sampled_from(["training", "gaming", 1]),
    "model": texts, "pid": st.one_of(ints, anything),
    "pids": st.one_of(anything, st.lists(st.one_of(ints, anything), max_size=3)),
    "tags": tags, "identity": st.one_of(texts, anything),
    "command": st.one_of(anything, st.lists(st.one_of(texts, anything), max_size=2)),
    "owner_uid": st.one_of(ints, anything)})
end_bodies = _bodies({"exit_code": st.one_of(ints, anything, st.just(-(2**31) - 1))})
deferred_bodies = _bodies({
    "command": st.one_of(anything, st.lists(st.one_of(texts, anything), max_size=2)),
    "name": st.one_of(texts, anything), "kind": st.sampled_from(["other", "x"]),
    "deadline_s": st.one_of(floats, anything), "deadline": st.one_of(texts, anything),
    "duration": st.one_of(floats, texts, anything), "interruptible": anything,
    "env": st.one_of(anything, st.dictionaries(st.sampled_from(["A", "B"]), anything,
                                               max_size=2)),
    "via": st.sampled_from(["", "local", "slurm", "pbs"])})
columnar_bodies = st.fixed_dictionaries({"models": st.one_of(anything, st.lists(_bodies({
    "model": texts, "start": st.one_of(anything, st.lists(st.one_of(floats, ints), max_size=2)),
    "end": st.lists(st.one_of(floats, ints, anything), max_size=2), "pid": ints, "tags": tags,
    "weight": st.one_of(anything, st.lists(st.one_of(floats, st.none()), max_size=2)),
    "tokens_in": st.lists(st.one_of(ints, st.none(), floats), max_size=2)}), max_size=2))},
    optional={"dropped": st.one_of(ints, anything)})

CASES = [("CallsRequest", bodies.CallsRequest, calls_bodies),
         ("JobRequest", bodies.JobRequest, job_bodies),
         ("JobEndRequest", bodies.JobEndRequest, end_bodies),
         ("DeferredRequest", bodies.DeferredRequest, deferred_bodies),
         ("ColumnarBatch", columnar.ColumnarBatch, columnar_bodies)]


@pytest.mark.parametrize(("name", "struct", "strategy"), CASES, ids=[c[0] for c in CASES])
def test_the_document_and_the_decoder_agree_on_every_body(name, struct, strategy):
    @settings(max_examples=250, deadline=None)
    @given(strategy)
    def agree(body: Any) -> None:
        assert schema_accepts(name, body) == struct_accepts(struct, body), body

    agree()


@pytest.mark.parametrize(("decode", "body", "words"), [
    (bodies.new_job, {"name": "x", "kind": "other", "tags": {"k" * 257: 1}},
     "tags: a key longer than 256 characters"),
    (bodies.new_job, {"name": "x", "kind": "other", "tags": {"a": 1, "b": [2]}}, "tags.b: "),
    (bodies.new_job, {"name": "x", "kind": "other", "tags": {"a": 2**64}}, "tags.a: "),
    (bodies.new_job, {"name": "x", "kind": "gaming"},
     "kind: must be one of inference, other, training, got 'gaming'"),
    (bodies.new_job, {"name": "x"}, "kind: required, one of inference, other, training"),
    (bodies.new_job, {"name": "x", "kind": "other", "pids": [1] * 4097}, "pids: more than 4096"),
    (bodies.new_job, {"name": "x", "kind": "other", "command": [""] * 4097},
     "command: more than 4096 items"),
    (bodies.new_job, {"name": "x", "kind": "other", "command": ["a" * 40_000] * 2},
     "command: longer than 65536 characters"),
    (bodies.job_end, {"exit_code": 2**31}, "exit_code: must be between -2147483648 and"),
    (bodies.call_batch, {"calls": [{"model": "m", "start": 2, "end": 1}]},
     "calls[0].end: must be >= start"),
    (bodies.call_batch, {"calls": [{"model": "m", "start": 1, "end": 2, "tokens_in": 1.0}]},
     "calls[0].tokens_in: expected an integer"),
    (bodies.deferred, {"command": []}, "command: must hold at least 1 item"),
    (bodies.deferred, {"command": ["x"], "env": {"A": 1}}, "env.A: expected a string"),
    (bodies.deferred, {"command": ["x"], "via": "pbs"}, "via: must be one of local, slurm"),
])
def test_refusals_name_the_field(decode, body, words):
    with pytest.raises(ApiError) as info:
        decode(json.dumps(body).encode())
    assert info.value.status == 400
    assert info.value.message.startswith(words), info.value.message


def test_a_valid_job_is_decoded_whole():
    job = bodies.new_job(json.dumps({"name": "train", "kind": "training", "pids": [5, 4, 5],
                                     "tags": {"team": "nlp"}, "command": ["python", "t.py"],
                                     "model": None, "owner_uid": 1000}).encode())
    assert (job.name, job.kind, job.model, job.pids, job.tags, job.command, job.owner_uid) == (
        "train", "training", None, (5, 4), {"team": "nlp"}, ["python", "t.py"], 1000)
    assert bodies.job_end(b"") is None and bodies.job_end(b'{"exit_code": -9}') == -9
