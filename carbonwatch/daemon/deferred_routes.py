"""HTTP routes of the carbon-aware scheduler (``carbonwatch.scheduler``), on the daemon's app.

The daemon depends on the scheduler, never the reverse: this module turns requests into
:class:`~carbonwatch.scheduler.job.Submission` and the scheduler's domain errors into HTTP.
It imports only the scheduler's job module: the OpenAPI document is built without loading
the service.


``POST /v1/deferred`` submit · ``GET /v1/deferred`` the queue · ``GET /v1/deferred/{id}`` one job ·
``DELETE /v1/deferred/{id}`` cancel. Refusals are the daemon's JSON errors (``{"error": ...}``)."""

from __future__ import annotations

import dataclasses
import os
from typing import TYPE_CHECKING, Any

from aiohttp import web

from carbonwatch.daemon import authz, bodies, validation
from carbonwatch.daemon.bodies import DeferredRequest
from carbonwatch.daemon.validation import ApiError, bad
from carbonwatch.errors import ConfigError, InputError
from carbonwatch.scheduler.job import Conflict, NotFound, Status, Submission
from carbonwatch.times import (
    MAX_AHEAD_S,
    check_ahead,
    parse_duration_s,
    parse_user_time_s,
)

if TYPE_CHECKING:
    from carbonwatch.scheduler.service import SchedulerService

SERVICE: web.AppKey[SchedulerService] = web.AppKey("scheduler")


def add_scheduler_routes(app: web.Application, service: SchedulerService) -> None:
    app[SERVICE] = service
    app.router.add_post("/v1/deferred", submit)
    app.router.add_get("/v1/deferred", queue)
    app.router.add_get("/v1/deferred/{id}", get)
    app.router.add_delete("/v1/deferred/{id}", cancel)


def _service(request: web.Request) -> SchedulerService:
    return request.app[SERVICE]


def _launcher(request: web.Request, service: SchedulerService) -> tuple[int, int]:
    """(uid, gid) the caller's commands run as; 403 naming why when it may not launch (see
    :func:`carbonwatch.daemon.authz.launch_identity`)."""
    return authz.launch_identity(authz.caller(request), bool(service.settings.admin_token))


_PRIVATE = ("command", "cwd", "log_path")


def _visible(view: dict[str, Any], who: authz.Caller) -> dict[str, Any]:
    """Another user's deferred job: its plan and carbon, not its command line, directory or log."""
    if who.may_manage(view.get("owner_uid")):
        return view
    return {**view, **dict.fromkeys(_PRIVATE)}


def _opt_text(value: str | None, key: str) -> str | None:
    """An optional text field: absent/null, "" (none), or not all blank (lengths: the struct)."""
    if value and not value.strip():
        raise bad(f"{key}: must not be empty")
    return value


def _submission(req: DeferredRequest, now_s: float, *, check_cwd: bool = True) -> Submission:
    """The rules a schema cannot say: a deadline and a duration given one way or the other, both
    within a year, cwd absolute (and existing, for the daemon's own user), env names execve can
    pass. Types, lengths and choices were checked when the body was decoded."""
    try:
        if req.deadline_s is not None:
            deadline_s = req.deadline_s
        elif req.deadline is not None:
            deadline_s = parse_user_time_s(req.deadline, now_s)
        else:
            raise bad("deadline: give deadline_s (Unix seconds) or deadline (ISO-8601 or +12h)")
        raw = req.duration_s if req.duration_s is not None else req.duration
        if raw is None:
            raise bad("duration: give duration_s (seconds) or duration ('2h' or 'auto')")
        if raw == "auto":
            duration_s = None
        elif isinstance(raw, str):
            duration_s = parse_duration_s(raw)
        else:
            duration_s = raw
            if duration_s <= 0:
                raise bad("duration_s: must be > 0")
        if duration_s is not None and duration_s > MAX_AHEAD_S:
            raise bad(f"duration: at most {MAX_AHEAD_S:.0f} s (a year), got {duration_s:g}")
        check_ahead(deadline_s, now_s, "deadline")
    except InputError as exc:
        raise bad(str(exc)) from None
    cwd = _opt_text(req.cwd, "cwd")
    if cwd and not os.path.isabs(cwd):
        raise bad(f"cwd: {cwd!r} is not an absolute directory")
    # Looked at only for the daemon's own user: for another user the daemon's answer would tell
    # which directories exist where that user may not look; its job fails to enter it instead.
    if cwd and check_cwd and not os.path.isdir(cwd):
        raise bad(f"cwd: {cwd!r} is not an existing absolute directory on the daemon's host")
    for key in req.env:
        # execve takes "KEY=VALUE": a key with '=' (or none at all) cannot be passed as given
        if not key or "=" in key:
            raise bad(f"env: variable name {key[:64]!r} must be non-empty and contain no '='")
    if req.via == "slurm" and req.interruptible:
        raise bad("interruptible: not with via 'slurm' (Slurm starts a job once and cannot pause "
                  "it between windows); submit one job per stretch of work, with checkpoints")
    return Submission(
        via="" if req.via == "local" else req.via,
        command=list(req.command),
        deadline_s=deadline_s,
        duration_s=duration_s,
        name=_opt_text(req.name, "name") or "",
        kind=req.kind,
        interruptible=req.interruptible,
        zone=_opt_text(req.zone, "zone"),
        provider=_opt_text(req.provider, "provider") or None,
        provider_url=_opt_text(req.provider_url, "provider_url"),
        cwd=cwd or None,
        env=req.env,
    )


async def submit(request: web.Request) -> web.Response:
    service = _service(request)
    uid, gid = _launcher(request, service)
    sub = _submission(bodies.deferred(await request.read()), service.clock.time(),
                      check_cwd=uid == os.geteuid())
    sub = dataclasses.replace(sub, owner_uid=uid, owner_gid=gid)
    try:
        view = await service.submit(sub)
    except (InputError, ConfigError) as exc:
        raise bad(str(exc)) from None
    return web.json_response(view, status=201)


async def queue(request: web.Request) -> web.Response:
    active = request.query.get("active", "0").lower() in ("1", "true", "yes")
    limit = validation.parse_limit(request.query.get("limit", "100"))
    views = await _service(request).queue(active_only=active, limit=limit)
    who = authz.caller(request)
    return web.json_response({"deferred": [_visible(v, who) for v in views]})


async def get(request: web.Request) -> web.Response:
    try:
        view = await _service(request).get(request.match_info["id"])
    except NotFound as exc:
        raise ApiError(404, str(exc)) from None
    return web.json_response(_visible(view, authz.caller(request)))


async def cancel(request: web.Request) -> web.Response:
    service = _service(request)
    _launcher(request, service)
    who = authz.caller(request)
    try:
        owner = (await service.job(request.match_info["id"])).owner_uid
        if not who.may_manage(owner):
            raise ApiError(403, f"deferred job {request.match_info['id']} belongs to uid {owner}; "
                                f"{who.describe()} may not cancel it (only its owner or an "
                                "operator)")
        view = await service.cancel(request.match_info["id"])
    except NotFound as exc:
        raise ApiError(404, str(exc)) from None
    except Conflict as exc:
        raise ApiError(409, str(exc)) from None
    return web.json_response(view)


_DEFERRED = {"$ref": "#/components/schemas/Deferred"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


_ID = {"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}


def _err(description: str) -> dict[str, Any]:
    return _json({"$ref": "#/components/schemas/Error"}, description)


# Merged into the daemon's OpenAPI document (carbonwatch.daemon.openapi); the request body's
# schema (DeferredRequest) is generated there from the struct that decodes it (daemon/bodies.py).
OPENAPI_SCHEMAS: dict[str, Any] = {
    "Deferred": {
        "type": "object",
        "description": "A deferred job: its plan, expected and realised carbon. Times are UTC "
        "ISO-8601, with Unix-second twins (*_s).",
        "properties": {
            "id": {"type": "string"},
            "name": {"type": "string"},
            "status": {
                "type": "string",
                "enum": [s.value for s in Status],
            },
            "command": {"type": ["array", "null"], "items": {"type": "string"},
                        "description": "null (as cwd and log_path) for another user's job"},
            "owner_uid": {"type": ["integer", "null"]},
            "deadline": {"type": "string"},
            "duration_s": {"type": "number"},
            "interruptible": {"type": "boolean"},
            "plan": {"type": "array", "items": {"type": "object"}},
            "plan_basis": {"type": ["string", "null"], "enum": ["forecast", "no_forecast", None]},
            "plan_signal": {"type": ["string", "null"], "enum": ["average", "marginal", None]},
            "expected_co2e_g": {"type": ["number", "null"]},
            "expected_saving_pct": {"type": ["number", "null"]},
            "job_id": {"type": ["string", "null"]},
            "realised_co2e_g": {"type": ["number", "null"]},
            "realised_baseline_co2e_g": {"type": ["number", "null"]},
            "message": {"type": ["string", "null"]},
            "saving_band_pct": {
                "type": ["number", "null"],
                "description": "one sigma of expected_saving_pct from the measured forecast error",
            },
            "via": {"type": "string", "description": "'' (the daemon launches it) or 'slurm'"},
            "slurm_job_id": {"type": ["string", "null"]},
            "slurm_state": {"type": ["string", "null"], "description": "Slurm's JobState"},
        },
    },
}

OPENAPI_PATHS: dict[str, Any] = {
    "/v1/deferred": {
        "post": {
            "summary": "Defer a job to the lowest-carbon time before its deadline",
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {"schema": {"$ref": "#/components/schemas/DeferredRequest"}}
                },
            },
            "responses": {
                "201": _json(_DEFERRED, "planned and queued"),
                "400": _err("invalid field, deadline too soon, or no history for 'auto'"),
                "401": _err("missing or wrong bearer token"),
                "403": _err("over TCP without the admin token, or a user the daemon cannot "
                            "run commands as; cancel: another user's job"),
            },
        },
        "get": {
            "summary": "Deferred jobs, newest first (?active=1: not yet ended)",
            "responses": {
                "200": _json(
                    {
                        "type": "object",
                        "properties": {"deferred": {"type": "array", "items": _DEFERRED}},
                    },
                    "deferred jobs",
                ),
                "400": _err("invalid query"),
                "401": _err("missing or wrong bearer token"),
            },
        },
    },
    "/v1/deferred/{id}": {
        "get": {
            "summary": "One deferred job",
            "parameters": [_ID],
            "responses": {
                "200": _json(_DEFERRED, "the job"),
                "404": _err("no such deferred job"),
                "401": _err("missing or wrong bearer token"),
            },
        },
        "delete": {
            "summary": "Cancel: a queued job is dropped, a running one terminated",
            "parameters": [_ID],
            "responses": {
                "200": _json(_DEFERRED, "cancelled"),
                "404": _err("no such deferred job"),
                "409": _err("the job already ended"),
                "401": _err("missing or wrong bearer token"),
                "403": _err("over TCP without the admin token, or a user the daemon cannot "
                            "run commands as; cancel: another user's job"),
            },
        },
    },
}
