"""Per-call energy through the real daemon: the H200 trace replayed, calls.csv sent over HTTP."""

from __future__ import annotations

import json
import math
import sqlite3
from collections import defaultdict

from daemon_helpers import INFER_PID, MODEL, REPLAY, DaemonProcess, fixture_calls


def test_calls_share_the_service_energy_exactly_and_every_call_gets_some(tmp_path):
    db = tmp_path / "cw.db"
    calls = fixture_calls()
    # Power polled at the trace's own 10 ms, so each call's energy follows the power it drew.
    env = {"CARBONWATCH_POWER_INTERVAL_S": "0.01"}
    with DaemonProcess(db, "--backend", REPLAY, "--replay-speed", "10", env=env) as daemon:
        # Sent as a batching client would, before the replay reaches the calls (10 s in).
        for i in range(0, len(calls), 1000):
            status, body = daemon.request("POST", "/v1/calls", {"calls": calls[i:i + 1000]})
            assert status == 200, body
            assert body["accepted"] == len(calls[i:i + 1000])
        daemon.wait_for(daemon.replay_finished)
        daemon.wait_for(lambda: daemon.request("GET", "/healthz")[1]["pending_calls"] == 0)
        _, health = daemon.request("GET", "/healthz")
        # Every settled call says how it was apportioned; on this trace, by overlap time.
        assert health["calls_apportioned"] == {"power_fit": 0, "overlap_time": len(calls)}
        status, listed = daemon.request("GET", "/v1/jobs")
        (service,) = listed["jobs"]
        assert (service["kind"], service["model"], service["pids"]) == ("inference", MODEL,
                                                                        [INFER_PID])
    assert daemon.proc.returncode == 0  # SIGTERM: everything settled and written

    with sqlite3.connect(db) as conn:
        energy_j, n_calls, calls_j, between_j = conn.execute(
            "SELECT energy_j, calls, calls_energy_j, between_calls_j FROM jobs WHERE id = ?",
            [service["id"]],
        ).fetchone()
        minute_j = conn.execute(
            "SELECT SUM(energy_j) FROM energy_minute WHERE consumer = ?", [f"job:{service['id']}"]
        ).fetchone()[0]
        rows = conn.execute("SELECT energy_j, tags FROM calls").fetchall()
        rollup_calls, rollup_j = conn.execute(
            "SELECT SUM(calls), SUM(energy_j) FROM call_minute WHERE model = ?", [MODEL]
        ).fetchone()

    assert n_calls == rollup_calls == len(rows) == len(calls)
    assert energy_j > 0 and calls_j > 0 and between_j > 0
    # Σ per-call energy + between-call energy = the serving process's attributed energy.
    per_call_j = math.fsum(e for e, _ in rows)
    assert math.isclose(per_call_j + between_j, energy_j, rel_tol=1e-9)
    assert math.isclose(per_call_j, calls_j, rel_tol=1e-9)
    assert math.isclose(rollup_j, calls_j, rel_tol=1e-9)
    assert math.isclose(minute_j, energy_j, rel_tol=1e-9)

    by_batch = defaultdict(list)
    for e, tags in rows:
        by_batch[json.loads(tags)["batch"]].append(e)
    mean = {b: math.fsum(v) / len(v) for b, v in by_batch.items()}
    # Every call ran while its service drew energy, and gets some.
    assert all(e > 0 for e, _ in rows)
    # On this trace every batch size takes the same ~0.5 ms (launch-bound) and the service's
    # readings do not follow its calls beside the heavy trainer (the power fit is not trusted:
    # r2 ~0.03), so calls are split by overlap time and each batch size gets about the same.
    # That bigger batches get more where they draw more is tested against a known truth in
    # test_calls_fit.py and test_calls_replay.py. The readings that shape each interval are
    # polled every 1 ms of real time (10 ms of trace at 10x): on a loaded machine some are late,
    # which moves a batch's mean by up to ~25 % (seen once: 1.26x); weighting by batch size would
    # give 256x. Hence 1.5x.
    assert max(mean.values()) < 1.5 * min(mean.values()), mean
