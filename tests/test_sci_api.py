"""``GET /v1/models/{model}/sci`` on a live daemon gives the same SCI terms as
``report --model M --format sci``; an unknown model is a 404, a bad unit a 400 naming it."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from daemon_helpers import DaemonProcess
from footprint_helpers import MODEL, build_store


def test_the_api_gives_the_reports_sci_terms(tmp_path):
    db = build_store(tmp_path / "cw.db")
    env = {k: v for k, v in os.environ.items() if not k.startswith("CARBONWATCH_")}
    report = subprocess.run(
        [sys.executable, "-m", "carbonwatch", "report", "--db", str(db), "--model", MODEL,
         "--format", "sci", "--functional-unit", "1k-output-tokens", "--json"],
        capture_output=True, text=True, timeout=60, env=env)
    assert report.returncode == 0, report.stderr
    expected = json.loads(report.stdout)
    with DaemonProcess(db, "--backend", "none") as daemon:
        status, body = daemon.request(
            "GET", f"/v1/models/{MODEL}/sci?functional_unit=1k-output-tokens")
        missing, gone = daemon.request("GET", "/v1/models/no-such-model/sci")
        bad, why = daemon.request("GET", f"/v1/models/{MODEL}/sci?functional_unit=bananas")
    assert status == 200, body
    for term in ("E_kwh", "I_g_per_kwh", "M_g", "R", "sci_g_per_unit"):
        assert body[term] == pytest.approx(expected[term], rel=1e-12), term
    assert body["M_g"] > 0 and body["provenance"]["M"]["devices"]["gpu0"]["figure"]["source"]
    assert missing == 404 and "no-such-model" in json.dumps(gone)
    assert bad == 400 and "functional_unit" in json.dumps(why)
