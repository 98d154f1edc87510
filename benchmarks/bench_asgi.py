"""What ``CarbonwatchMiddleware`` adds to each request of a Starlette app.

    .venv/bin/python benchmarks/bench_asgi.py [--requests 20000]

The app is driven in-process through ASGI (no network, so the figure is the middleware's own cost,
not the server's or the socket's): a JSON completion with OpenAI ``usage``, a 20-event
``text/event-stream`` with usage in its last event, and a plain-text route. Requests alternate
between the bare app and the same app wrapped, in blocks, so drift hits both alike; "added" is
wrapped minus bare at the same percentile. The middleware reports through a real client to a real
HTTP sink in a separate process (bench_decorator's), as in production."""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import statistics
import time
from collections.abc import AsyncIterator
from typing import Any

from bench_decorator import _pct, _start_sink
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, StreamingResponse
from starlette.routing import Route

from carbonwatch.client import Client
from carbonwatch.integrations.asgi import CarbonwatchMiddleware

USAGE = {"prompt_tokens": 512, "completion_tokens": 128, "total_tokens": 640}


def build_app() -> Starlette:
    async def completion(request: Request) -> JSONResponse:
        return JSONResponse({"id": "cmpl-1", "object": "text_completion", "usage": USAGE,
                             "choices": [{"index": 0, "text": "x" * 400}]})

    async def stream(request: Request) -> StreamingResponse:
        async def events() -> AsyncIterator[bytes]:
            for i in range(20):
                yield f'data: {{"choices": [{{"text": "t{i}"}}], "usage": null}}\n\n'.encode()
            yield f'data: {{"choices": [], "usage": {json.dumps(USAGE)}}}\n\n'.encode()
            yield b"data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    async def plain(request: Request) -> PlainTextResponse:
        return PlainTextResponse("ok")

    return Starlette(routes=[Route("/v1/completions", completion, methods=["POST"]),
                             Route("/v1/stream", stream), Route("/plain", plain)])


def _scope(method: str, path: str) -> dict[str, Any]:
    return {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method,
            "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": b"",
            "root_path": "", "headers": [(b"host", b"bench")], "client": ("127.0.0.1", 1),
            "server": ("127.0.0.1", 80)}


async def _one(app: Any, method: str, path: str) -> int:
    sent = False

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": b"{}", "more_body": False}
        await asyncio.Event().wait()  # as a server does: no disconnect while the client stays
        raise AssertionError("unreachable")

    async def send(message: dict[str, Any]) -> None:
        pass

    t0 = time.perf_counter_ns()
    await app(_scope(method, path), receive, send)
    return time.perf_counter_ns() - t0


async def _measure(bare: Any, wrapped: Any, method: str, path: str, n: int,
                   block: int = 200) -> tuple[list[int], list[int]]:
    b_times: list[int] = []
    w_times: list[int] = []
    for _ in range(50):  # warm both paths
        await _one(bare, method, path)
        await _one(wrapped, method, path)
    while len(b_times) < n:
        for _ in range(block):
            b_times.append(await _one(bare, method, path))
        for _ in range(block):
            w_times.append(await _one(wrapped, method, path))
    return b_times, w_times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=20000, help="per route and variant")
    args = parser.parse_args()
    sink, url = _start_sink()
    client = Client(url, max_buffer=10**7)
    try:
        bare = build_app()
        wrapped = CarbonwatchMiddleware(build_app(), model="bench-llm", client=client)
        print(f"Python {platform.python_version()} on {platform.machine()}, "
              f"{args.requests} requests per route and variant; times per request")
        print(f"{'route':<22}{'bare p50':>10}{'wrapped p50':>13}{'added p50':>11}"
              f"{'added p99':>11}{'added mean':>12}")
        for method, path in (("POST", "/v1/completions"), ("GET", "/v1/stream"),
                             ("GET", "/plain")):
            b, w = asyncio.run(_measure(bare, wrapped, method, path, args.requests))
            add50 = _pct(w, 0.5) - _pct(b, 0.5)
            add99 = _pct(w, 0.99) - _pct(b, 0.99)
            mean = statistics.fmean(w) - statistics.fmean(b)
            print(f"{method + ' ' + path:<22}{_pct(b, 0.5) / 1e3:>8.1f}us"
                  f"{_pct(w, 0.5) / 1e3:>11.1f}us{add50 / 1e3:>9.1f}us{add99 / 1e3:>9.1f}us"
                  f"{mean / 1e3:>10.1f}us")
        client.flush(30)
        print(f"calls recorded and acknowledged by the sink: {client.sent_total}, "
              f"dropped: {client.dropped_total}")
    finally:
        client.close()
        sink.kill()
        sink.wait()


if __name__ == "__main__":
    main()
