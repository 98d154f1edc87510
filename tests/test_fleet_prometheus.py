"""Fleet totals read through a real Prometheus equal the sum of the daemons' own stores; a daemon
that goes down is marked stale while the others stay, and one that restarts resumes its counters
from its store (no counter reset)."""

from __future__ import annotations

import math
import sqlite3
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from daemon_helpers import INFER_PID, REPLAY, TRAIN_PID, DaemonProcess, fixture_calls
from prometheus_helpers import (
    MISSING,
    PROMETHEUS,
    PrometheusProcess,
    free_port,
    scrape_config,
    write_targets,
)

from carbonwatch.fleet import FleetClient, FleetError, PrometheusClient

pytestmark = pytest.mark.skipif(PROMETHEUS is None, reason=MISSING)

TOKEN = "fleet-test-token"
NODES = {  # node: (config, replayed GPUs, training job)
    "node-a": ('country = "FRA"\nenergy_price_per_kwh = 0.2\n', 1, ("pretrain", "llm-7b")),
    "node-b": ('country = "DEU"\nenergy_price_per_kwh = 0.3\n', 2, ("finetune", "llm-7b")),
}
REL = 1e-6  # float sums in another order


class Node:
    def __init__(self, tmp: Path, name: str) -> None:
        config, gpus, self.job = NODES[name]
        self.name, self.db, self.gpus = name, tmp / f"{name}.db", gpus
        self.toml = tmp / f"{name}.toml"
        self.toml.write_text(f'node = "{name}"\n{config}')
        self.daemon = self.new_daemon()

    def new_daemon(self) -> DaemonProcess:
        """A daemon for this node's store, on a new port (a new ``instance`` for Prometheus)."""
        self.port = free_port()
        return DaemonProcess(
            self.db,
            "--config",
            str(self.toml),
            "--backend",
            REPLAY,
            "--replay-speed",
            "10",
            "--replay-gpus",
            str(self.gpus),
            "--port",
            str(self.port),
            env={"CARBONWATCH_TOKEN": TOKEN},
        )

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def request(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        return self.daemon.request(method, path, body, token=TOKEN)

    def settled(self) -> bool:
        status, health = self.request("GET", "/healthz")
        return (
            status == 200 and health["status"] == "replay finished" and health["pending_calls"] == 0
        )

    def stored(self) -> dict[str, Any]:
        """What this node's store holds: the truth the fleet view must add up to."""
        with sqlite3.connect(f"file:{self.db}?mode=ro", uri=True) as conn:
            rows = conn.execute(
                "SELECT phase, model, SUM(energy_j), SUM(co2e_g), SUM(cost)"
                " FROM energy_minute GROUP BY 1, 2"
            ).fetchall()
            calls = dict(conn.execute("SELECT model, SUM(calls) FROM call_minute GROUP BY 1"))
        return {"rows": rows, "calls": calls}


def by(nodes: list[Node], key: Callable[[str, str, str], str]) -> dict[str, list[float]]:
    """Σ (energy, carbon, cost) over the nodes' stores, grouped by key(node, phase, model)."""
    out: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0, 0.0])
    for n in nodes:
        for phase, model, e, g, c in n.stored()["rows"]:
            acc = out[key(n.name, phase, model)]
            acc[0], acc[1], acc[2] = acc[0] + e, acc[1] + g, acc[2] + c
    return dict(out)


def fleet_by(fleet: FleetClient, group: str, **kw: Any) -> dict[str, list[float]]:
    return {
        t.group[group]: [t.energy_j, t.co2e_g, t.cost] for t in fleet.totals(group_by=group, **kw)
    }


def calls_by_node(fleet: FleetClient) -> dict[str, float]:
    return {t.group["node"]: t.calls for t in fleet.totals(group_by="node")}


def close(a: dict[str, list[float]], b: dict[str, list[float]]) -> bool:
    return a.keys() == b.keys() and all(
        math.isclose(x, y, rel_tol=REL, abs_tol=1e-9)
        for k in a
        for x, y in zip(a[k], b[k], strict=True)
    )


def wait_for(predicate: Callable[[], Any], what: str, timeout_s: float = 45.0) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise TimeoutError(what)


@pytest.fixture(scope="module")
def fleet_env(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fleet")
    token_file = tmp / "token"
    token_file.write_text(TOKEN)
    nodes = [Node(tmp, name) for name in NODES]
    for n in nodes:
        n.daemon.start()
        name, model = n.job
        assert (
            n.request(
                "POST",
                "/v1/jobs",
                {"name": name, "kind": "training", "model": model, "pid": TRAIN_PID},
            )[0]
            == 201
        )
        assert n.request("POST", "/v1/calls", {"calls": fixture_calls(INFER_PID)})[0] == 200
    targets = tmp / "targets.json"
    write_targets(targets, [n.target for n in nodes])
    config = scrape_config(targets, token_file)
    try:
        with PrometheusProcess(config, tmp) as prometheus:
            fleet = FleetClient(prometheus.url, lookback_s=600, stale_after_s=10)
            for n in nodes:
                wait_for(n.settled, f"{n.name}: replay and calls settled")
            # The traces are over: each store is final, and Prometheus converges on it.
            wait_for(
                lambda: (
                    close(fleet_by(fleet, "node"), by(nodes, lambda n, p, m: n))
                    and calls_by_node(fleet)
                    == {n.name: sum(n.stored()["calls"].values()) for n in nodes}
                ),
                "fleet totals per node equal the stores",
            )
            yield fleet, nodes, prometheus, targets
    finally:
        for n in nodes:
            n.daemon.__exit__()


def test_fleet_totals_through_prometheus_equal_the_sum_of_the_daemons_stores(fleet_env):
    fleet, nodes, _, _ = fleet_env
    at_s = time.time()  # one instant for every query below
    assert close(fleet_by(fleet, "node", at_s=at_s), by(nodes, lambda n, p, m: n))
    phases = fleet_by(fleet, "phase", at_s=at_s)
    assert close(phases, by(nodes, lambda n, p, m: p))
    assert {"training", "inference", "idle"} <= phases.keys()  # training against inference
    assert close(fleet_by(fleet, "model", at_s=at_s), by(nodes, lambda n, p, m: m))
    (whole,) = fleet.totals(group_by=(), at_s=at_s)
    store_j = sum(v[0] for v in by(nodes, lambda n, p, m: "").values())
    assert math.isclose(whole.energy_j, store_j, rel_tol=REL) and whole.currency == "USD"
    # The same figures as each daemon's own API reports.
    api_j = sum(g["energy_j"] for n in nodes for g in n.request("GET", "/v1/summary")[1]["groups"])
    assert math.isclose(whole.energy_j, api_j, rel_tol=REL)
    # Inference calls per model, and training jobs by name (the daemon's `job` label).
    calls = {t.group["model"]: t.calls for t in fleet.totals(group_by="model", at_s=at_s)}
    assert calls["mlp-4096"] == sum(n.stored()["calls"]["mlp-4096"] for n in nodes)
    jobs = fleet_by(fleet, "job", at_s=at_s)
    assert {"pretrain", "finetune"} <= jobs.keys()


def test_recording_rules_roll_up_to_the_same_totals(fleet_env):
    fleet, nodes, prometheus, _ = fleet_env
    client = PrometheusClient(prometheus.url)
    expected = by(nodes, lambda n, p, m: n)

    def rule_values() -> dict[str, float]:
        rollup = client.query("node:carbonwatch_energy_joules:sum")
        return {s.labels["node"]: s.value for s in rollup}

    got = wait_for(
        lambda: (v := rule_values()) and v.keys() == expected.keys() and v,
        "recording rules evaluated",
    )
    for node, (energy_j, _, _) in expected.items():
        assert math.isclose(got[node], energy_j, rel_tol=REL)
    rates = client.query("phase:carbonwatch_energy_joules:rate5m")
    assert {s.labels.get("phase") for s in rates} >= {"training", "inference", "idle"}


def test_a_down_node_is_stale_and_still_counted_and_a_restart_resumes_its_counters(fleet_env):
    fleet, nodes, prometheus, targets = fleet_env
    node_a, node_b = nodes
    expected = by(nodes, lambda n, p, m: n)
    assert [(n.node, n.stale) for n in fleet.nodes()] == [("node-a", False), ("node-b", False)]

    assert node_b.daemon.stop() == 0
    status = wait_for(
        lambda: (s := {n.node: n for n in fleet.nodes()})["node-b"].stale and s,
        "node-b marked stale",
    )
    assert not status["node-a"].stale and status["node-a"].scrape_up
    b = status["node-b"]
    assert b.scrape_up is False and b.reason.startswith("scrape failing")
    assert b.last_seen_s is not None and 0 <= b.age_s < 60
    # Its last values still count; without stale nodes only node-a remains.
    assert close(fleet_by(fleet, "node"), expected)
    assert close(fleet_by(fleet, "node", include_stale=False), {"node-a": expected["node-a"]})

    # It comes back elsewhere (a DaemonSet pod gets a new IP): same store, another instance.
    old_target = node_b.target
    node_b.daemon = node_b.new_daemon().start()
    write_targets(targets, [n.target for n in nodes])
    fresh = wait_for(
        lambda: not (s := {n.node: n for n in fleet.nodes()})["node-b"].stale and s,
        "node-b fresh again",
    )
    assert fresh["node-b"].instance == node_b.target != old_target
    wait_for(node_b.settled, "node-b settled after its restart")
    # Its counters resumed from the store, and the old instance's last values (still within the
    # lookback) are not added a second time.
    assert close(fleet_by(fleet, "node"), by(nodes, lambda n, p, m: n))
    client = PrometheusClient(prometheus.url)
    instances = client.query(
        'count by (instance) (carbonwatch_energy_joules_total{node="node-b"}'
        " or last_over_time(carbonwatch_energy_joules_total"
        '{node="node-b"}[10m]))'
    )
    assert {s.labels["instance"] for s in instances} == {old_target, node_b.target}
    resets = client.query('sum(resets(carbonwatch_energy_joules_total{node="node-b"}[10m]))')
    assert [s.value for s in resets] == [0.0]  # no series of node-b ever went down


def test_a_promql_error_is_reported_with_prometheus_message(fleet_env):
    fleet = fleet_env[0]
    with pytest.raises(FleetError, match="parse error"):
        fleet.prometheus.query("sum(")
