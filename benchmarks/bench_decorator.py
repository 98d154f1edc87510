"""What ``@carbonwatch.track_inference`` adds to a call, beside codecarbon's per-task tracking.

    .venv/bin/python benchmarks/bench_decorator.py [--calls 200000] [--codecarbon-calls 300]

The client sends to a real HTTP sink in a separate process (the daemon's stand-in, so its work
does not share this process's GIL), so the figures include the background sender's share of the
interpreter, as in production. Per-call times are taken with perf_counter_ns around each call in
blocks that alternate bare and tracked calls, so drift hits both alike; "added" is tracked minus
bare at the same percentile."""

from __future__ import annotations

import argparse
import logging
import os
import platform
import socket
import statistics
import subprocess
import sys
import textwrap
import time
import timeit
import urllib.request
import warnings

from carbonwatch.client import Client

SINK = textwrap.dedent(
    """
    import sys
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Sink(BaseHTTPRequestHandler):
        def do_POST(self):
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"{}")

        def log_message(self, *args):
            pass

    ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Sink).serve_forever()
    """
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_sink() -> tuple[subprocess.Popen, str]:
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-c", SINK, str(port)])
    url = f"http://127.0.0.1:{port}"
    for _ in range(200):
        try:
            urllib.request.urlopen(urllib.request.Request(url, b"{}", method="POST"), timeout=1)
            return proc, url
        except OSError:
            time.sleep(0.02)
    proc.kill()
    raise RuntimeError("the HTTP sink did not start")


def work(x: int) -> int:
    """The wrapped call: trivial, so the figure is the decorator's own cost."""
    return x


def _pct(values: list[int], q: float) -> float:
    s = sorted(values)
    return float(s[min(int(q * len(s)), len(s) - 1)])


def per_call_ns(calls: int) -> tuple[list[int], list[int]]:
    client = CLIENT
    tracked = client.track_inference("bench", route="/predict")(work)
    clock = time.perf_counter_ns
    bare_ns: list[int] = []
    tracked_ns: list[int] = []
    block = 1000
    for _ in range(calls // block):
        for fn, out in ((work, bare_ns), (tracked, tracked_ns)):
            for i in range(block):
                t0 = clock()
                fn(i)
                out.append(clock() - t0)
    return bare_ns, tracked_ns


def work_measures_ns(calls: int) -> dict[str, float]:
    """Median per-call time (ns) of each way of recording a call, with and without work
    measures, timed one by one in alternating blocks as ``per_call_ns``."""
    client = CLIENT
    plain = client.track_inference("bench", route="/predict")(work)
    weighted = client.track_inference("bench", weight=lambda x: 32, route="/predict")(work)

    def span(i: int) -> int:
        with client.inference("bench", route="/predict"):
            return work(i)

    def span_tokens(i: int) -> int:
        with client.inference("bench", tokens_in=812, route="/predict") as call:
            out = work(i)
            call.set_tokens(tokens_out=out)
            return out

    variants = {"bare call": work, "track_inference": plain,
                "track_inference weight=callable": weighted,
                "with inference()": span, "with inference(tokens_in=) + set_tokens": span_tokens}
    times: dict[str, list[int]] = {name: [] for name in variants}
    clock = time.perf_counter_ns
    block = 1000
    for _ in range(calls // block):
        for name, fn in variants.items():
            out = times[name]
            for i in range(block):
                t0 = clock()
                fn(i)
                out.append(clock() - t0)
    return {name: _pct(v, 0.5) for name, v in times.items()}


def batched_ns(calls: int) -> tuple[float, float]:
    """Mean per call over timeit batches (no per-call timer overhead); the median batch."""
    tracked = CLIENT.track_inference("bench")(work)
    number = 10_000
    repeat = max(calls // number, 5)
    bare = timeit.repeat(lambda: work(1), number=number, repeat=repeat)
    trk = timeit.repeat(lambda: tracked(1), number=number, repeat=repeat)
    return statistics.median(bare) / number * 1e9, statistics.median(trk) / number * 1e9


def codecarbon_ns(calls: int) -> list[int]:
    warnings.simplefilter("ignore")
    from codecarbon import OfflineEmissionsTracker

    quiet = logging.getLogger("codecarbon")
    quiet.disabled = True  # it logs its start-up banner before applying log_level
    tracker = OfflineEmissionsTracker(
        country_iso_code="USA", save_to_file=False, log_level="error"
    )
    clock = time.perf_counter_ns
    out = []
    for i in range(calls):
        t0 = clock()
        tracker.start_task()
        work(i)
        tracker.stop_task()
        out.append(clock() - t0)
    return out


CLIENT: Client


def main() -> None:
    global CLIENT
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calls", type=int, default=200_000)
    ap.add_argument("--codecarbon-calls", type=int, default=300)
    args = ap.parse_args()

    sink, url = _start_sink()
    try:
        # A tight loop makes calls far faster than any model serves them; a buffer this size keeps
        # the drop path (full buffer) out of the figures. Production uses the default 100,000.
        CLIENT = Client(daemon_url=url, max_buffer=5_000_000)
        bare, tracked = per_call_ns(args.calls)
        mean_bare, mean_tracked = batched_ns(args.calls)
        measures = work_measures_ns(args.calls // 2)
        # The background sender's own cost: this process's CPU while it drains a full backlog.
        backlog = len(CLIENT._buffer)
        cpu0, wall0 = time.process_time(), time.perf_counter()
        assert CLIENT.flush(60.0), "the sink did not acknowledge every span"
        sender_cpu_ns = (time.process_time() - cpu0) / max(backlog, 1) * 1e9
        sender_rate = backlog / (time.perf_counter() - wall0)
        sent, dropped = CLIENT.sent_total, CLIENT.dropped_total
        CLIENT.close()
    finally:
        sink.kill()
    cc = codecarbon_ns(args.codecarbon_calls)

    added_median = _pct(tracked, 0.5) - _pct(bare, 0.5)
    added_p99 = _pct(tracked, 0.99) - _pct(bare, 0.99)
    cc_median = _pct(cc, 0.5)
    print(f"python {platform.python_version()} on {platform.machine()}, "
          f"{os.cpu_count()} CPUs, {platform.platform()}")
    print(f"track_inference: {len(tracked)} calls timed one by one, "
          f"{sent} spans sent to an HTTP sink, {dropped} dropped")
    print(f"  bare call            median {_pct(bare, 0.5):8.0f} ns   "
          f"p99 {_pct(bare, 0.99):8.0f} ns")
    print(f"  tracked call         median {_pct(tracked, 0.5):8.0f} ns   "
          f"p99 {_pct(tracked, 0.99):8.0f} ns")
    print(f"  added by decorator   median {added_median:8.0f} ns   p99 {added_p99:8.0f} ns")
    print(f"  added, batch mean    {mean_tracked - mean_bare:8.0f} ns "
          f"(timeit, median of batches of 10,000)")
    print(f"  background sender    {sender_cpu_ns:8.0f} ns CPU per span "
          f"({backlog} span backlog drained at {sender_rate:,.0f} spans/s)")
    print(f"work measures: {args.calls // 2} calls of each way, timed one by one "
          "(median; 'added' is minus the bare call)")
    bare_ns = measures["bare call"]
    for name, ns in measures.items():
        if name != "bare call":
            print(f"  {name:42s} median {ns:8.0f} ns   added {ns - bare_ns:8.0f} ns")
    print(f"codecarbon OfflineEmissionsTracker start_task/stop_task: {len(cc)} calls")
    print(f"  per call             median {cc_median / 1e3:8.1f} us   p99 "
          f"{_pct(cc, 0.99) / 1e3:8.1f} us")
    ratio = cc_median / max(added_median, 1.0)
    print(f"ratio: codecarbon per-task tracking / track_inference added (medians) = {ratio:,.0f}x")


if __name__ == "__main__":
    main()
