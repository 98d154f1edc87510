"""Decode + validate per call of ``POST /v1/calls`` bodies, in process: the CPU the daemon spends
turning a request body into checked ``CallSpan``s before anything is ingested (no HTTP, no store).

Bodies as ``bench_ingest.py`` sends them (model, start, end, pid, one tag; ``--tokens`` adds
weight, tokens_in and tokens_out), 5,000 calls each. Works on any tree: where
``carbonwatch.daemon.bodies`` is missing (before issue 16's msgspec structs), the objects form is
read as it was then (``json.loads`` + the hand-written checks), so "before" is the same command
run with PYTHONPATH pointing at a copy of main.

    .venv/bin/python benchmarks/bench_validate.py [--batch 5000] [--repeat 30] [--tokens]
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import platform
import statistics
import struct
import time
from collections.abc import Callable

from carbonwatch.daemon import columnar, validation

try:  # after issue 16: the msgspec structs
    from carbonwatch.daemon import bodies

    def objects(body: bytes) -> object:
        return bodies.call_batch(body)

    FORM = "msgspec structs (daemon/bodies.py)"
except ImportError:  # before: json.loads and the hand-written validator
    def objects(body: bytes) -> object:
        return validation.call_batch(validation.parse_json(  # type: ignore[attr-defined]
            body, check_nesting=False, nonfinite_to_validator=True))

    FORM = "json.loads + hand-written checks (daemon/validation.py)"


def calls(batch: int, tokens: bool) -> list[dict]:
    out = []
    for i in range(batch):
        start = 1_764_000_000.0 + i * 0.0123
        call: dict = {"model": "bench", "start": start, "end": start + 0.01, "pid": 438,
                      "tags": {"batch": 1 << (i % 11)}}
        if tokens:
            call.update(weight=float(1 << (i % 11)), tokens_in=200 + i % 1800,
                        tokens_out=1 + i % 400)
        out.append(call)
    return out


def columnar_body(cs: list[dict]) -> bytes:
    groups: dict[str, dict] = {}
    for call in cs:
        key = json.dumps([call["model"], call["pid"], call["tags"]])
        group = groups.setdefault(key, {"model": call["model"], "pid": call["pid"],
                                        "tags": call["tags"], "start": [], "end": []})
        group["start"].append(call["start"])
        group["end"].append(call["end"])
        for name in ("weight", "tokens_in", "tokens_out"):
            if name in call:
                group.setdefault(name, []).append(call[name])
    for group in groups.values():
        for name in ("start", "end"):
            group[name] = base64.b64encode(
                struct.pack(f"<{len(group[name])}d", *group[name])).decode()
    return json.dumps({"models": list(groups.values())}).encode()


def per_call_us(decode: Callable[[bytes], object], body: bytes, n: int, repeat: int) -> float:
    """Median CPU time per call over ``repeat`` decodes of one body (after one warm-up)."""
    decode(body)
    samples = []
    for _ in range(repeat):
        t0 = time.process_time()
        decode(body)
        samples.append((time.process_time() - t0) / n * 1e6)
    return statistics.median(samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=5000)
    parser.add_argument("--repeat", type=int, default=30)
    parser.add_argument("--tokens", action="store_true")
    args = parser.parse_args()
    cs = calls(args.batch, args.tokens)
    obj_body = json.dumps({"calls": cs}).encode()
    col_body = columnar_body(cs)
    obj_us = per_call_us(objects, obj_body, args.batch, args.repeat)
    col_us = per_call_us(columnar.decode, col_body, args.batch, args.repeat)
    print(f"python {platform.python_version()}, {os.cpu_count()} CPUs, load average "
          f"{os.getloadavg()[0]:.2f}; {args.batch} calls a body"
          f"{', with weight and tokens' if args.tokens else ''}")
    print(f"objects form ({FORM}): {obj_us:.2f} us CPU per call")
    print(f"columnar form (packed times): {col_us:.2f} us CPU per call")


if __name__ == "__main__":
    main()
