"""Two replay daemons (``node-a``, ``node-b``) scraped by a real Prometheus, for the fleet tests
and the dashboard's fleet page: :func:`running_fleet` starts them, registers a training job and
the fixture's inference calls on each, and returns once Prometheus's totals equal the stores."""

from __future__ import annotations

import contextlib
import math
import sqlite3
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from daemon_helpers import INFER_PID, REPLAY, TRAIN_PID, DaemonProcess, fixture_calls
from prometheus_helpers import PrometheusProcess, free_port, scrape_config, write_targets

from carbonwatch.fleet import FleetClient

TOKEN = "fleet-test-token"
NODES = {  # node: (config, replayed GPUs, training job)
    "node-a": ('country = "FRA"\nenergy_price_per_kwh = 0.2\n', 1, ("pretrain", "llm-7b")),
    # node-b folds an ended job's series at once (the default keeps them an hour)
    "node-b": (
        'country = "DEU"\nenergy_price_per_kwh = 0.3\nmetrics_job_retention_s = 0\n',
        2,
        ("finetune", "llm-7b"),
    ),
}
REL = 1e-6  # float sums in another order


class Node:
    def __init__(self, tmp: Path, name: str) -> None:
        config, gpus, self.job = NODES[name]
        self.name, self.db, self.gpus = name, tmp / f"{name}.db", gpus
        self.job_id = ""  # the training job's id, once registered
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


@dataclass
class Fleet:
    client: FleetClient
    nodes: list[Node]
    prometheus: PrometheusProcess
    targets: Path


@contextlib.contextmanager
def running_fleet(tmp: Path) -> Iterator[Fleet]:
    token_file = tmp / "token"
    token_file.write_text(TOKEN)
    nodes = [Node(tmp, name) for name in NODES]
    targets = tmp / "targets.json"
    write_targets(targets, [n.target for n in nodes])
    config = scrape_config(targets, token_file)
    try:
        # Prometheus first: it sees the counters grow while the traces replay (window totals).
        with PrometheusProcess(config, tmp) as prometheus:
            fleet = FleetClient(prometheus.url, lookback_s=600, stale_after_s=10)
            for n in nodes:
                n.daemon.start()
                name, model = n.job
                job = {"name": name, "kind": "training", "model": model, "pid": TRAIN_PID}
                status, body = n.request("POST", "/v1/jobs", job)
                assert status == 201
                n.job_id = body["id"]
                calls = {"calls": fixture_calls(INFER_PID)}
                assert n.request("POST", "/v1/calls", calls)[0] == 200
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
            yield Fleet(fleet, nodes, prometheus, targets)
    finally:
        for n in nodes:
            n.daemon.__exit__()
