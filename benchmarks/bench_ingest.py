"""Call ingestion through the daemon's HTTP API, end to end: a real daemon process (replaying the
H200 trace, so it samples while it ingests), clients POSTing batches of spans; every reply means
the batch is committed. Reports calls/s, request latency p50/p99, the daemon's CPU (and calls per
CPU-second, which moves less than calls/s when other work shares the machine), and how long the
spans then take to settle into per-call energy.

    .venv/bin/python benchmarks/bench_ingest.py [--seconds 10] [--batch 5000] [--clients 2]
        [--form columnar|objects] [--tokens] [--raw-log N]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import platform
import re
import sqlite3
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import aiohttp
import psutil

from carbonwatch.client_columnar import CONTENT_TYPE
from carbonwatch.collectors.trace import load_trace

ROOT = Path(__file__).resolve().parent.parent
TRACE = ROOT / "tests" / "fixtures" / "h200-shared-gpu"
PID = 438  # the trace's inference server


def start_daemon(
    db: Path, *extra: str, extra_env: dict[str, str] | None = None
) -> tuple[subprocess.Popen[str], str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CARBONWATCH_")}
    env.update(extra_env or {})
    proc = subprocess.Popen(  # noqa: S603
        [sys.executable, "-m", "carbonwatch", "daemon", "--db", str(db), "--port", "0",
         "--backend", f"replay:{TRACE}", *extra],
        stderr=subprocess.PIPE, text=True, env=env,
    )
    assert proc.stderr is not None
    for line in proc.stderr:
        match = re.search(r"listening on (http://\S+)", line)
        if match:
            threading.Thread(target=proc.stderr.read, daemon=True).start()  # keep the pipe empty
            return proc, match.group(1)
    raise RuntimeError("daemon did not start")


def bodies(batch: int, count: int, end_s: float, tokens: bool = False,
           columnar: bool = False) -> list[bytes]:
    """Pre-encoded request bodies, so the client spends its CPU on HTTP, not on json.dumps.

    The spans lie in the minute before ``end_s`` (the replay's start), like calls a busy service
    reported moments ago: they settle as soon as the settle window has passed. ``tokens``: each
    call also carries weight, tokens_in and tokens_out, as an LLM service's would. ``columnar``:
    the columnar form (``application/vnd.carbonwatch.calls+json``), as the Python client sends."""
    out = []
    step_s = 60.0 / (batch * count)
    for b in range(count):
        base = end_s - 60.0 + b * batch * step_s
        calls = [{"model": "bench", "start": base + i * step_s,
                  "end": base + i * step_s + step_s * 0.8, "pid": PID,
                  "tags": {"batch": 1 << (i % 11)}} for i in range(batch)]
        if tokens:
            for i, call in enumerate(calls):
                call.update(weight=float(1 << (i % 11)), tokens_in=200 + i % 1800,
                            tokens_out=1 + i % 400)
        if columnar:
            out.append(json.dumps({"models": as_columns(calls)}).encode())
        else:
            out.append(json.dumps({"calls": calls}).encode())
    return out


def as_columns(calls: list[dict]) -> list[dict]:
    """The calls in the columnar form: one group per model, pid and tags, as the client sends."""
    groups: dict[str, dict] = {}
    for call in calls:
        key = json.dumps([call["model"], call.get("pid"), call.get("tags")])
        group = groups.setdefault(key, {"model": call["model"], "pid": call.get("pid"),
                                        "tags": call.get("tags"), "start": [], "end": []})
        group["start"].append(call["start"])
        group["end"].append(call["end"])
        for name in ("weight", "tokens_in", "tokens_out"):
            if name in call:
                group.setdefault(name, []).append(call[name])
    for group in groups.values():  # times packed as base64 float64s, as the client sends them
        for name in ("start", "end"):
            group[name] = base64.b64encode(
                struct.pack(f"<{len(group[name])}d", *group[name])).decode()
    return list(groups.values())


async def load(url: str, payloads: list[bytes], batch: int, seconds: float,
               clients: int, content_type: str = "application/json"
               ) -> tuple[int, list[float], float]:
    latencies: list[float] = []
    sent = 0
    deadline = time.monotonic() + seconds

    async def client(session: aiohttp.ClientSession, offset: int) -> None:
        nonlocal sent
        i = offset
        while time.monotonic() < deadline:
            t = time.perf_counter()
            async with session.post(f"{url}/v1/calls", data=payloads[i % len(payloads)],
                                    headers={"Content-Type": content_type}) as resp:
                body = await resp.json()
            latencies.append(time.perf_counter() - t)
            if resp.status != 200 or body["accepted"] != batch:
                raise RuntimeError(f"refused: {resp.status} {body}")
            sent += batch
            i += clients

    started = time.perf_counter()
    async with aiohttp.ClientSession() as session:
        await asyncio.gather(*(client(session, k) for k in range(clients)))
    return sent, latencies, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--batch", type=int, default=5000, help="calls per request (<= 10000)")
    parser.add_argument("--clients", type=int, default=2, help="concurrent requests")
    parser.add_argument("--raw-log", type=int, default=None,
                        help="raw call log rows kept (default: the setting's default, 100000)")
    parser.add_argument("--tokens", action="store_true",
                        help="calls carry weight, tokens_in and tokens_out")
    parser.add_argument("--form", choices=["objects", "columnar"], default="columnar",
                        help="the request form (the Python client sends columnar)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        extra_env = {}
        if args.raw_log is not None:
            extra_env["CARBONWATCH_RAW_CALL_LOG_MAX"] = str(args.raw_log)
        proc, url = start_daemon(Path(tmp) / "bench.db", extra_env=extra_env)
        try:
            daemon = psutil.Process(proc.pid)
            columnar = args.form == "columnar"
            payloads = bodies(args.batch, 16, load_trace(TRACE).start_s, args.tokens, columnar)
            content_type = CONTENT_TYPE if columnar else "application/json"
            asyncio.run(load(url, payloads[:1], args.batch, 0.5, 1, content_type))  # warm up
            cpu0, own0 = daemon.cpu_times(), time.process_time()
            sent, latencies, elapsed = asyncio.run(
                load(url, payloads, args.batch, args.seconds, args.clients, content_type))
            cpu1, own_s = daemon.cpu_times(), time.process_time() - own0
            settle_t = time.perf_counter()

            async def pending() -> int:
                async with aiohttp.ClientSession() as s, s.get(f"{url}/healthz") as r:
                    return (await r.json())["pending_calls"]

            while asyncio.run(pending()) > 0:
                time.sleep(0.2)
            settled_s = time.perf_counter() - settle_t
            rss_mb = daemon.memory_info().rss / 2**20
            time.sleep(2.0)  # the raw log writes when the writer is idle: give it a moment
            with sqlite3.connect(f"file:{Path(tmp) / 'bench.db'}?mode=ro", uri=True) as conn:
                written, kept = conn.execute("SELECT COALESCE(MAX(id), 0), COUNT(*) FROM calls"
                                             ).fetchone()
        finally:
            proc.terminate()
            proc.wait(60)

    cpu_s = (cpu1.user + cpu1.system) - (cpu0.user + cpu0.system)
    q = statistics.quantiles(latencies, n=100)
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"Python {platform.python_version()}")
    print(f"ingest: {sent} calls in {len(latencies)} requests of {args.batch} over {elapsed:.1f} s"
          f" with {args.clients} concurrent clients, {args.form} form"
          + (", each call with weight, tokens_in, tokens_out" if args.tokens else ""))
    print(f"  throughput {sent / elapsed:,.0f} calls/s ({len(latencies) / elapsed:.1f} req/s)")
    print(f"  latency p50 {q[49] * 1e3:.1f} ms, p99 {q[98] * 1e3:.1f} ms per request")
    print(f"  daemon CPU {cpu_s / elapsed * 100:.0f} % of one core while ingesting "
          f"({sent / cpu_s:,.0f} calls per daemon CPU-second, {cpu_s / sent * 1e6:.1f} us a call);"
          f" RSS {rss_mb:.0f} MB")
    print(f"  load generator (this process, bodies pre-encoded): {own_s / elapsed * 100:.0f} % of "
          f"one core ({own_s / sent * 1e6:.2f} us a call); the machine's load average "
          f"{os.getloadavg()[0]:.2f}")
    if args.raw_log == 0:
        print("  raw call log: off")
    else:
        print(f"  raw call log: {written:,} rows written ({written / sent * 100:.1f} % of the "
              f"calls; past its share of the writer it sheds the rest), {kept:,} kept")
    print(f"  all spans settled into per-call energy {settled_s:.1f} s after the last reply "
          "(the settle window is 5 s)")


if __name__ == "__main__":
    main()
