"""Fleet view over Prometheus: every node's daemon exposes cumulative counters on /metrics,
Prometheus scrapes them all, and this package reads fleet totals and node health back through
Prometheus's HTTP API (``FleetClient(url).totals(group_by=...)``, ``.nodes()``)."""

from carbonwatch.fleet.client import FleetClient, FleetTotal, NodeStatus
from carbonwatch.fleet.promql import FleetError, PrometheusClient

__all__ = ["FleetClient", "FleetError", "FleetTotal", "NodeStatus", "PrometheusClient"]
