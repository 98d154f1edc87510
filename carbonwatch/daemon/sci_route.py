"""``GET /v1/models/{model}/sci?functional_unit=calls|1k-output-tokens|training-run``: a model's
Software Carbon Intensity terms (carbonwatch.exports.sci), read from the store like the summary."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from carbonwatch.daemon.validation import ApiError
from carbonwatch.errors import InputError
from carbonwatch.exports.sci import FUNCTIONAL_UNITS, sci
from carbonwatch.statement import model_statement

MAX_MODEL_CHARS = 256


def make_handler(daemon_of: Any) -> Any:
    async def model_sci(request: web.Request) -> web.Response:
        d = daemon_of(request)
        model = request.match_info["model"]
        unit = request.query.get("functional_unit", "calls")
        if unit not in FUNCTIONAL_UNITS:
            raise ApiError(400, f"functional_unit: must be one of {', '.join(FUNCTIONAL_UNITS)}")
        if len(model) > MAX_MODEL_CHARS:
            raise ApiError(400, f"model: at most {MAX_MODEL_CHARS} characters")
        try:
            statement = await d.read(lambda s: model_statement(s, model, d.settings))
        except InputError as exc:
            raise ApiError(404, str(exc)) from None
        return web.json_response(sci(statement, unit))

    return model_sci
