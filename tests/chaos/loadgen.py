"""Load generator for the load experiment, run as its own process (so that the clients do not
share an interpreter with the test): ``python loadgen.py URL CLIENTS SECONDS TRACE_START_S SPEED``.

Each client posts call batches to URL/v1/calls in a loop, one at a time, until SECONDS have
passed; span times follow the replayed trace's clock. Prints one JSON object: every
acknowledged batch (id -> calls), refusals by status, latency percentiles."""

from __future__ import annotations

import asyncio
import json
import sys
import time

import aiohttp

CALLS_PER_BATCH = 20


async def client(session, url, deadline, trace_start_s, speed, t0, out):
    while time.monotonic() < deadline:
        now_s = trace_start_s + (time.monotonic() - t0) * speed
        calls = [{"model": "load-model", "start": now_s - 0.05 + i * 0.001,
                  "end": now_s - 0.04 + i * 0.001, "pid": 438, "tags": {"i": i}}
                 for i in range(CALLS_PER_BATCH)]
        started = time.monotonic()
        try:
            async with session.post(url, json={"calls": calls}) as resp:
                body = await resp.json(content_type=None)
                status = resp.status
        except (aiohttp.ClientError, TimeoutError) as exc:
            status, body = 0, {"error": type(exc).__name__}
        out["latencies"].append(time.monotonic() - started)
        if status == 200:
            out["acks"][body["batch_id"]] = body["accepted"]
        else:
            out["refused"][str(status)] = out["refused"].get(str(status), 0) + 1
            out["messages"].setdefault(str(status), str(body)[:200])


async def main(url, clients, seconds, trace_start_s, speed):
    out = {"acks": {}, "refused": {}, "messages": {}, "latencies": []}
    connector = aiohttp.TCPConnector(limit=clients)
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        t0 = time.monotonic()
        deadline = t0 + seconds
        await asyncio.gather(*(client(session, url + "/v1/calls", deadline, trace_start_s,
                                      speed, t0, out) for _ in range(clients)))
        wall_s = time.monotonic() - t0
    lat = sorted(out.pop("latencies"))

    def pct(p):
        return lat[min(len(lat) - 1, int(p / 100 * len(lat)))] if lat else None

    out.update(requests=len(lat), wall_s=wall_s, p50_s=pct(50), p99_s=pct(99),
               max_s=lat[-1] if lat else None)
    print(json.dumps(out))


if __name__ == "__main__":
    url, clients, seconds, start_s, speed = sys.argv[1:6]
    asyncio.run(main(url, int(clients), float(seconds), float(start_s), float(speed)))
