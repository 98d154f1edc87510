"""The Models page in a real headless Chromium shows per-token figures equal to plain SQL on a
store a real daemon wrote with tokens (see token_helpers), next to the per-1,000-call ones."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from browser_helpers import NO_CHROMIUM, Server, find_chromium, launch_chromium, serving
from browser_helpers import no_traceback as _no_traceback
from browser_helpers import screenshot as _shot
from daemon_helpers import MODEL
from token_helpers import make_token_store, sql_figures

sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
CHROMIUM = find_chromium()
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason=NO_CHROMIUM)

# The table's columns as the page names them (data-dash-column) -> the SQL figure they show.
SHOWN = {
    "j_per_output_token": "energy_j_per_output_token",
    "j_per_token": "energy_j_per_token",
    "g_per_1k_output_tokens": "co2e_g_per_1k_output_tokens",
}
_ROWS_JS = (
    "() => Array.from(document.querySelectorAll('#models-table tr')).map(tr => "
    "Object.fromEntries(Array.from(tr.querySelectorAll('td[data-dash-column]')).map("
    "td => [td.getAttribute('data-dash-column'), td.innerText.trim()])))"
    ".filter(r => r.model)"
)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_token_store(tmp_path_factory.mktemp("tokens") / "cw.db")["db"]


@pytest.fixture(scope="module")
def server(store: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with serving({"tokens": Server(store, tmp_path_factory.mktemp("home"))}) as running:
        yield running["tokens"]


def _table(page: Any) -> dict[str, dict[str, str]]:
    page.wait_for_function(f"() => ({_ROWS_JS})().length > 0", timeout=20_000)
    return {r["model"]: r for r in page.evaluate(_ROWS_JS)}


def test_the_models_page_shows_per_token_figures_equal_to_sql(server, store):
    expected = sql_figures(store, MODEL)
    with sync_api.sync_playwright() as p:
        browser = launch_chromium(p, CHROMIUM)
        try:
            page = browser.new_page(viewport={"width": 1600, "height": 900})
            page.goto(server.url + "/models")
            rows = _table(page)
            _shot(page, "models-tokens")
            _no_traceback(page)
            headers = page.inner_text("#models-table")
        finally:
            browser.close()
    row = rows[MODEL]
    for column, figure in SHOWN.items():
        # Shown to 4 significant digits.
        assert float(row[column].replace(",", "")) == pytest.approx(
            float(f"{expected[figure]:.4g}"), rel=1e-12), column
    assert int(row["tokens_out"].replace(",", "")) == expected["tokens_out"]
    assert row["wh_per_1000"]  # beside the per-1,000-call figures
    for title in ("J / output token", "J / token (in + out)", "g CO2e / 1,000 output tokens"):
        assert title in headers
