"""Inference servers' /metrics, served for real on 127.0.0.1 in their own exposition formats.

- vLLM exposes its counters through prometheus_client (``vllm/v1/metrics/loggers.py``:
  ``Counter(name="vllm:prompt_tokens", labelnames=["model_name", "engine"])`` and so on), so the
  text here is prometheus_client's own ``generate_latest`` of the same metric definitions:
  ``_total`` suffixes, ``_created`` gauges and all.
- TGI exposes its metrics through the Rust crate metrics-exporter-prometheus
  (``router/src/server.rs``); its ``formatting.rs``/``recorder.rs`` write ``# HELP``, ``# TYPE``,
  one line per series (counters with no ``_total`` suffix, histograms as ``_bucket{le=...}``,
  ``_sum`` and ``_count``, numbers in Rust's ``Display`` form) and an empty line after each family.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Callable
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

VLLM_LABELS = ["model_name", "engine"]


def vllm_text(models: dict[str, dict[str, float]], engines: int = 2) -> str:
    """vLLM's exposition for cumulative per-model figures (tokens_in, tokens_out, requests,
    busy_s), split evenly over ``engines`` engine labels as a data-parallel server reports them."""
    reg = CollectorRegistry()
    running = Gauge("vllm:num_requests_running", "Number of requests in model execution batches.",
                    labelnames=VLLM_LABELS, registry=reg)
    prompt = Counter("vllm:prompt_tokens", "Number of prefill tokens processed.",
                     labelnames=VLLM_LABELS, registry=reg)
    generation = Counter("vllm:generation_tokens", "Number of generation tokens processed.",
                         labelnames=VLLM_LABELS, registry=reg)
    success = Counter("vllm:request_success", "Count of successfully processed requests.",
                      labelnames=[*VLLM_LABELS, "finished_reason"], registry=reg)
    e2e = Histogram("vllm:e2e_request_latency_seconds",
                    "Histogram of e2e request latency in seconds.", labelnames=VLLM_LABELS,
                    buckets=[0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0], registry=reg)
    for model, figures in models.items():
        for engine in range(engines):
            labels = (model, str(engine))
            running.labels(*labels).set(1)
            prompt.labels(*labels).inc(figures.get("tokens_in", 0) / engines)
            generation.labels(*labels).inc(figures.get("tokens_out", 0) / engines)
            # vLLM splits requests by finish reason ("stop", "length", "abort")
            reqs = figures.get("requests", 0) / engines
            success.labels(*labels, "stop").inc(reqs * 0.75)
            success.labels(*labels, "length").inc(reqs * 0.25)
            success.labels(*labels, "abort")
            e2e.labels(*labels).observe(figures.get("busy_s", 0) / engines)
    return generate_latest(reg).decode()


def _rust(value: float) -> str:
    """f64/u64 as Rust's Display writes them (no trailing .0)."""
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def _tgi_histogram(name: str, help_: str, total: float, count: int, bounds: list[float]) -> str:
    lines = [f"# HELP {name} {help_}", f"# TYPE {name} histogram"]
    mean = total / count if count else 0.0
    for le in bounds:
        lines.append(f'{name}_bucket{{le="{_rust(le)}"}} {count if mean <= le else 0}')
    lines.append(f'{name}_bucket{{le="+Inf"}} {count}')
    lines.append(f"{name}_sum {_rust(total)}")
    lines.append(f"{name}_count {count}")
    return "\n".join(lines) + "\n\n"


def tgi_text(tokens_in: float, tokens_out: float, requests: int, busy_s: float) -> str:
    """TGI's exposition (one model, no model label) for cumulative figures."""
    token_bounds = [20.48 * (i + 1) for i in range(0, 100, 10)]  # max_input_tokens / 100 steps
    out = (
        "# HELP tgi_request_success Number of successful requests\n"
        "# TYPE tgi_request_success counter\n"
        f"tgi_request_success {requests}\n\n"
        "# HELP tgi_request_count Total number of requests\n"
        "# TYPE tgi_request_count counter\n"
        f"tgi_request_count {requests}\n\n"
        "# HELP tgi_queue_size Current queue size\n"
        "# TYPE tgi_queue_size gauge\n"
        "tgi_queue_size 0\n\n"
    )
    out += _tgi_histogram("tgi_request_input_length", "Input token length per request",
                          tokens_in, requests, token_bounds)
    out += _tgi_histogram("tgi_request_generated_tokens", "Generated tokens per request",
                          tokens_out, requests, token_bounds)
    out += _tgi_histogram("tgi_request_duration", "Total time spent processing the request",
                          busy_s, requests, [0.0001 * 1.5 ** (i + 1) for i in range(35)])
    return out


class ExpositionServer:
    """A real aiohttp server on 127.0.0.1 in this process (so its pid is ``os.getpid()``) that
    answers each GET /metrics with ``respond(n)`` for the n-th request (0-based) and logs what it
    served."""

    def __init__(self, respond: Callable[[int], str]) -> None:
        self.respond = respond
        self.served: list[str] = []
        self.pid = os.getpid()
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/metrics"

    async def _handle(self, request: web.Request) -> web.Response:
        text = self.respond(len(self.served))
        self.served.append(text)
        # The content type both servers send for the text format.
        return web.Response(text=text, content_type="text/plain", charset="utf-8",
                            headers={"X-Format": "0.0.4"})

    async def _start(self) -> None:
        app = web.Application()
        app.router.add_get("/metrics", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = self._runner.addresses[0][1]

    def __enter__(self) -> ExpositionServer:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
