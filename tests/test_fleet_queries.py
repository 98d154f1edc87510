"""The fleet view's PromQL, as text, and the client's errors (the queries' results are checked
against a real Prometheus in test_fleet_prometheus.py)."""

from __future__ import annotations

import pytest
from prometheus_helpers import free_port

from carbonwatch.errors import CarbonwatchError
from carbonwatch.fleet import FleetClient, FleetError
from carbonwatch.fleet import queries as q
from carbonwatch.fleet.promql import quote


def test_cumulative_totals_count_each_daemon_series_once_at_its_last_value():
    expr = q.counter_total(q.ENERGY, ("node",), lookback_s=3600)
    assert expr == (
        "sum by (node) (max by (node, device, model, phase, exported_job) "
        "(last_over_time(carbonwatch_energy_joules_total[3600s])))"
    )


def test_without_stale_nodes_only_current_series_count():
    assert "last_over_time" not in q.counter_total(q.ENERGY, ("phase",), lookback_s=None)


def test_window_totals_use_increase_which_survives_counter_resets():
    expr = q.counter_total(q.EMISSIONS, ("model", "phase"), window_s=86400)
    assert expr == ("sum by (model, phase) (increase(carbonwatch_emissions_grams_total[86400s]))")


def test_money_is_never_added_across_currencies():
    assert q.counter_total(q.COST, ("node",)).startswith("sum by (node, currency) (")
    assert q.counter_total(q.COST, ()).startswith("sum by (currency) (")


def test_group_names_map_job_to_the_label_prometheus_renamed_it_to():
    assert q.group_labels(("job", "node"), "exported_job") == ("exported_job", "node")
    assert q.group_labels(("job",), "job") == ("job",)  # honor_labels: true
    with pytest.raises(ValueError, match="unknown pod"):
        q.group_labels(("pod",), "exported_job")


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
