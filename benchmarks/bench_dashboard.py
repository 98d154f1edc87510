"""Dashboard benchmark: a busy node's month in the store, timed in a real Chromium.

The store: 30 days of an 8-GPU node (plus its CPU) in 1-minute rollups, 30 training jobs and 20
inference services (50 jobs, 20 models), 50 million calls in the call rollups (~2.6 million
energy_minute rows, ~0.7 million call_minute rows), written through the same triggers as the
daemon's writes. It is built once (a few minutes) and reused while the spec and schema match.

Prints, per page: time to a ready page (navigation until every graph is drawn and no callback is
pending), and per callback the round trip the browser saw (request to response: query, figure,
JSON, HTTP). Targets: ready <= 2 s, callback <= 300 ms.

    .venv/bin/python benchmarks/bench_dashboard.py [--db PATH] [--chromium /usr/bin/chromium]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import defaultdict
from dataclasses import asdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from seed import SeedSpec, seed_store  # noqa: E402

from carbonwatch.dashboard import data  # noqa: E402
from carbonwatch.store.migrations import MIGRATIONS  # noqa: E402

SPEC = SeedSpec(days=30, gpus=8, models=tuple(f"model-{i:02d}" for i in range(20)),
                training_jobs=30, calls=50_000_000)
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync"]
READY_TARGET_S, CALLBACK_TARGET_MS = 2.0, 300.0


def build_store(path: Path) -> None:
    stamp = path.with_suffix(".spec.json")
    want = json.dumps({"spec": asdict(SPEC), "schema": len(MIGRATIONS)}, sort_keys=True)
    if path.exists() and stamp.exists() and stamp.read_text() == want:
        print(f"store: reusing {path}")
        return
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    t0 = time.perf_counter()
    result = seed_store(path, SPEC)
    print(f"store: built {path} in {time.perf_counter() - t0:.0f} s: {result.energy_rows:,} "
          f"energy_minute rows, {result.call_rows:,} call_minute rows, "
          f"{path.stat().st_size / 1e6:,.0f} MB")
    stamp.write_text(want)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(db: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-c", "from carbonwatch.cli import main; main()", "dashboard", "--db",
         str(db), "--port", str(port), "--refresh", "3600"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        env={**os.environ, "XDG_CONFIG_HOME": tempfile.gettempdir()})
    url = f"http://127.0.0.1:{port}"
    for _ in range(300):
        try:
            urllib.request.urlopen(url + "/", timeout=2).close()  # noqa: S310 - loopback
            return proc, url
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise SystemExit("dashboard did not start")


class Recorder:
    """Round trips of /_dash-update-component requests, by the outputs they update."""

    def __init__(self, page) -> None:
        self.inflight: set = set()
        self.times: list[tuple[str, float]] = []
        page.on("request", self._start)
        page.on("requestfinished", self._end)
        page.on("requestfailed", lambda r: self.inflight.discard(r))

    def _start(self, request) -> None:
        if "_dash-update-component" in request.url:
            self.inflight.add(request)

    def _end(self, request) -> None:
        if request in self.inflight:
            self.inflight.discard(request)
            timing = request.timing
            output = (request.post_data_json or {}).get("output", "?")
            self.times.append((output.split("@")[0][:60], timing["responseEnd"]))

    def wait_idle(self, page, quiet_ms: int = 150, timeout_s: float = 30.0) -> None:
        deadline = time.monotonic() + timeout_s
        idle_since = None
        while time.monotonic() < deadline:
            page.wait_for_timeout(20)
            if self.inflight or page.locator("[data-dash-is-loading='true']").count():
                idle_since = None
            elif idle_since is None:
                idle_since = time.monotonic()
            elif (time.monotonic() - idle_since) * 1000 >= quiet_ms:
                return
        raise TimeoutError("callbacks still pending")


def ready(page, rec: Recorder, graphs: list[str]) -> None:
    for graph_id in graphs:
        page.wait_for_function(
            "id => { const gd = document.querySelector('#' + id + ' .js-plotly-plot');"
            " return gd && gd._fullLayout; }", arg=graph_id, timeout=60_000)
    rec.wait_idle(page)


def bench_browser(url: str, chromium: str
                  ) -> tuple[list[tuple[str, float]], list[tuple[str, float]]]:
    from playwright.sync_api import sync_playwright

    pages = [("overview", "/", ["overview-totals", "overview-cumulative"]),
             ("models", "/models", ["models-trend"]), ("jobs", "/jobs", []),
             ("job (8-GPU training)", "/jobs/train005", ["job-power", "job-shares"]),
             ("job (service)", "/jobs/svc000", ["job-power"]),
             ("grid", "/grid", ["grid-intensity"]), ("devices", "/devices", ["devices-power"])]
    ready_s: list[tuple[str, float]] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1366, "height": 900})
        rec = Recorder(page)
        page.goto(url + "/")  # warm-up: browser cache of the JS bundles, server imports
        ready(page, rec, ["overview-totals"])
        rec.times.clear()
        for name, path, graphs in pages:
            t0 = time.perf_counter()
            page.goto(url + path)
            if path == "/jobs":
                page.locator("#jobs-table a").first.wait_for(timeout=60_000)
            ready(page, rec, graphs)
            ready_s.append((name, time.perf_counter() - t0))
        page.goto(url + "/")
        ready(page, rec, ["overview-totals"])
        for label in ("Last 6 hours", "Last 24 hours", "Last 7 days", "Last 30 days",
                      "All recorded"):
            t0 = time.perf_counter()
            page.get_by_text(label, exact=True).click()
            rec.wait_idle(page)
            ready_s.append((f"overview -> {label}", time.perf_counter() - t0))
        for metric in ("Energy", "Cost", "gCO2e"):
            t0 = time.perf_counter()
            page.locator("#overview-metric").get_by_text(metric, exact=True).click()
            rec.wait_idle(page)
            ready_s.append((f"overview metric -> {metric}", time.perf_counter() - t0))
        browser.close()
    return ready_s, rec.times


def bench_queries(db: Path) -> None:
    print("\ndata layer alone (median of 3, ms):")
    calls = {
        "overview": lambda k: data.overview(db, k, None),
        "models": lambda k: data.models(db, k, None),
        "model_trend": lambda k: data.model_trend(db, "model-00", k, None),
        "devices": lambda k: data.devices(db, k, None),
        "grid": lambda k: data.grid(db, k, None),
    }
    keys = [k for k, _, _ in data.RANGES]
    print(f"  {'':<12}" + "".join(f"{k:>8}" for k in keys))
    for name, fn in calls.items():
        row = []
        for key in keys:
            times = []
            for _ in range(3):
                t0 = time.perf_counter()
                fn(key)
                times.append((time.perf_counter() - t0) * 1000)
            row.append(statistics.median(times))
        print(f"  {name:<12}" + "".join(f"{v:8.1f}" for v in row))
    for name, fn in (("jobs", lambda: data.jobs(db)),
                     ("job train005", lambda: data.job_detail(db, "train005")),
                     ("status", lambda: data.store_status(db))):
        times = []
        for _ in range(3):
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1000)
        print(f"  {name:<12}{statistics.median(times):8.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", type=Path,
                        default=Path(tempfile.gettempdir()) / "carbonwatch-bench-dashboard.db")
    parser.add_argument("--chromium", default=os.environ.get("CARBONWATCH_CHROMIUM",
                                                             "/usr/bin/chromium"))
    args = parser.parse_args()
    build_store(args.db)
    proc, url = start_server(args.db)
    try:
        ready_s, callbacks = bench_browser(url, args.chromium)
    finally:
        proc.terminate()
        proc.wait(10)
    print(f"\ntime to a ready page (target <= {READY_TARGET_S:.0f} s):")
    for name, seconds in ready_s:
        flag = "" if seconds <= READY_TARGET_S else "  OVER"
        print(f"  {name:<32}{seconds:7.2f} s{flag}")
    by_output: dict[str, list[float]] = defaultdict(list)
    for output, ms in callbacks:
        by_output[output].append(ms)
    print(f"\ncallback round trips in the browser (target <= {CALLBACK_TARGET_MS:.0f} ms):")
    print(f"  {'output':<62}{'n':>4}{'median':>9}{'max':>9}")
    for output, times in sorted(by_output.items()):
        flag = "" if max(times) <= CALLBACK_TARGET_MS else "  OVER"
        print(f"  {output:<62}{len(times):>4}{statistics.median(times):9.0f}"
              f"{max(times):9.0f}{flag}")
    bench_queries(args.db)


if __name__ == "__main__":
    main()
