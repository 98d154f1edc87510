"""The Models page in a real headless Chromium shows the payback card: training carbon
(operational + embodied) against inference per 1,000 calls, the date inference overtook training,
and embodied carbon left unknown for a device model without a sourced figure."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from browser_helpers import NO_CHROMIUM, Server, find_chromium, launch_chromium, serving
from browser_helpers import no_traceback as _no_traceback
from browser_helpers import screenshot as _shot
from footprint_helpers import H200, MODEL, build_store

from carbonwatch.dashboard.data.payback import model_payback
from carbonwatch.dashboard.figures import fmt_mass

sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
CHROMIUM = find_chromium()
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason=NO_CHROMIUM)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_store(tmp_path_factory.mktemp("payback") / "cw.db")


@pytest.fixture(scope="module")
def server(store: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with serving({"payback": Server(store, tmp_path_factory.mktemp("home"))}) as running:
        yield running["payback"]


def test_the_models_page_shows_payback_with_embodied_carbon(server, store):
    pay = model_payback(store, MODEL)
    assert pay is not None and model_payback(store, "no-such-model") is None
    with sync_api.sync_playwright() as p:
        browser = launch_chromium(p, CHROMIUM)
        try:
            page = browser.new_page(viewport={"width": 1600, "height": 1200})
            page.goto(server.url + "/models")
            page.wait_for_selector("#models-payback", timeout=20_000)
            _shot(page, "models-payback")
            _no_traceback(page)
            text = page.inner_text("#models-payback")
            note = page.inner_text("section:has(#models-payback)")
        finally:
            browser.close()
    assert fmt_mass(pay["training_co2e_g"]) in text
    assert fmt_mass(pay["training_embodied_co2e_g"]) in text
    assert fmt_mass(pay["inference_co2e_g_per_1k_calls"]) in text
    assert pay["inference_overtook_training_at"] in text
    assert f"unknown for {H200}" in note
