"""Fleet totals read through a real Prometheus equal the sum of the daemons' own stores; a daemon
that goes down is marked stale while the others stay, and one that restarts resumes its counters
from its store (no counter reset)."""

from __future__ import annotations

import math
import time

import pytest
from fleet_helpers import REL, by, close, fleet_by, running_fleet, wait_for
from prometheus_helpers import MISSING, PROMETHEUS, write_targets

from carbonwatch.fleet import FleetError, PrometheusClient

pytestmark = pytest.mark.skipif(PROMETHEUS is None, reason=MISSING)

@pytest.fixture(scope="module")
def fleet_env(tmp_path_factory):
    with running_fleet(tmp_path_factory.mktemp("fleet")) as env:
        yield env.client, env.nodes, env.prometheus, env.targets


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
    # Inference calls per model, and training jobs by id and name.
    calls = {t.group["model"]: t.calls for t in fleet.totals(group_by="model", at_s=at_s)}
    assert calls["mlp-4096"] == sum(n.stored()["calls"]["mlp-4096"] for n in nodes)
    jobs = fleet_by(fleet, "job_name", at_s=at_s)
    assert {"pretrain", "finetune"} <= jobs.keys()
    assert math.isclose(sum(v[0] for v in jobs.values()), store_j, rel_tol=REL)
    by_id = {(t.group["node"], t.group["job_id"]) for t in fleet.totals(("node", "job_id"))}
    assert {(n.name, n.job_id) for n in nodes} <= by_id


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

    # node-b's job ends and (metrics_job_retention_s = 0) its series fold into job_id="": its
    # energy moves, the totals do not change, and the move is no increase over a window.
    folded_j = fleet_by(fleet, "job_name")["finetune"][0]
    (window_before,) = fleet.totals((), window_s=600)
    assert node_b.request("POST", f"/v1/jobs/{node_b.job_id}/end", {})[0] == 200
    jobs = wait_for(
        lambda: "finetune" not in (j := fleet_by(fleet, "job_name")) and j, "node-b's job folded"
    )
    assert "pretrain" in jobs and close(fleet_by(fleet, "node"), expected)
    at_s = time.time()
    (window,) = fleet.totals((), window_s=600, at_s=at_s)
    # Counted as an increase, the fold would add all of folded_j (100 %). What moves otherwise is
    # increase()'s extrapolation, which drifts as flat samples accumulate between the two
    # evaluations: a few % here, 7 % once on a loaded 2-core machine. A quarter tells them apart.
    assert abs(window.energy_j - window_before.energy_j) < 0.25 * folded_j
    for group in ("job_name", ("node", "job_id"), "phase"):  # per job: the rest is job_id=""
        parts = fleet.totals(group, window_s=600, at_s=at_s)
        assert math.isclose(sum(t.energy_j for t in parts), window.energy_j, rel_tol=1e-9)

    assert node_b.daemon.stop() == 0
    status = wait_for(
        lambda: (s := {n.node: n for n in fleet.nodes()})["node-b"].stale and s,
        "node-b marked stale",
    )
    assert not status["node-a"].stale and status["node-a"].scrape_up
    b = status["node-b"]
    assert b.scrape_up is False and b.reason.startswith("scrape failing")
    assert b.last_seen_s is not None and 0 <= b.age_s < 60
    # Its last values still count, the folded job's once (its series stopped before node-b did,
    # and is still within the lookback); without stale nodes only node-a remains.
    assert close(fleet_by(fleet, "node"), expected)
    assert close(fleet_by(fleet, "phase"), by(nodes, lambda n, p, m: p))
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
