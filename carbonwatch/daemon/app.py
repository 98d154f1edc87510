"""The aiohttp application: routes, auth and error handling.

Every refusal is a 4xx JSON ``{"error": "..."}`` naming the problem, and is decided before
anything is written, so a refused request leaves the store as it was."""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from carbonwatch.daemon import authz, bodies, columnar, storeops, validation
from carbonwatch.daemon.metrics import render
from carbonwatch.daemon.openapi import DOCUMENT
from carbonwatch.daemon.validation import ApiError, bad
from carbonwatch.errors import StoreError

if TYPE_CHECKING:
    from carbonwatch.daemon.protocol import AppDaemon

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
DAEMON = web.AppKey("daemon", object)
JOB_STATUSES = ("running", "finished", "failed", "interrupted", "lost")


def error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


@web.middleware
async def errors_as_json(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except ApiError as exc:  # {"error": ..., "field"?: the path of the field to blame}
        return web.json_response(exc.as_json(), status=exc.status)
    except web.HTTPRequestEntityTooLarge:
        return error(413, f"request body too large; the limit is {validation.MAX_BODY_BYTES} bytes")
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return error(exc.status, exc.reason if exc.status != 405 else
                     f"method {request.method} not allowed on {request.path}")
    except (StoreError, sqlite3.Error) as exc:  # sqlite3: a read on the reader's connection
        return error(503, f"store unavailable: {exc}")
    except Exception as exc:  # noqa: BLE001 - no input may earn a 500 or a traceback per request
        # A bug met by some input: one line to the log (no traceback to flood it), and a 503
        # that says the request was not done, so a client may retry later.
        log.error("%s %s failed: %s: %s", request.method, request.path[:200],
                  type(exc).__name__, str(exc)[:500])
        return error(503, f"the daemon could not handle this request ({type(exc).__name__}); "
                          "it was not done; see the daemon's log")


def auth_middleware(
    token: str, admin_token: str = ""
) -> Callable[..., Awaitable[web.StreamResponse]]:
    """The bearer-token check and the caller's scopes: see :mod:`carbonwatch.daemon.authz`."""
    return authz.auth_middleware(token, admin_token)


def make_app(daemon: AppDaemon) -> web.Application:
    # errors_as_json outermost: it also answers for what fails in auth (a peer look-up that
    # raises is one log line and a 503, never a 500 with a traceback).
    middlewares = [errors_as_json]
    settings = daemon.settings
    if settings.token or settings.admin_token:
        middlewares.append(auth_middleware(settings.token, settings.admin_token))
    app = web.Application(client_max_size=validation.MAX_BODY_BYTES, middlewares=middlewares)
    app[DAEMON] = daemon
    app.router.add_post("/v1/jobs", create_job)
    app.router.add_get("/v1/jobs", list_jobs)
    app.router.add_get("/v1/jobs/{id}", get_job)
    app.router.add_post("/v1/jobs/{id}/end", end_job)
    app.router.add_post("/v1/calls", post_calls)
    app.router.add_get("/v1/summary", summary)
    from carbonwatch.daemon.sci_route import make_handler  # a model's SCI terms

    app.router.add_get("/v1/models/{model}/sci", make_handler(_daemon))
    app.router.add_get("/v1/devices", devices)
    app.router.add_get("/v1/openapi.json", openapi)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics)
    from carbonwatch.daemon.deferred_routes import add_scheduler_routes

    add_scheduler_routes(app, daemon.scheduler)
    return app


def _daemon(request: web.Request) -> AppDaemon:
    return request.app[DAEMON]  # type: ignore[return-value]


# --- jobs --------------------------------------------------------------------------------------


async def create_job(request: web.Request) -> web.Response:
    spec = bodies.new_job(await request.read())
    job_id, merged = await _daemon(request).jobs.register(spec, authz.caller(request))
    body: dict[str, Any] = {"id": job_id}
    if merged:
        body["merged"] = True
    return web.json_response(body, status=200 if merged else 201)


async def list_jobs(request: web.Request) -> web.Response:
    status = request.query.get("status")
    if status is not None and status not in JOB_STATUSES:
        raise bad(f"status: must be one of {', '.join(JOB_STATUSES)}")
    limit = validation.parse_limit(request.query.get("limit", "100"))
    rows = await _daemon(request).read(lambda s: storeops.list_jobs(s, status, limit))
    who = authz.caller(request)
    return web.json_response({"jobs": [job_view(r, who) for r in rows]})


async def get_job(request: web.Request) -> web.Response:
    job_id = request.match_info["id"]
    d = _daemon(request)
    row = await d.read(lambda s: s.job(job_id))
    if row is None:
        raise ApiError(404, f"no job with id {job_id[:64]!r}")
    from carbonwatch.footprint import job_footprint  # beside co2e_g; None: unknown

    emb, missing, marginal = await d.read(lambda s: job_footprint(s.conn, d.settings, job_id))
    return web.json_response(job_view(row, authz.caller(request)) | {
        "embodied_co2e_g": emb, "embodied_devices_without_figure": missing,
        "co2e_g_marginal": marginal})


async def end_job(request: web.Request) -> web.Response:
    d = _daemon(request)
    job_id = request.match_info["id"]
    exit_code = bodies.job_end(await request.read())
    who = authz.caller(request)
    await d.jobs.end(job_id, exit_code, who)
    row = await d.read(lambda s: s.job(job_id))
    return web.json_response(job_view(row, who))


def job_view(row: dict[str, Any], who: authz.Caller | None = None) -> dict[str, Any]:
    """The API's view of a job; another user's command line (it may hold secrets) is hidden:
    other users see totals, not command lines."""
    mine = who is None or who.may_manage(row.get("owner_uid"))
    return {
        "id": row["id"],
        "name": row["name"],
        "kind": row["kind"],
        "model": row.get("model"),
        "status": row["status"],
        "source": row["source"],
        "identity": row.get("identity"),
        "pids": row.get("pids") or [],
        "tags": row.get("tags") or {},
        "command": row.get("command") if mine else None,
        "owner_uid": row.get("owner_uid"),
        "started_s": row["started_s"],
        "ended_s": row.get("ended_s"),
        "exit_code": row.get("exit_code"),
        "energy_j": row["energy_j"],
        "energy_j_by_device": row.get("energy_by_device") or {},
        "co2e_g": row["co2e_g"],
        "cost": row.get("cost"),
        "currency": row.get("currency"),
        "calls": row.get("calls", 0),
        "calls_energy_j": row.get("calls_energy_j", 0.0),
        "between_calls_j": row.get("between_calls_j", 0.0),
        "provenance": row.get("provenance") or {},
    }


# --- calls -------------------------------------------------------------------------------------


async def post_calls(request: web.Request) -> web.Response:
    body = await request.read()
    if request.content_type == columnar.CONTENT_TYPE:  # per model, arrays of starts and ends
        batch = columnar.decode(body)
    else:
        batch = bodies.call_batch(body)
    n, batch_id = await _daemon(request).calls.accept(batch, body, authz.caller(request).uid)
    return web.json_response({"accepted": n, "batch_id": batch_id})


# --- reports -----------------------------------------------------------------------------------


async def summary(request: web.Request) -> web.Response:
    d = _daemon(request)
    group_by = request.query.get("group_by", "phase")
    if group_by not in ("phase", "model", "job"):
        raise bad("group_by: must be one of phase, model, job")
    since_s = validation.query_seconds(request.query.get("since"), "since")
    until_s = validation.query_seconds(request.query.get("until"), "until")
    if since_s is not None and until_s is not None and until_s < since_s:
        raise bad("until: must be >= since")
    groups = await d.read(lambda s: storeops.summary(s.conn, group_by, since_s, until_s))
    known = d.pricing.known
    for g in groups:
        g["currency"] = d.pricing.currency
        if not known:
            g["cost"] = None  # unknown, not zero
    return web.json_response({"group_by": group_by, "groups": groups})


async def devices(request: web.Request) -> web.Response:
    return web.json_response({"devices": _daemon(request).device_views()})


async def openapi(request: web.Request) -> web.Response:
    return web.json_response(DOCUMENT)


async def healthz(request: web.Request) -> web.Response:
    health = _daemon(request).health_view()
    return web.json_response(health, status=200 if health["ok"] else 503)


async def metrics(request: web.Request) -> web.Response:
    payload = render(_daemon(request).prometheus)
    return web.Response(body=payload, headers={"Content-Type": CONTENT_TYPE_LATEST})
