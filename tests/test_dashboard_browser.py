"""The dashboard in a real headless Chromium, driven by playwright, against ``carbonwatch
dashboard`` servers running as subprocesses: a seeded store, an empty one, a missing and a corrupt
file, a store a live process keeps writing, and one a writer holds locked.

Screenshots land in test-artifacts/ (gitignored). Without a Chromium the tests skip, saying why.
"""

from __future__ import annotations

import contextlib
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from browser_helpers import NO_CHROMIUM, Server, find_chromium, launch_chromium, serving
from browser_helpers import no_traceback as _no_traceback
from browser_helpers import screenshot as _shot
from seed import SeedSpec, seed_store

from carbonwatch.store import open_store

SPEC = SeedSpec(days=2.0, gpus=4, training_jobs=6, calls=1_500_000, zones=("CISO", "ERCO"))

sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
CHROMIUM = find_chromium()
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason=NO_CHROMIUM)


@pytest.fixture(scope="module")
def stores(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("stores")
    paths = {name: base / name / "carbonwatch.db" for name in
             ("seeded", "empty", "missing", "corrupt", "live", "locked")}
    for path in paths.values():
        path.parent.mkdir()
    seed_store(paths["seeded"], SPEC)
    open_store(paths["empty"]).close()
    paths["corrupt"].write_bytes(b"definitely not SQLite " * 400)
    seed_store(paths["live"], SeedSpec(days=0.25, gpus=1, training_jobs=1, calls=10_000,
                                       deferred=False))
    seed_store(paths["locked"], SeedSpec(days=0.25, gpus=1, training_jobs=1, calls=10_000))
    return paths


@pytest.fixture(scope="module")
def servers(stores: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
            ) -> Iterator[dict[str, Server]]:
    home = tmp_path_factory.mktemp("home")
    with serving({name: Server(path, home, refresh_s=1.0 if name in ("live", "locked") else 30.0)
                  for name, path in stores.items()}) as running:
        yield running


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    with sync_api.sync_playwright() as p:
        chromium = launch_chromium(p, CHROMIUM)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1366, "height": 900})
    page = context.new_page()
    yield page
    context.close()


def _wait_graph(page, graph_id: str, timeout_ms: int = 20_000) -> list[dict]:
    page.wait_for_function(
        "id => { const gd = document.querySelector('#' + id + ' .js-plotly-plot');"
        " return gd && gd.data && gd.data.length > 0 && gd._fullLayout; }",
        arg=graph_id, timeout=timeout_ms)
    return _traces(page, graph_id)


def _traces(page, graph_id: str) -> list[dict]:
    return page.evaluate(
        "id => document.querySelector('#' + id + ' .js-plotly-plot').data.map("
        "t => ({name: t.name, x: t.x, y: t.y, customdata: t.customdata}))", graph_id)


def _totals(page) -> dict[str, dict[str, float]]:
    """The overview's bar figure as {metric: {phase: unrounded store value}}."""
    return {t["name"]: dict(zip(t["x"], t["customdata"], strict=True))
            for t in _wait_graph(page, "overview-totals")}


_TOTALS_JSON = ("() => JSON.stringify(document.querySelector('#overview-totals .js-plotly-plot')"
                ".data.map(t => t.customdata))")


@contextlib.contextmanager
def _totals_change(page) -> Iterator[None]:
    """Wait, after the block, until the overview's totals differ from before it."""
    old = page.evaluate(_TOTALS_JSON)
    yield
    page.wait_for_function(f"old => ({_TOTALS_JSON})() !== old", arg=old, timeout=20_000)


def _sql_totals(path: Path, start: int | None, end: int | None, zone: str | None = None
                ) -> dict[str, dict[str, float]]:
    """Totals computed independently: plain SQL over the minute rows."""
    with sqlite3.connect(path) as conn:
        (first,), (last,) = (conn.execute("SELECT MIN(minute_s) FROM energy_minute").fetchone(),
                             conn.execute("SELECT MAX(minute_s) FROM energy_minute").fetchone())
        end = last + 60 if end is None else end
        start = first if start is None else end + start  # start: seconds before the end
        sql = ("SELECT phase, SUM(energy_j), SUM(co2e_g), SUM(cost) FROM energy_minute "
               "WHERE minute_s >= ? AND minute_s < ?")
        args: list[object] = [start, end]
        if zone:
            sql, args = sql + " AND zone = ?", [*args, zone]
        rows = conn.execute(sql + " GROUP BY phase", args).fetchall()
    out: dict[str, dict[str, float]] = {m: {} for m in ("energy_j", "co2e_g", "cost")}
    for phase, energy, co2e, cost in rows:
        out["energy_j"][phase], out["co2e_g"][phase], out["cost"][phase] = energy, co2e, cost
    return out


def _assert_totals_equal(shown: dict, expected: dict) -> None:
    for metric, phases in expected.items():
        assert set(phases) <= set(shown[metric])
        for phase, value in shown[metric].items():
            assert value == pytest.approx(phases.get(phase, 0.0), rel=1e-9, abs=1e-9), \
                (metric, phase)


def test_overview_equals_the_store_and_follows_the_range(servers, stores, page):
    path = stores["seeded"]
    page.goto(servers["seeded"].url + "/")
    before = _totals(page)
    _assert_totals_equal(before, _sql_totals(path, None, None))
    cumulative = _wait_graph(page, "overview-cumulative")
    assert any(t["name"] == "inference overtook training" for t in cumulative)
    _shot(page, "overview")

    with _totals_change(page):
        page.get_by_text("Last 24 hours", exact=True).click()
    day = _totals(page)
    assert day != before
    _assert_totals_equal(day, _sql_totals(path, -86400, None))

    with _totals_change(page):
        page.locator("#zone").click()
        page.get_by_text("ERCO", exact=True).last.click()
    _assert_totals_equal(_totals(page), _sql_totals(path, -86400, None, "ERCO"))
    _no_traceback(page)


PAGES = {
    "models": ("/models", ["models-trend"]),
    "jobs": ("/jobs", []),
    "grid": ("/grid", ["grid-intensity"]),
    "devices": ("/devices", ["devices-power"]),
}


@pytest.mark.parametrize("name", list(PAGES))
def test_each_page_renders_its_charts(servers, stores, page, name):
    path, graphs = PAGES[name]
    page.goto(servers["seeded"].url + path)
    for graph_id in graphs:
        assert _wait_graph(page, graph_id)
    if name == "jobs":
        with sqlite3.connect(stores["seeded"]) as conn:
            jobs = conn.execute("SELECT COUNT(*) FROM jobs").fetchone()[0]
        rows = page.locator("#jobs-table a")
        rows.first.wait_for(timeout=20_000)
        assert rows.count() == jobs
    if name == "models":
        page.locator("#models-table td").first.wait_for(timeout=20_000)
        assert page.locator("#models-runs a").count() >= 1
    if name == "devices":
        assert page.locator("#devices-health tbody tr").count() == SPEC.gpus + 1
    if name == "grid":
        assert page.locator("#grid-deferred tbody tr").count() == 2
    _no_traceback(page)
    _shot(page, name)


def test_a_job_page_shows_power_shares_and_provenance(servers, page):
    page.goto(servers["seeded"].url + "/jobs")
    link = page.locator("#jobs-table a", has_text="train-")
    link.first.wait_for(timeout=20_000)
    link.first.click()
    page.wait_for_url("**/jobs/train*")
    power = _wait_graph(page, "job-power")
    assert all(max(t["y"]) > 0 for t in power)
    assert _wait_graph(page, "job-shares")
    assert "nvml-energy-counter" in page.inner_text("#job-provenance")
    _no_traceback(page)
    _shot(page, "job")


@pytest.mark.parametrize("name, expected", [
    ("empty", ["Nothing recorded yet", "carbonwatch run --kind training"]),
    ("missing", ["No store yet", "does not exist", "carbonwatch run -- python train.py"]),
    ("corrupt", ["Unreadable store", "not a readable SQLite database"]),
])
def test_unusable_stores_show_a_readable_message(servers, page, name, expected):
    for path in ("/", "/jobs", "/devices"):
        page.goto(servers[name].url + path)
        message = page.locator(".cw-message").first
        message.wait_for(timeout=20_000)
        text = message.inner_text()
        for needle in expected if path == "/" or name != "empty" else expected[:1]:
            assert needle in text
        _no_traceback(page)
    _shot(page, name)


def test_a_store_written_meanwhile_refreshes_without_errors(servers, stores, page, tmp_path):
    path = stores["live"]
    writer = subprocess.Popen([sys.executable, "-c", LIVE_WRITER, str(path)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert writer.stdout.readline().strip() == "writing"
        page.goto(servers["live"].url + "/")
        first = _totals(page)["energy_j"]["training"]
        page.wait_for_function(
            "old => { const t = document.querySelector('#overview-totals .js-plotly-plot');"
            " return t && t.data[0].customdata[0] > old; }", arg=first, timeout=20_000)
        assert page.locator(".cw-message").count() == 0
        _no_traceback(page)
    finally:
        writer.terminate()
        writer.wait(10)


# Appends a training minute every 50 ms through the Store API, as the daemon's writer would.
LIVE_WRITER = """
import sys, time
from carbonwatch.store import open_store
store = open_store(sys.argv[1])
(last,) = store.conn.execute("SELECT MAX(minute_s) FROM energy_minute").fetchone()
print("writing", flush=True)
minute = last
while True:
    minute += 60
    store.add_energy_minutes([dict(minute_s=minute, device_id="gpu0", device_class="gpu",
        consumer="job:live", phase="training", model="live", energy_j=30000.0, co2e_g=2.5,
        cost=0.01, intensity_g_per_kwh=300.0, intensity_kind="actual", provenance="measured",
        )])
    time.sleep(0.05)
"""

LOCKER = """
import sqlite3, sys, time
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("PRAGMA locking_mode = EXCLUSIVE")  # shuts readers out, even in WAL mode
conn.execute("BEGIN EXCLUSIVE")
conn.execute("INSERT OR REPLACE INTO meta VALUES ('locked', 'yes')")
print("locked", flush=True)
time.sleep(120)
"""


def test_a_locked_store_says_so_then_recovers(servers, stores, page):
    locker = subprocess.Popen([sys.executable, "-c", LOCKER, str(stores["locked"])],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert locker.stdout.readline().strip() == "locked"
        page.goto(servers["locked"].url + "/")
        message = page.locator(".cw-message.cw-locked")
        message.wait_for(timeout=20_000)
        assert "Store busy" in message.inner_text()
        assert "retries at the next refresh" in message.inner_text()
        _no_traceback(page)
        _shot(page, "locked")
    finally:
        locker.terminate()
        locker.wait(10)
    assert _wait_graph(page, "overview-totals")  # the next refresh reads it again
