"""A store with tokens written by a real daemon, and the per-token figures computed from it with
plain SQL, for the tests of every place that shows them."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

from daemon_helpers import REPLAY, DaemonProcess, fixture_calls

from carbonwatch.client import Client

CLIENT_MODEL = "client-llm"


def _with_tokens(calls: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every fifth call reports nothing; the others a prompt, an output that grows with the
    batch, and the batch as weight."""
    out = []
    for i, call in enumerate(calls):
        call = dict(call)
        if i % 5 != 4:
            batch = call["tags"]["batch"]
            call.update(tokens_in=100 + (i % 13) * 40, tokens_out=batch * 3 + i % 7,
                        weight=float(batch))
        out.append(call)
    return out


def make_token_store(db: Path) -> dict[str, Any]:
    """A store written by a real daemon replaying the H200 trace, its calls sent with tokens (a
    fifth without), and 20 calls from the Python client with set_tokens; services ended, so a
    later daemon on the store measures nothing more for them."""
    calls = _with_tokens(fixture_calls())
    env = {"CARBONWATCH_POWER_INTERVAL_S": "0.01"}
    sent_client = {"tokens_in": 0, "tokens_out": 0, "calls": 0}
    with DaemonProcess(db, "--backend", REPLAY, "--replay-speed", "10", env=env) as daemon:
        for i in range(0, len(calls), 1000):
            status, body = daemon.request("POST", "/v1/calls", {"calls": calls[i:i + 1000]})
            assert status == 200, body
        client = Client(daemon_url=daemon.url, flush_interval_s=0.05)
        try:
            for k in range(20):
                with client.inference(CLIENT_MODEL, tokens_in=10 + k) as call:
                    call.set_tokens(tokens_out=k + 1)
                sent_client["tokens_in"] += 10 + k
                sent_client["tokens_out"] += k + 1
                sent_client["calls"] += 1
            assert client.flush(20.0), "the daemon did not acknowledge the client's spans"
            assert client.rejected_total == 0
        finally:
            client.close()
        daemon.wait_for(daemon.replay_finished)
        # End the services, so a later daemon on this store does not measure them again.
        _, listed = daemon.request("GET", "/v1/jobs")
        for job in listed["jobs"]:
            status, _ = daemon.request("POST", f"/v1/jobs/{job['id']}/end", {"exit_code": 0})
            assert status == 200
    assert daemon.proc is not None and daemon.proc.returncode == 0
    return {"db": db, "calls": calls, "client": sent_client}


def sql_figures(db: Path, model: str) -> dict[str, Any]:
    """The per-token figures, independently: the raw call log for tokens and the calls' energy,
    energy_minute for the serving energy (never call_minute or its rollups)."""
    with sqlite3.connect(db) as conn:
        serving_j, serving_g = conn.execute(
            "SELECT COALESCE(SUM(energy_j), 0), COALESCE(SUM(co2e_g), 0) FROM energy_minute"
            " WHERE model = ? AND phase = 'inference'", [model]).fetchone()
        calls, calls_j, token_j, t_in, t_out, t_calls = conn.execute(
            "SELECT COUNT(*), SUM(energy_j),"
            " COALESCE(SUM(CASE WHEN tokens_out IS NOT NULL THEN energy_j END), 0),"
            " COALESCE(SUM(tokens_in), 0), COALESCE(SUM(tokens_out), 0), COUNT(tokens_out)"
            " FROM calls WHERE model = ?", [model]).fetchone()
    share = 1.0 if t_calls == calls else token_j / calls_j
    return {
        "calls": calls, "tokens_in": t_in, "tokens_out": t_out, "token_calls": t_calls,
        "serving_energy_j": serving_j, "token_energy_share": share,
        "energy_j_per_output_token": serving_j * share / t_out,
        "energy_j_per_token": serving_j * share / (t_in + t_out),
        "co2e_g_per_1k_output_tokens": serving_g * share / t_out * 1000,
    }
