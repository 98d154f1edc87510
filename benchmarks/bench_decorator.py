"""What ``@carbonwatch.track_inference`` adds to a call, beside codecarbon's per-task tracking.

    .venv/bin/python benchmarks/bench_decorator.py [--calls 200000] [--codecarbon-calls 300]
        [--whole-calls 300000]

Two parts. The hot path (what a call waits for): the client sends to a real HTTP sink in a separate
process, per-call times as below. The whole cost (like for like with codecarbon, which does all its
work inline): a real ``carbonwatch daemon`` process (``--backend none``) and the production client
(buffer 100,000, the default), ``--whole-calls`` tracked calls made in chunks of 50,000 with a flush
after each; CPU of this thread's calls (less the bare loop), of the client's sender thread, and of
the daemon (until every batch is acknowledged after commit, and until every span has settled into
per-call energy; the daemon's idle cost over that time is included), per call, against
codecarbon's start_task/stop_task CPU per call measured in the same run.

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
from pathlib import Path

import psutil

from carbonwatch.client import Client

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_ingest import start_daemon  # noqa: E402

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


def _thread_cpu_s(thread: object) -> float:
    return time.clock_gettime(time.pthread_getcpuclockid(thread.ident))  # type: ignore[attr-defined]


def whole_cost_ns(calls: int, tmp: str) -> dict[str, float]:
    """CPU ns per call of the hot path, the sender thread and the daemon, against a real daemon."""
    import json

    proc, url = start_daemon(Path(tmp) / "whole.db", "--backend", "none")
    try:
        daemon = psutil.Process(proc.pid)
        client = Client(daemon_url=url)  # the production buffer, 100,000
        tracked = client.track_inference("bench", route="/predict")(work)
        chunk = 50_000
        hot_s = bare_s = 0.0
        sender0 = _thread_cpu_s(client._thread)
        d0 = daemon.cpu_times()
        done = 0
        while done < calls:
            n = min(chunk, calls - done)
            t0 = time.thread_time()
            for i in range(n):
                tracked(i)
            t1 = time.thread_time()
            for i in range(n):
                work(i)
            bare_s += time.thread_time() - t1
            hot_s += t1 - t0
            assert client.flush(120.0), "the daemon did not acknowledge every span"
            done += n
        d1 = daemon.cpu_times()
        sender_s = _thread_cpu_s(client._thread) - sender0
        sent, dropped = client.sent_total, client.dropped_total
        client.close()
        while True:
            with urllib.request.urlopen(f"{url}/healthz", timeout=10) as resp:
                if json.load(resp)["pending_calls"] == 0:
                    break
            time.sleep(0.2)
        d2 = daemon.cpu_times()
    finally:
        proc.terminate()
        proc.wait(60)
    ingest_s = (d1.user + d1.system) - (d0.user + d0.system)
    settle_s = (d2.user + d2.system) - (d0.user + d0.system)
    return {"calls": calls, "sent": sent, "dropped": dropped,
            "hot_ns": (hot_s - bare_s) / calls * 1e9, "sender_ns": sender_s / calls * 1e9,
            "daemon_ingest_ns": ingest_s / calls * 1e9, "daemon_settled_ns": settle_s / calls * 1e9}


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
    cpu0 = time.process_time()
    for i in range(calls):
        t0 = clock()
        tracker.start_task()
        work(i)
        tracker.stop_task()
        out.append(clock() - t0)
    global CODECARBON_CPU_NS
    CODECARBON_CPU_NS = (time.process_time() - cpu0) / max(calls, 1) * 1e9
    return out


CODECARBON_CPU_NS = 0.0


CLIENT: Client


def main() -> None:
    global CLIENT
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calls", type=int, default=200_000)
    ap.add_argument("--codecarbon-calls", type=int, default=300)
    ap.add_argument("--whole-calls", type=int, default=300_000,
                    help="calls for the whole-cost part, against a real daemon (0: skip)")
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
    whole = None
    if args.whole_calls:
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            whole = whole_cost_ns(args.whole_calls, tmp)

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
    print(f"ratio: codecarbon per-task tracking / track_inference added (medians) = {ratio:,.0f}x"
          " (hot path only: flatters us, see the whole cost below)")
    print(f"  codecarbon CPU per call (process time) {CODECARBON_CPU_NS / 1e3:8.1f} us")
    if whole is not None:
        total = whole["hot_ns"] + whole["sender_ns"] + whole["daemon_ingest_ns"]
        settled = whole["hot_ns"] + whole["sender_ns"] + whole["daemon_settled_ns"]
        print(f"whole cost, production client (buffer 100,000) and a real daemon: "
              f"{whole['calls']:,} calls, {whole['sent']:,} acknowledged, "
              f"{whole['dropped']} dropped")
        print(f"  hot path (calls less the bare loop)  {whole['hot_ns']:8.0f} ns CPU per call")
        print(f"  client sender thread                 {whole['sender_ns']:8.0f} ns CPU per call")
        print(f"  daemon, until acknowledged           {whole['daemon_ingest_ns']:8.0f} ns CPU "
              "per call")
        print(f"  daemon, until settled                {whole['daemon_settled_ns']:8.0f} ns CPU "
              "per call")
        print(f"  total to acknowledged {total / 1e3:.2f} us, to settled {settled / 1e3:.2f} us "
              "CPU per call")
        print(f"ratio: codecarbon CPU per call / carbonwatch whole CPU per call (to settled) = "
              f"{CODECARBON_CPU_NS / settled:,.1f}x")


if __name__ == "__main__":
    main()
