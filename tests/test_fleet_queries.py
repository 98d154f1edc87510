"""The fleet view's PromQL, as text, and the client's errors (the queries' results are checked
against a real Prometheus in test_fleet_prometheus.py)."""

from __future__ import annotations

import pytest
from prometheus_helpers import free_port

from carbonwatch.errors import CarbonwatchError
from carbonwatch.fleet import FleetClient, FleetError
from carbonwatch.fleet import queries as q
from carbonwatch.fleet.promql import quote


def test_cumulative_totals_count_each_daemon_series_once_as_of_one_scrape():
    expr = q.counter_total(q.ENERGY, ("node",), frozen={"b": 1700000000.25, "c": None})
    # Answering nodes now; node b as of its last scrape (a series it had already folded away is
    # not counted again); node c, whose last scrape is unknown, at its series' last values.
    assert expr == (
        "sum by (node) (max by (node, device, model, phase, job_id, job_name) "
        "(carbonwatch_energy_joules_total"
        ' or carbonwatch_energy_joules_total{node="b"} @ 1700000000.250'
        ' or last_over_time(carbonwatch_energy_joules_total{node=~"c"}[3600s])))'
    )


def test_without_stale_nodes_only_current_series_count():
    expr = q.counter_total(q.ENERGY, ("phase",))
    assert "last_over_time" not in expr and "@" not in expr


def test_node_names_in_a_regex_are_escaped():
    expr = q.counter_total(q.ENERGY, (), frozen={"gpu.1": None, "a+b": None})
    assert '{node=~"a\\\\+b|gpu\\\\.1"}' in expr


def test_window_totals_increase_sums_that_a_fold_leaves_unchanged():
    expr = q.window_total(q.EMISSIONS, ("model", "phase"), window_s=86400)
    assert expr == (
        "sum by (model, phase) (increase((sum by (node, device, model, phase) "
        "(max by (node, device, model, phase, job_id, job_name) "
        "(carbonwatch_emissions_grams_total)))[86400s:86s]))"
    )
    assert q.window_jobs(q.ENERGY, ("job_name",), 600) == (
        'sum by (job_name) (increase(carbonwatch_energy_joules_total{job_id!=""}[600s]))'
    )


def test_money_is_never_added_across_currencies():
    assert q.counter_total(q.COST, ("node",)).startswith("sum by (node, currency) (")
    assert q.counter_total(q.COST, ()).startswith("sum by (currency) (")
    assert q.window_total(q.COST, (), 60).startswith("sum by (currency) (")


def test_group_names_are_the_daemon_labels():
    assert q.group_labels(("job_id", "node")) == ("job_id", "node")
    with pytest.raises(ValueError, match="unknown pod"):
        q.group_labels(("pod",))
    with pytest.raises(ValueError, match="unknown job"):
        q.group_labels(("job",))  # Prometheus's own target label, not the daemon's


def test_node_names_are_quoted_as_promql_strings():
    assert q.node_samples(quote('we"ird\\node'), 60) == (
        'carbonwatch_up{node="we\\"ird\\\\node"}[60s]'
    )


def test_an_unreachable_prometheus_is_one_clear_error():
    fleet = FleetClient(f"http://127.0.0.1:{free_port()}", timeout_s=2)
    with pytest.raises(FleetError, match="cannot reach Prometheus") as err:
        fleet.totals()
    assert isinstance(err.value, CarbonwatchError)
    with pytest.raises(FleetError):
        fleet.nodes()
    assert not fleet.prometheus.ready()
