"""The dashboard's Fleet page in a real Chromium, against ``carbonwatch dashboard --prometheus``
over a real Prometheus scraping two replay daemons: its figures equal FleetClient's, a stopped
node shows as stale (and still counts), and the local pages say there is no local store unless
--db names one."""

from __future__ import annotations

import math
from collections.abc import Iterator

import pytest
from browser_helpers import (
    NO_CHROMIUM,
    Server,
    find_chromium,
    launch_chromium,
    no_traceback,
    serving,
)
from browser_helpers import screenshot as shot
from fleet_helpers import Fleet, running_fleet, wait_for
from prometheus_helpers import MISSING, PROMETHEUS

from carbonwatch.fleet import FleetClient

sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
CHROMIUM = find_chromium()
pytestmark = [pytest.mark.skipif(CHROMIUM is None, reason=NO_CHROMIUM),
              pytest.mark.skipif(PROMETHEUS is None, reason=MISSING)]
REL = 1e-9  # the page and the client read the same instant's figures, formatted by repr


@pytest.fixture(scope="module")
def fleet(tmp_path_factory) -> Iterator[Fleet]:
    with running_fleet(tmp_path_factory.mktemp("fleet")) as env:
        yield env


@pytest.fixture(scope="module")
def servers(fleet: Fleet, tmp_path_factory) -> Iterator[dict[str, Server]]:
    home = tmp_path_factory.mktemp("home")
    prometheus = ("--prometheus", fleet.prometheus.url)
    with serving({
        "fleet": Server(None, home, refresh_s=1.0, args=prometheus),
        # node-a's own store beside the fleet
        "both": Server(fleet.nodes[0].db, home, refresh_s=1.0, args=prometheus),
    }) as running:
        yield running


@pytest.fixture(scope="module")
def page(servers) -> Iterator[object]:
    with sync_api.sync_playwright() as p:
        chromium = launch_chromium(p, CHROMIUM)
        context = chromium.new_context(viewport={"width": 1366, "height": 900})
        yield context.new_page()
        chromium.close()


def node_rows(page) -> dict[str, dict[str, str]]:
    """The Nodes table's rows: their data attributes (unrounded figures) and text."""
    return page.evaluate(
        "() => Object.fromEntries([...document.querySelectorAll('#fleet-nodes tbody tr')]"
        ".map(tr => [tr.dataset.node, {...tr.dataset, text: tr.innerText}]))")


def phase_bars(page) -> dict[str, dict[str, float]]:
    page.wait_for_function(
        "() => { const gd = document.querySelector('#fleet-phases .js-plotly-plot');"
        " return gd && gd.data && gd.data.length > 0; }", timeout=20_000)
    traces = page.evaluate(
        "() => document.querySelector('#fleet-phases .js-plotly-plot').data.map("
        "t => ({name: t.name, x: t.x, customdata: t.customdata}))")
    return {t["name"]: dict(zip(t["x"], t["customdata"], strict=True)) for t in traces}


def assert_page_equals_client(page, client: FleetClient) -> None:
    rows = node_rows(page)
    by_node = {t.group["node"]: t for t in client.totals("node")}
    assert rows.keys() == by_node.keys()
    for node, t in by_node.items():
        row = rows[node]
        assert math.isclose(float(row["energyJ"]), t.energy_j, rel_tol=REL)
        assert math.isclose(float(row["co2eG"]), t.co2e_g, rel_tol=REL)
        assert math.isclose(float(row["cost"]), t.cost, rel_tol=REL)
        assert float(row["calls"]) == t.calls
    (whole,) = client.totals(())
    kpis = page.evaluate("() => ({...document.querySelector('#fleet-kpis').dataset})")
    assert math.isclose(float(kpis["energyJ"]), whole.energy_j, rel_tol=REL)
    assert math.isclose(float(kpis["co2eG"]), whole.co2e_g, rel_tol=REL)
    assert float(kpis["calls"]) == whole.calls
    bars = phase_bars(page)
    for t in client.totals("phase"):  # training against inference, the whole fleet
        assert math.isclose(bars["energy_j"][t.group["phase"]], t.energy_j, rel_tol=REL)
        assert math.isclose(bars["co2e_g"][t.group["phase"]], t.co2e_g, rel_tol=REL)


def test_the_fleet_page_equals_the_fleet_client(fleet, servers, page):
    page.goto(servers["fleet"].url + "/fleet")
    page.locator("#fleet-nodes tbody tr").nth(1).wait_for(timeout=20_000)
    assert_page_equals_client(page, fleet.client)
    rows = node_rows(page)
    assert {r["stale"] for r in rows.values()} == {"false"}
    models = page.locator("#fleet-models tbody tr")
    assert models.count() >= 2  # llm-7b (training), mlp-4096 (inference)
    assert "llm-7b" in page.inner_text("#fleet-models")
    no_traceback(page)
    shot(page, "fleet")
    # A shorter range reads the increase over it instead of the cumulative totals.
    page.get_by_text("Last 24 hours", exact=True).click()
    page.wait_for_function(
        "() => document.querySelector('#fleet-range-text').innerText.includes('increase')",
        timeout=20_000)
    assert page.locator("#fleet-nodes tbody tr").count() == 2
    assert page.locator(".cw-message").count() == 0


def test_local_pages_need_a_store_and_work_beside_the_fleet(fleet, servers, page):
    page.goto(servers["fleet"].url + "/")
    message = page.locator(".cw-message.cw-no-store")
    message.wait_for(timeout=20_000)
    assert "No local store" in message.inner_text()
    assert page.locator("a[href='/fleet']").count() >= 2  # the message's link and the nav
    no_traceback(page)

    page.goto(servers["both"].url + "/")  # node-a's store, and the fleet
    page.wait_for_function(
        "() => { const gd = document.querySelector('#overview-totals .js-plotly-plot');"
        " return gd && gd.data && gd.data.length > 0; }", timeout=20_000)
    assert page.locator(".cw-message").count() == 0
    page.goto(servers["both"].url + "/fleet")
    page.locator("#fleet-nodes tbody tr").nth(1).wait_for(timeout=20_000)
    no_traceback(page)


def test_a_stopped_node_shows_as_stale_and_still_counts(fleet, servers, page):
    node_b = fleet.nodes[1]
    page.goto(servers["fleet"].url + "/fleet")
    page.locator("#fleet-nodes tbody tr").nth(1).wait_for(timeout=20_000)
    assert node_b.daemon.stop() == 0
    # The page refreshes every second; node-b's row turns stale.
    page.wait_for_function(
        "() => { const tr = document.querySelector('#fleet-nodes tr[data-node=\"node-b\"]');"
        " return tr && tr.dataset.stale === 'true'; }", timeout=30_000)
    rows = node_rows(page)
    assert rows["node-a"]["stale"] == "false" and "stale" in rows["node-b"]["text"]
    assert "1 stale" in page.inner_text("#kpi-fleet-nodes")
    wait_for(lambda: {n.node: n.stale for n in fleet.client.nodes()}["node-b"], "client: stale")
    assert_page_equals_client(page, fleet.client)  # node-b at its last values, on both sides
    no_traceback(page)
    shot(page, "fleet-stale")
