"""The OpenAPI 3 document served at ``GET /v1/openapi.json``, kept in step with the routes by a
test (every route is documented, every documented path is routed). The request bodies' schemas
are generated from the msgspec structs that decode them (``bodies.py``, ``columnar.py``), so the
document and the validator cannot drift; responses are written by hand."""

from __future__ import annotations

from typing import Any

import msgspec

from carbonwatch.daemon.bodies import REQUESTS
from carbonwatch.daemon.columnar import CONTENT_TYPE as COLUMNAR_CONTENT_TYPE
from carbonwatch.daemon.columnar import ColumnarBatch
from carbonwatch.daemon.deferred_routes import OPENAPI_PATHS, OPENAPI_SCHEMAS
from carbonwatch.daemon.validation import MAX_BODY_BYTES

# msgspec emits the request bodies' schemas from the very structs that decode them.
_, REQUEST_SCHEMAS = msgspec.json.schema_components(
    [*REQUESTS, ColumnarBatch], ref_template="#/components/schemas/{name}")

_ERROR = {"$ref": "#/components/schemas/Error"}


def _request(name: str, *, required: bool = True) -> dict[str, Any]:
    return {"required": required, "content": {"application/json": {
        "schema": {"$ref": f"#/components/schemas/{name}"}}}}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _errors(*codes: int) -> dict[str, Any]:
    text = {
        400: "malformed JSON or an invalid field (the message names it)",
        401: "missing or wrong bearer token",
        403: "not yours: a pid another uid owns, or another user's job (owner or operator only)",
        404: "no such job",
        409: "conflict (pid owned by another job, job already ended)",
        413: f"body larger than {MAX_BODY_BYTES} bytes",
        503: "the store or the sampler cannot serve the request now",
    }
    return {str(c): _json(_ERROR, text[c]) for c in (*codes, 401)}


_TAGS = {
    "type": "object",
    "maxProperties": 64,
    "additionalProperties": {"type": ["string", "number", "boolean", "null"]},
}

_JOB = {
    "type": "object",
    "properties": {
        "id": {"type": "string"},
        "name": {"type": "string"},
        "kind": {"type": "string", "enum": ["training", "inference", "other"]},
        "model": {"type": ["string", "null"]},
        "status": {"type": "string", "enum": ["running", "finished", "failed", "interrupted",
                                              "lost"]},
        "source": {"type": "string"},
        "identity": {"type": ["string", "null"]},
        "pids": {"type": "array", "items": {"type": "integer"}},
        "tags": _TAGS,
        "command": {"type": ["array", "null"], "items": {"type": "string"},
                    "description": "null for another user's job"},
        "owner_uid": {"type": ["integer", "null"],
                      "description": "the local uid that registered it; null: another machine"},
        "started_s": {"type": "number", "description": "Unix seconds"},
        "ended_s": {"type": ["number", "null"]},
        "exit_code": {"type": ["integer", "null"]},
        "energy_j": {"type": "number"},
        "energy_j_by_device": {"type": "object", "additionalProperties": {"type": "number"}},
        "co2e_g": {"type": "number"},
        "cost": {"type": ["number", "null"], "description": "null: no energy price configured"},
        "currency": {"type": ["string", "null"]},
        "calls": {"type": "integer", "description": "settled inference calls"},
        "calls_energy_j": {"type": "number", "description": "energy of the calls themselves"},
        "between_calls_j": {"type": "number",
                            "description": "service energy while no call ran"},
        "provenance": {"type": "object"},
        "embodied_co2e_g": {"type": ["number", "null"], "description":
                            "hardware manufacture, amortised (GET /v1/jobs/{id}); null: unknown"},
        "embodied_devices_without_figure": {"type": "array", "items": {"type": "string"}},
        "co2e_g_marginal": {"type": ["number", "null"], "description":
                            "at the marginal signal (WattTime MOER); null: unknown"},
    },
}

_NUMBER_OR_NULL = {"type": ["number", "null"]}
# group_by=model only; see carbonwatch/tokens.py for the definitions.
_TOKEN_FIGURES = {
    "inference_energy_j": {"type": "number",
                           "description": "the model's serving energy (between calls included)"},
    "inference_co2e_g": {"type": "number"},
    "tokens_in": {"type": "integer"},
    "tokens_out": {"type": "integer"},
    "token_calls": {"type": "integer", "description": "calls that reported tokens_out"},
    "token_energy_share": {**_NUMBER_OR_NULL, "description": "share of the serving energy the "
                           "per-token figures cover (that of the calls reporting tokens_out)"},
    "energy_j_per_output_token": {**_NUMBER_OR_NULL, "description": "null: no tokens reported"},
    "energy_j_per_token": {**_NUMBER_OR_NULL, "description": "per token in + out"},
    "co2e_g_per_1k_output_tokens": _NUMBER_OR_NULL,
}

_JOB_ID = {"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}

DOCUMENT: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {
        "title": "carbonwatch daemon",
        "version": "1",
        "description": "Energy, gCO2e and cost per job and per inference call on one node. "
        "Loopback by default; off loopback every request needs `Authorization: Bearer <token>`, "
        "except a local user's own-job routes over loopback (its uid is known). A job belongs "
        "to the local uid that registered it: only it or an operator (admin token, root, the "
        "daemon's user) ends or merges it or sees its command line. "
        "Times are Unix seconds (UTC). Errors are JSON `{\"error\": \"...\"}`; a 400 that one "
        "field earns also says which: `\"field\": \"calls[3].end\"`.",
    },
    "components": {
        "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        "schemas": {
            "Error": {"type": "object", "required": ["error"],
                      "properties": {"error": {"type": "string"}, "field": {
                          "type": "string", "description": "where one field is to blame, its "
                          "path (calls[3].end); the error message starts with it"}}},
            "Job": _JOB,
        },
    },
    "security": [{"bearer": []}, {}],
    "paths": {
        "/v1/jobs": {
            "post": {
                "summary": "Register a job (its pids and their process trees are attributed to it)",
                "description": "A running job with the same `identity` (Slurm job, pod, torchrun "
                "group) is the same job: its pids are added and 200 is returned.",
                "requestBody": _request("JobRequest"),
                "responses": {
                    "201": _json({"type": "object", "properties": {"id": {"type": "string"}}},
                                 "created"),
                    "200": _json({"type": "object", "properties": {
                        "id": {"type": "string"}, "merged": {"type": "boolean"}}},
                        "merged into the running job with the same identity"),
                    **_errors(400, 403, 409, 413, 503),
                },
            },
            "get": {
                "summary": "List jobs, newest first (another user's command line is null)",
                "parameters": [
                    {"name": "status", "in": "query", "schema": {"type": "string", "enum": [
                        "running", "finished", "failed", "interrupted", "lost"]}},
                    {"name": "limit", "in": "query",
                     "schema": {"type": "integer", "minimum": 1, "maximum": 1000,
                                "default": 100}},
                ],
                "responses": {
                    "200": _json({"type": "object", "properties": {
                        "jobs": {"type": "array", "items": {"$ref": "#/components/schemas/Job"}}}},
                        "jobs"),
                    **_errors(400),
                },
            },
        },
        "/v1/jobs/{id}": {
            "get": {
                "summary": "One job, with its energy, emissions, cost and provenance",
                "parameters": [_JOB_ID],
                "responses": {"200": _json({"$ref": "#/components/schemas/Job"}, "the job"),
                              **_errors(404)},
            },
        },
        "/v1/jobs/{id}/end": {
            "post": {
                "summary": "End a job: its energy up to now is closed and written",
                "description": "A job whose processes have been gone for two housekeeping turns "
                "(10 s by default) without a report is marked lost; its owner's report that comes "
                "later still records its status and exit code (energy and end time stand). Any "
                "other ended job answers 409.",
                "parameters": [_JOB_ID],
                "requestBody": _request("JobEndRequest", required=False),
                "responses": {"200": _json({"$ref": "#/components/schemas/Job"}, "the ended job"),
                              **_errors(400, 403, 404, 409, 413, 503)},
            },
        },
        "/v1/calls": {
            "post": {
                "summary": "Report inference call spans; answered once the batch is committed",
                "description": "A call's pid maps to the job that owns it; an unknown pid gets an "
                "inference service job (kind inference, source api). A call without pid goes to "
                "its model's service if exactly one runs. Each call's energy is its service's "
                "energy split by overlap time, settled a few seconds after the call ends. "
                "`weight`, `tokens_in` and `tokens_out` are optional work measures; tokens "
                "feed the per-token figures of `/v1/summary?group_by=model`.",
                "requestBody": {"required": True, "content": {"application/json": {"schema": {
                    "$ref": "#/components/schemas/CallsRequest"
                }}, COLUMNAR_CONTENT_TYPE: {"schema": {
                    "$ref": "#/components/schemas/ColumnarBatch",
                    "description": "The columnar form (what the Python client sends): per model, "
                    "arrays of starts and ends (or each packed: base64 of little-endian "
                    "float64s), optional arrays of weight/tokens_in/tokens_out "
                    "(null for a call without one), one pid and one set of tags; same bounds as "
                    "the objects form, at most 10,000 calls in all, every array as long as "
                    "start, end >= start.",
                }}}},
                "responses": {
                    "200": _json({"type": "object", "properties": {
                        "accepted": {"type": "integer"}, "batch_id": {"type": "integer"}}},
                        "committed"),
                    **_errors(400, 413, 503),
                },
            },
        },
        "/v1/summary": {
            "get": {
                "summary": "Energy, emissions, cost and calls grouped by phase, model or job",
                "description": "Minute resolution: `since` is rounded down to its minute.",
                "parameters": [
                    {"name": "group_by", "in": "query", "schema": {
                        "type": "string", "enum": ["phase", "model", "job"], "default": "phase"}},
                    {"name": "since", "in": "query", "schema": {"type": "string"},
                     "description": "Unix seconds or ISO-8601 with a zone"},
                    {"name": "until", "in": "query", "schema": {"type": "string"}},
                ],
                "responses": {
                    "200": _json({"type": "object", "properties": {"groups": {
                        "type": "array", "items": {"type": "object", "properties": {
                            "key": {"type": "string"}, "energy_j": {"type": "number"},
                            "co2e_g": {"type": "number"}, "cost": {"type": ["number", "null"]},
                            "currency": {"type": "string"}, "calls": {"type": "integer"},
                            **_TOKEN_FIGURES}}}}},
                        "groups (group_by=model: with tokens and per-token figures)"),
                    **_errors(400),
                },
            },
        },
        "/v1/models/{model}/sci": {
            "get": {
                "summary": "A model's Software Carbon Intensity (ISO/IEC 21031): E, I, M, R",
                "description": "SCI = (E x I + M) per R; M is embodied carbon (null where no "
                "device used has a sourced figure, and SCI with it).",
                "parameters": [
                    {"name": "model", "in": "path", "required": True,
                     "schema": {"type": "string", "maxLength": 256}},
                    {"name": "functional_unit", "in": "query", "schema": {
                        "type": "string", "enum": ["calls", "1k-output-tokens", "training-run"],
                        "default": "calls"}},
                ],
                "responses": {
                    "200": _json({"type": "object", "properties": {
                        "E_kwh": {"type": "number"},
                        "I_g_per_kwh": {"type": ["number", "null"]},
                        "M_g": {"type": ["number", "null"]}, "R": {"type": "number"},
                        "sci_g_per_unit": {"type": ["number", "null"]}}}, "the SCI terms"),
                    **_errors(400),
                    "404": _json(_ERROR, "nothing recorded for this model"),
                },
            },
        },
        "/v1/devices": {
            "get": {
                "summary": "Measured devices: method, provenance, state, last interval",
                "responses": {"200": _json({"type": "object"}, "devices"), **_errors()},
            },
        },
        "/v1/openapi.json": {
            "get": {"summary": "This document",
                    "responses": {"200": _json({"type": "object"}, "OpenAPI 3")}},
        },
        "/healthz": {
            "get": {
                "summary": "Sampling health: each device's state and last-sample age",
                "responses": {
                    "200": _json({"type": "object"}, "sampling (or a replay that has ended)"),
                    "503": _json({"type": "object"}, "the sampler is stuck or stopped"),
                    **_errors(),
                },
            },
        },
        "/metrics": {
            "get": {
                "summary": "Prometheus text exposition (cumulative counters, health gauges)",
                "responses": {"200": {"description": "text/plain; version=0.0.4",
                                      "content": {"text/plain": {"schema": {"type": "string"}}}},
                              **_errors()},
            },
        },
    },
}

# The scheduler's routes document themselves beside their handlers.
DOCUMENT["paths"].update(OPENAPI_PATHS)
DOCUMENT["components"]["schemas"].update(OPENAPI_SCHEMAS)
DOCUMENT["components"]["schemas"].update(REQUEST_SCHEMAS)
