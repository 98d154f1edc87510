"""A small OpenAI-style Starlette app with carbonwatch's middleware, for the ASGI tests and the
benchmark: a JSON completion with ``usage``, a streamed one (``text/event-stream`` with usage in
its last event, as OpenAI's ``stream_options: {"include_usage": true}``), a route with no usage,
one that fails, and a large JSON body."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import AsyncIterator
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, StreamingResponse
from starlette.routing import Route

from carbonwatch.client import Client
from carbonwatch.integrations.asgi import CarbonwatchMiddleware

MODEL = "llm-test"


def completion_usage(prompt: str, max_tokens: int) -> dict[str, int]:
    """The app's "tokenizer": one token per word in, ``max_tokens`` out."""
    return {"prompt_tokens": len(prompt.split()), "completion_tokens": max_tokens,
            "total_tokens": len(prompt.split()) + max_tokens}


def make_app(client: Client, stream_gate: threading.Event | None = None,
             max_body_bytes: int = 1 << 20) -> Any:
    async def completions(request: Request) -> JSONResponse:
        body = await request.json()
        usage = completion_usage(body["prompt"], body["max_tokens"])
        return JSONResponse({"id": "cmpl-1", "object": "text_completion",
                             "choices": [{"index": 0, "text": "ok", "finish_reason": "stop"}],
                             "usage": usage})

    async def stream(request: Request) -> StreamingResponse:
        prompt, max_tokens = request.query_params["prompt"], int(request.query_params["n"])

        async def events() -> AsyncIterator[bytes]:
            for i in range(max_tokens):
                chunk = {"id": "cmpl-2", "choices": [{"index": 0, "text": f"t{i}"}],
                         "usage": None}
                yield f"data: {json.dumps(chunk)}\n\n".encode()
                if i == 0 and stream_gate is not None:
                    # The test lets the stream go on only once it holds the first event: a
                    # middleware that buffered the stream would deadlock here.
                    while not stream_gate.is_set():
                        await asyncio.sleep(0.01)
            final = {"id": "cmpl-2", "choices": [], "usage": completion_usage(prompt, max_tokens)}
            yield f"data: {json.dumps(final)}\n\n".encode()
            yield b"data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    async def item(request: Request) -> PlainTextResponse:
        return PlainTextResponse(f"item {request.path_params['item_id']}")

    async def boom(request: Request) -> PlainTextResponse:
        raise RuntimeError("model crashed")

    async def big(request: Request) -> JSONResponse:
        return JSONResponse({"pad": "x" * (2 * max_body_bytes),
                             "usage": {"prompt_tokens": 5, "completion_tokens": 5}})

    app = Starlette(routes=[
        Route("/v1/completions", completions, methods=["POST"]),
        Route("/v1/stream", stream),
        Route("/items/{item_id}", item),
        Route("/boom", boom),
        Route("/big", big),
    ])
    app.add_middleware(CarbonwatchMiddleware, model=MODEL, client=client,
                       max_body_bytes=max_body_bytes)
    return app
