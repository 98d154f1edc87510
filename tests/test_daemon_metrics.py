"""/metrics parses as Prometheus text, its counters equal the store and survive a restart; the
OpenAPI document covers every route; /v1/devices, /healthz and /v1/summary report what ran."""

from __future__ import annotations

import math
import sqlite3

from daemon_helpers import MODEL, InProcessDaemon, fixture_calls
from prometheus_client.parser import text_string_to_metric_families

from carbonwatch.daemon.app import make_app


def scrape(daemon: InProcessDaemon) -> dict[str, list]:
    status, text = daemon.request("GET", "/metrics")
    assert status == 200
    return {f.name: f.samples for f in text_string_to_metric_families(text)}


def energy_by_phase(families: dict[str, list]) -> dict[str, float]:
    out: dict[str, float] = {}
    for s in families["carbonwatch_energy_joules"]:
        out[s.labels["phase"]] = out.get(s.labels["phase"], 0.0) + s.value
    return out


def test_metrics_parse_equal_the_store_and_continue_after_a_restart(tmp_path):
    db = tmp_path / "cw.db"
    with InProcessDaemon(db, replay_speed=30, node="node-a") as daemon:
        status, _ = daemon.request("POST", "/v1/calls", {"calls": fixture_calls()})
        assert status == 200
        daemon.wait_for(daemon.replay_finished)
        daemon.wait_for(lambda: scrape(daemon)["carbonwatch_energy_joules"])
        families = scrape(daemon)
        assert [s.value for s in families["carbonwatch_up"]] == [1.0]
        (power,) = families["carbonwatch_device_power_watts"]
        assert power.labels == {"device": "gpu0", "node": "node-a"} and power.value > 0
        sample = families["carbonwatch_energy_joules"][0]
        assert set(sample.labels) == {"job_id", "job_name", "model", "phase", "device", "node"}
        assert sample.name == "carbonwatch_energy_joules_total"
        assert "carbonwatch_cost" not in families  # no price configured: unknown, not zero

    with InProcessDaemon(db, node="node-a") as restarted:
        families = scrape(restarted)
        (calls,) = families["carbonwatch_inference_calls"]
        assert calls.labels["model"] == MODEL and calls.value == len(fixture_calls())
        with sqlite3.connect(db) as conn:
            stored = dict(conn.execute(
                "SELECT phase, SUM(energy_j) FROM energy_minute GROUP BY phase"))
        scraped = energy_by_phase(families)
        assert scraped.keys() == stored.keys() == {"idle", "inference", "other"}
        for phase, energy_j in stored.items():
            assert math.isclose(scraped[phase], energy_j, rel_tol=1e-9)


def test_priced_energy_gets_a_cost_counter_with_its_currency(tmp_path):
    with InProcessDaemon(tmp_path / "cw.db", energy_price_per_kwh=0.25, currency="EUR") as d:
        d.wait_for(d.replay_finished)
        d.wait_for(lambda: scrape(d).get("carbonwatch_cost"))
        costs = scrape(d)["carbonwatch_cost"]
        assert {s.labels["currency"] for s in costs} == {"EUR"}
        assert math.fsum(s.value for s in costs) > 0
        status, summary = d.request("GET", "/v1/summary?group_by=phase")
        assert {g["currency"] for g in summary["groups"]} == {"EUR"}


def test_openapi_documents_every_route_and_nothing_else(tmp_path):
    with InProcessDaemon(tmp_path / "cw.db") as daemon:
        status, doc = daemon.request("GET", "/v1/openapi.json")
        routes = {
            (route.resource.canonical, route.method.lower())
            for route in make_app(daemon.daemon).router.routes()
            if route.method != "HEAD"
        }
    assert status == 200 and doc["openapi"].startswith("3.")
    documented = {(path, method) for path, ops in doc["paths"].items() for method in ops}
    assert documented == routes


def test_devices_health_and_summary_report_the_replay(tmp_path):
    with InProcessDaemon(tmp_path / "cw.db") as daemon:
        status, health = daemon.request("GET", "/healthz")
        assert status == 200 and health["ok"]
        daemon.wait_for(daemon.replay_finished)
        status, devices = daemon.request("GET", "/v1/devices")
        (gpu,) = devices["devices"]
        assert (gpu["device_id"], gpu["method"], gpu["provenance"], gpu["state"]) == (
            "gpu0", "nvml-energy-counter", "measured", "ok")
        assert gpu["name"] == "NVIDIA H200" and gpu["last_sample_age_s"] is not None
        daemon.wait_for(lambda: daemon.request("GET", "/v1/summary")[1]["groups"])
        status, summary = daemon.request("GET", "/v1/summary?group_by=phase&since=0")
        assert status == 200
        phases = {g["key"]: g for g in summary["groups"]}
        assert {"idle", "other"} <= phases.keys()
        assert all(g["cost"] is None for g in phases.values())  # no price: unknown
        status, later = daemon.request("GET", "/v1/summary?since=2100-01-01T00:00:00Z")
        assert later["groups"] == []
