"""The columnar form of POST /v1/calls stores exactly the calls the objects form does (a property
test over the daemon's ingestion parse, and a real daemon storing both), and bad columnar input is
a 400 naming the field."""

from __future__ import annotations

import base64
import json
import math
import sqlite3
import struct
from typing import Any

import pytest
from daemon_helpers import INFER_PID, MODEL, InProcessDaemon
from hypothesis import given, settings
from hypothesis import strategies as st

from carbonwatch.daemon import bodies, columnar, validation
from carbonwatch.daemon.validation import ApiError

CT = {"Content-Type": columnar.CONTENT_TYPE}

times = st.floats(min_value=0.0, max_value=2e9, allow_nan=False)
tag_values = st.one_of(st.text(max_size=8), st.integers(-10**6, 10**6), st.booleans(), st.none(),
                       st.floats(allow_nan=False, allow_infinity=False))


@st.composite
def groups(draw: Any) -> list[dict[str, Any]]:
    out = []
    for _ in range(draw(st.integers(1, 4))):
        n = draw(st.integers(0, 12))
        starts = draw(st.lists(times, min_size=n, max_size=n))
        ends = [s + draw(st.floats(0.0, 5.0)) for s in starts]
        group: dict[str, Any] = {
            "model": draw(st.text(min_size=1, max_size=12).filter(
                lambda m: not m.isspace() and "\x00" not in m)),
            "start": starts, "end": ends,
        }
        if draw(st.booleans()):
            group["pid"] = draw(st.integers(1, 2**31 - 1))
        if draw(st.booleans()):
            group["tags"] = draw(st.dictionaries(
                st.text(max_size=6).filter(lambda k: "\x00" not in k),
                tag_values.filter(lambda v: not (isinstance(v, str) and "\x00" in v)),
                max_size=3))
        for name, values in (("weight", st.floats(0, 1e12, allow_nan=False)),
                             ("tokens_in", st.integers(0, 10**9)),
                             ("tokens_out", st.integers(0, 10**9))):
            if draw(st.booleans()):
                group[name] = draw(st.lists(st.one_of(st.none(), values), min_size=n, max_size=n))
        out.append(group)
    return out


def as_objects(groups: list[dict[str, Any]]) -> dict[str, Any]:
    calls = []
    for g in groups:
        for i in range(len(g["start"])):
            call: dict[str, Any] = {"model": g["model"], "start": g["start"][i],
                                    "end": g["end"][i]}
            for key in ("pid", "tags"):
                if key in g:
                    call[key] = g[key]
            for key in ("weight", "tokens_in", "tokens_out"):
                if key in g and g[key][i] is not None:
                    call[key] = g[key][i]
            calls.append(call)
    return {"calls": calls}


def packed(values: list[float]) -> str:
    return base64.b64encode(struct.pack(f"<{len(values)}d", *values)).decode()


@settings(max_examples=300, deadline=None)
@given(groups(), st.booleans())
def test_columnar_and_objects_forms_give_the_same_spans(gs, pack):
    objects = bodies.call_batch(json.dumps(as_objects(gs)).encode())
    if pack:  # times as base64 float64s, as the Python client sends them
        gs = [{**g, "start": packed(g["start"]), "end": packed(g["end"])} for g in gs]
    body = json.dumps({"models": gs}).encode()
    col = columnar.decode(body)
    assert col.spans == objects.spans
    assert [s.tags for s in col.spans] == [s.tags for s in objects.spans]  # not in the hash
    assert columnar.any_batch(body).spans == objects.spans  # the restart path re-reads it alike


# Any objects-form call, valid or not: each field absent, of its type in or out of bounds, or of
# another type. Whatever the objects form accepts, the columnar form of the same calls stores
# alike; whatever it refuses, the columnar form refuses too.
_any_call = st.fixed_dictionaries({}, optional={
    "model": st.one_of(st.text(max_size=4), st.just(" "), st.integers(0, 3)),
    "start": st.one_of(st.integers(-5, 2 * 10**10), times, st.floats(-1.0, 1e11), st.just("1")),
    "end": st.one_of(st.integers(-5, 2 * 10**10), times, st.floats(-1.0, 1e11), st.none()),
    "pid": st.one_of(st.integers(-1, 2**31), st.none(), st.booleans()),
    "tags": st.one_of(st.none(), st.dictionaries(st.text(max_size=3), tag_values, max_size=2)),
    "weight": st.one_of(st.none(), st.integers(-1, 10), st.floats(-1.0, 2e12, allow_nan=False)),
    "tokens_in": st.one_of(st.none(), st.integers(-1, 10**9 + 1), st.just(1.5)),
    "tokens_out": st.one_of(st.none(), st.integers(-1, 10**9 + 1)),
})


def as_columnar(calls: list[dict[str, Any]]) -> dict[str, Any]:
    """Each call as its own group (its model, pid and tags are per group)."""
    groups = []
    for call in calls:
        group = {k: call[k] for k in ("model", "pid", "tags") if k in call}
        for k in ("start", "end", "weight", "tokens_in", "tokens_out"):
            if k in call:
                group[k] = [call[k]]
        groups.append(group)
    return {"models": groups}


@settings(max_examples=400, deadline=None)
@given(st.lists(_any_call, min_size=1, max_size=4))
def test_any_objects_body_that_validates_stores_what_its_columnar_form_stores(calls):
    objects_body = json.dumps({"calls": calls}).encode()
    columnar_body = json.dumps(as_columnar(calls)).encode()
    try:
        objects = bodies.call_batch(objects_body)
    except ApiError as refused_:
        assert refused_.status == 400 and ":" in refused_.message
        # The columnar form of calls the objects form refuses is refused too. (Not the same
        # text: it names models[i].start[0] where the objects form names calls[i].start.)
        # One exception: a call without start or end is a group without that column, which
        # the columnar form refuses as well, as a missing field.
        with pytest.raises(ApiError) as col_refused:
            columnar.decode(columnar_body)
        assert col_refused.value.status == 400
        return
    col = columnar.decode(columnar_body)
    assert col.spans == objects.spans
    assert [s.tags for s in col.spans] == [s.tags for s in objects.spans]


def _refused(body: dict[str, Any] | bytes) -> str:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    with pytest.raises(ApiError) as info:
        columnar.decode(raw)
    assert info.value.status == 400
    return str(info.value.message if hasattr(info.value, "message") else info.value)


GOOD = {"model": "m", "start": [1.0, 2.0], "end": [1.5, 2.5]}


@pytest.mark.parametrize(("group", "words"), [
    ({**GOOD, "end": [1.5]}, "models[0].end: 1 values, but start has 2"),
    ({**GOOD, "weight": [1.0]}, "models[0].weight: 1 values, but start has 2"),
    ({**GOOD, "end": [1.5, 1.9]}, "models[0].end[1]"),
    ({**GOOD, "start": [1.0, -2.0]}, "models[0].start[1]"),
    ({**GOOD, "weight": [1.0, 2e12]}, "models[0].weight[1]"),
    ({**GOOD, "tokens_in": [1, 2.5]}, "models[0].tokens_in[1]"),
    ({**GOOD, "tokens_out": [1, 10**9 + 1]}, "models[0].tokens_out[1]"),
    ({**GOOD, "model": "x" * 257}, "models[0].model"),
    ({**GOOD, "model": "   "}, "models[0].model: must not be empty or blank"),
    ({**GOOD, "model": "a\x00b"}, "models[0].model: strings must not contain NUL"),
    ({**GOOD, "tags": {"k": "v\x00"}}, "models[0].tags"),
    ({**GOOD, "pid": 0}, "models[0].pid"),
    ({**GOOD, "colour": 1}, "models[0]: unknown field 'colour'"),
])
def test_bad_columnar_input_names_the_field(group, words):
    assert words in _refused({"models": [group]})


@st.composite
def _broken(draw: Any) -> tuple[dict[str, Any], str]:
    """Valid groups with one broken: unequal lengths, NaN or infinity, or an end before its start;
    with the field the 400 must name."""
    gs = [g for g in draw(groups()) if g["start"]] or [{"model": "m", "start": [1.0],
                                                         "end": [2.0]}]
    g = draw(st.integers(0, len(gs) - 1))
    group, n = dict(gs[g]), len(gs[g]["start"])
    i = draw(st.integers(0, n - 1))
    how = draw(st.sampled_from(["short", "long", "nan", "inf", "before"]))
    column = draw(st.sampled_from([c for c in ("start", "end", "weight", "tokens_in",
                                               "tokens_out") if c in group]))
    if how in ("short", "long"):
        values = list(group[column])
        group[column] = values[:-1] if how == "short" else [*values, values[-1]]
        where = f"models[{g}].{'end' if column == 'start' else column}:"
    elif how in ("nan", "inf") and column in ("start", "end", "weight"):
        group[column] = [*group[column]]
        group[column][i] = math.nan if how == "nan" else math.inf
        where = f"models[{g}].{column}[{i}]:"
    else:
        group["end"] = [*group["end"]]
        group["end"][i] = group["start"][i] - 1.0
        where = f"models[{g}].end[{i}]:"
        if group["end"][i] < 0:  # no time before 0: the bound names the same place
            where = f"models[{g}].end[{i}]:"
    gs[g] = group
    return {"models": gs}, where


@settings(max_examples=300, deadline=None)
@given(_broken())
def test_bad_columnar_input_is_a_400_naming_the_field(case):
    body, where = case
    raw = json.dumps(body, allow_nan=True).encode()  # NaN and Infinity as Python writes them
    assert _refused(raw).startswith(where)


def test_nan_is_refused_naming_the_field():
    body = b'{"models": [{"model": "m", "start": [1.0, NaN], "end": [1.5, 2.5]}]}'
    assert "models[0].start[1]" in _refused(body)
    body = b'{"models": [{"model": "m", "start": [1.0], "end": [1.5], "weight": [Infinity]}]}'
    assert "models[0].weight[0]" in _refused(body)


def test_bad_packed_times_name_the_field():
    group = {"model": "m", "start": packed([1.0, 2.0]), "end": packed([1.5, 2.5])}
    assert len(columnar.decode(json.dumps({"models": [group]}).encode()).spans) == 2
    short = {**group, "end": base64.b64encode(b"1234567").decode()}
    assert "models[0].end: packed values must be a whole number" in _refused({"models": [short]})
    nan = {**group, "start": packed([1.0, math.nan])}
    assert "models[0].start[1]" in _refused({"models": [nan]})
    late = {**group, "end": packed([1.5, 1.9])}
    assert "models[0].end[1]" in _refused({"models": [late]})
    assert "models[0].start" in _refused({"models": [{**group, "start": "not base64!"}]})


def test_too_many_calls_in_one_request():
    n = validation.MAX_CALLS_PER_REQUEST // 2 + 1
    group = {"model": "m", "start": [1.0] * n, "end": [2.0] * n}
    assert "more than 10000 calls" in _refused({"models": [group, group]})


@pytest.fixture(scope="module")
def daemon(tmp_path_factory):
    with InProcessDaemon(tmp_path_factory.mktemp("columnar") / "cw.db") as d:
        d.wait_for(d.replay_finished)
        yield d


def test_a_real_daemon_stores_both_forms_alike(daemon):
    group = {"model": MODEL, "pid": INFER_PID, "tags": {"batch": 8},
             "start": [100.0, 100.2, 100.4], "end": [100.1, 100.3, 100.9],
             "weight": [8, None, 2.5], "tokens_out": [None, 3, 4]}
    status, col = daemon.request("POST", "/v1/calls", {"models": [group]}, headers=CT)
    assert status == 200 and col["accepted"] == 3, col
    status, obj = daemon.request("POST", "/v1/calls", as_objects([group]))
    assert status == 200 and obj["accepted"] == 3, obj
    daemon.wait_for(lambda: daemon.request("GET", "/healthz")[1]["pending_calls"] == 0)
    with sqlite3.connect(f"file:{daemon.settings.db}?mode=ro", uri=True) as conn:
        conn.row_factory = sqlite3.Row
        rows = {
            b: [{k: r[k] for k in r.keys() if k not in ("id", "batch_id")}  # noqa: SIM118
                for r in conn.execute("SELECT * FROM calls WHERE batch_id = ? ORDER BY id", (b,))]
            for b in (col["batch_id"], obj["batch_id"])
        }
    # The raw call log holds the same three calls (times, pid, tags, measures, settled energy).
    assert len(rows[col["batch_id"]]) == 3
    assert rows[col["batch_id"]] == rows[obj["batch_id"]]


def test_a_real_daemon_refuses_bad_columns_with_a_400(daemon):
    bad = {"models": [{"model": MODEL, "start": [1.0, 2.0], "end": [3.0]}]}
    status, answer = daemon.request("POST", "/v1/calls", bad, headers=CT)
    assert status == 400 and "models[0].end" in answer["error"], answer
    status, answer = daemon.request(
        "POST", "/v1/calls", raw=b'{"models": [{"model": "m", "start": [NaN], "end": [1.0]}]}',
        headers=CT)
    assert status == 400 and "models[0].start[0]" in answer["error"], answer


def test_openapi_documents_the_columnar_form(daemon):
    status, doc = daemon.request("GET", "/v1/openapi.json")
    assert status == 200
    content = doc["paths"]["/v1/calls"]["post"]["requestBody"]["content"]
    assert columnar.CONTENT_TYPE in content and "application/json" in content
    schema = doc["components"]["schemas"]["ModelCalls"]
    array, packed_ = schema["properties"]["start"]["anyOf"]
    assert array["items"]["maximum"] == validation.MAX_UNIX_S
    assert packed_ == {"type": "string", "contentEncoding": "base64"}
    assert not math.isnan(schema["properties"]["weight"]["anyOf"][0]["items"]["anyOf"][0]
                          ["maximum"])
