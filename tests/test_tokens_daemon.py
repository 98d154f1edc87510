"""Tokens end to end through real daemon processes: the H200 trace replayed, its calls sent with
tokens (some without), more from the Python client's ``set_tokens``; then the store, the summary,
/metrics (across a restart) and ``report --model`` checked against plain SQL on the store and
against the tokens the test itself sent."""

from __future__ import annotations

import json
import math
import sqlite3
import subprocess
import sys
import time
from typing import Any

import pytest
from daemon_helpers import MODEL, DaemonProcess
from prometheus_client.parser import text_string_to_metric_families
from token_helpers import CLIENT_MODEL, make_token_store, sql_figures


@pytest.fixture(scope="module")
def token_store(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return make_token_store(tmp_path_factory.mktemp("tokens") / "cw.db")


def test_the_store_holds_the_tokens_sent_in_every_rollup(token_store):
    db, calls, client = token_store["db"], token_store["calls"], token_store["client"]
    sent_in = sum(c.get("tokens_in", 0) for c in calls)
    sent_out = sum(c.get("tokens_out", 0) for c in calls)
    with sqlite3.connect(db) as conn:
        raw = dict(conn.execute(
            "SELECT model, json_array(SUM(tokens_in), SUM(tokens_out), COUNT(tokens_out),"
            " COUNT(*)) FROM calls GROUP BY model").fetchall())
        tables = {t: dict(conn.execute(
            f"SELECT model, json_array(SUM(tokens_in), SUM(tokens_out), SUM(token_calls),"  # noqa: S608
            f" SUM(calls)) FROM {t} GROUP BY model").fetchall())
            for t in ("call_minute", "call_hour", "call_day")}
        weights = conn.execute("SELECT COUNT(weight), SUM(weight) FROM calls WHERE model = ?",
                               [MODEL]).fetchone()
        energy_share = conn.execute(
            "SELECT SUM(token_energy_j) FROM call_minute WHERE model = ?", [MODEL]).fetchone()[0]
        raw_share = conn.execute(
            "SELECT SUM(energy_j) FROM calls WHERE model = ? AND tokens_out IS NOT NULL",
            [MODEL]).fetchone()[0]
    with_tokens = [c for c in calls if "tokens_out" in c]
    assert json.loads(raw[MODEL]) == [sent_in, sent_out, len(with_tokens), len(calls)]
    # What the Python client's set_tokens sent reached the store, call by call.
    assert json.loads(raw[CLIENT_MODEL]) == [client["tokens_in"], client["tokens_out"],
                                             client["calls"], client["calls"]]
    for table, rows in tables.items():
        assert {m: json.loads(v) for m, v in rows.items()} == \
            {m: json.loads(v) for m, v in raw.items()}, table
    assert weights == (len(with_tokens), sum(c["weight"] for c in with_tokens))
    assert energy_share == pytest.approx(raw_share, rel=1e-9)
    assert raw_share > 0


def _metric_tokens(text: str) -> dict[tuple[str, str], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "carbonwatch_inference_tokens_total":
                out[(sample.labels["model"], sample.labels["direction"])] = sample.value
    return out


def test_summary_and_metrics_agree_with_sql_and_survive_a_restart(token_store):
    db = token_store["db"]
    expected = sql_figures(db, MODEL)
    assert 0 < expected["token_energy_share"] < 1  # a fifth of the calls reported no tokens
    with sqlite3.connect(db) as conn:
        sql_tokens = {}
        for model, t_in, t_out in conn.execute(
                "SELECT model, SUM(tokens_in), SUM(tokens_out) FROM calls GROUP BY model"):
            sql_tokens[(model, "in")], sql_tokens[(model, "out")] = t_in, t_out
    with DaemonProcess(db, "--backend", "none") as daemon:
        status, summary = daemon.request("GET", "/v1/summary?group_by=model")
        assert status == 200, summary
        groups = {g["key"]: g for g in summary["groups"]}
        got = groups[MODEL]
        for name in ("calls", "tokens_in", "tokens_out", "token_calls"):
            assert got[name] == expected[name], name
        for name in ("token_energy_share", "energy_j_per_output_token", "energy_j_per_token",
                     "co2e_g_per_1k_output_tokens"):
            assert got[name] == pytest.approx(expected[name], rel=1e-9), name
        assert got["inference_energy_j"] == pytest.approx(expected["serving_energy_j"], rel=1e-9)
        # Joules per output token and per token differ by the prompt: both are given.
        assert got["energy_j_per_token"] < got["energy_j_per_output_token"]
        assert groups[CLIENT_MODEL]["tokens_out"] == token_store["client"]["tokens_out"]

        # The counter starts from the store: a restart is no reset.
        _, text = daemon.request("GET", "/metrics")
        assert _metric_tokens(text) == pytest.approx(sql_tokens)

        # New calls add exactly their tokens once settled.
        now = time.time()
        late = [{"model": "late-llm", "start": now - 120 + i, "end": now - 119.5 + i,
                 "tokens_in": 1000, "tokens_out": 10 + i} for i in range(5)]
        late.append({"model": "late-llm", "start": now - 100, "end": now - 99})  # no tokens
        status, body = daemon.request("POST", "/v1/calls", {"calls": late})
        assert status == 200, body

        def grown() -> dict[tuple[str, str], float] | None:
            _, text = daemon.request("GET", "/metrics")
            tokens = _metric_tokens(text)
            return tokens if ("late-llm", "out") in tokens else None

        tokens = daemon.wait_for(grown)
        assert tokens == pytest.approx({**sql_tokens, ("late-llm", "in"): 5000,
                                        ("late-llm", "out"): 60})
        status, summary = daemon.request("GET", "/v1/summary?group_by=model")
        late_group = {g["key"]: g for g in summary["groups"]}["late-llm"]
        # No measured service ran its calls: tokens counted, energy per token unknown (not 0).
        assert (late_group["calls"], late_group["token_calls"], late_group["tokens_out"]) == (
            6, 5, 60)
        assert late_group["energy_j_per_output_token"] is None
        assert late_group["co2e_g_per_1k_output_tokens"] is None


def test_a_model_without_tokens_has_null_per_token_figures(tmp_path):
    with DaemonProcess(tmp_path / "cw.db", "--backend", "none") as daemon:
        now = time.time()
        status, _ = daemon.request("POST", "/v1/calls", {"calls": [
            {"model": "cnn", "start": now - 90, "end": now - 89, "weight": 64}]})
        assert status == 200

        def settled() -> dict[str, Any] | None:
            _, summary = daemon.request("GET", "/v1/summary?group_by=model")
            return next((g for g in summary["groups"] if g["key"] == "cnn"), None)

        group = daemon.wait_for(settled)
    assert (group["calls"], group["tokens_in"], group["tokens_out"], group["token_calls"]) == (
        1, 0, 0, 0)
    for name in ("token_energy_share", "energy_j_per_output_token", "energy_j_per_token",
                 "co2e_g_per_1k_output_tokens"):
        assert group[name] is None, name  # unknown, not zero


@pytest.mark.parametrize(("call", "field", "why"), [
    ({"tokens_out": -1}, "calls[1].tokens_out", "between 0 and"),
    ({"tokens_in": float("nan")}, "calls[1].tokens_in", "finite"),
    ({"tokens_out": float("inf")}, "calls[1].tokens_out", "finite"),
    ({"tokens_in": 2.5}, "calls[1].tokens_in", "integer"),
    ({"tokens_out": 10**9 + 1}, "calls[1].tokens_out", "between 0 and"),
    ({"weight": 1e30}, "calls[1].weight", "between 0 and"),
    ({"weight": 10**400}, "calls[1].weight", "between 0 and"),  # an integer no float holds
    ({"weight": -0.5}, "calls[1].weight", "between 0 and"),
    ({"weight": float("nan")}, "calls[1].weight", "finite"),
    ({"weight": "64"}, "calls[1].weight", "expected a number"),
    ({"model": None, "tokens_out": 5}, "calls[1].model", "tokens_out"),
])
def test_bad_work_measures_are_refused_naming_the_field(bad_daemon, call, field, why):
    good = {"model": "m", "start": 100.0, "end": 101.0}
    bad_call = {**good, **call}
    if bad_call.get("model") is None:
        del bad_call["model"]
    # NaN and Infinity are not JSON: written as a client that emits them (Python's json) would.
    raw = json.dumps({"calls": [good, bad_call]}, allow_nan=True).encode()
    status, body = bad_daemon.request("POST", "/v1/calls", raw=raw)
    assert status == 400, body
    assert body["error"].startswith(field + ":"), body
    assert why in body["error"], body
    with sqlite3.connect(bad_daemon.db) as conn:
        assert conn.execute("SELECT COUNT(*) FROM call_batches").fetchone()[0] == 0


@pytest.fixture(scope="module")
def bad_daemon(tmp_path_factory: pytest.TempPathFactory):
    with DaemonProcess(tmp_path_factory.mktemp("bad") / "cw.db", "--backend", "none") as daemon:
        yield daemon


def test_report_model_gives_the_per_token_figures_of_the_sql(token_store):
    db = token_store["db"]
    expected = sql_figures(db, MODEL)
    run = subprocess.run(  # noqa: S603
        [sys.executable, "-m", "carbonwatch", "report", "--db", str(db), "--model", MODEL,
         "--format", "json"], capture_output=True, text=True, timeout=60, check=False)
    assert run.returncode == 0, run.stderr
    inference = json.loads(run.stdout)["inference"]
    for name in ("tokens_in", "tokens_out", "token_calls"):
        assert inference[name] == expected[name], name
    for name in ("token_energy_share", "energy_j_per_output_token", "energy_j_per_token",
                 "co2e_g_per_1k_output_tokens"):
        assert inference[name] == pytest.approx(expected[name], rel=1e-9), name
    markdown = subprocess.run(  # noqa: S603
        [sys.executable, "-m", "carbonwatch", "report", "--db", str(db), "--model", MODEL],
        capture_output=True, text=True, timeout=60, check=False).stdout
    assert f"{expected['energy_j_per_output_token']:,.4g} J per output token" in markdown
    assert f"{expected['energy_j_per_token']:,.4g} J per token" in markdown
    assert f"{expected['co2e_g_per_1k_output_tokens']:,.4g} g CO2e per 1,000 output" in markdown
    assert not math.isnan(expected["energy_j_per_output_token"])


def test_tokens_of_an_acknowledged_batch_survive_kill_9(tmp_path):
    """A batch is acknowledged once committed: its tokens are re-read after a crash, counted
    once, never lost."""
    db = tmp_path / "cw.db"
    now = time.time()
    calls = [{"model": "llm", "start": now + 30 + i, "end": now + 30.5 + i,
              "tokens_in": 1000 + i, "tokens_out": 7 * i, "weight": 1.5} for i in range(50)]
    daemon = DaemonProcess(db, "--backend", "none").start()
    try:
        status, body = daemon.request("POST", "/v1/calls", {"calls": calls})
        assert status == 200, body
    finally:
        daemon.kill()  # before any of them could settle: they end in the future
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT COUNT(*) FROM call_minute").fetchone()[0] == 0
    with DaemonProcess(db, "--backend", "none") as again:
        assert any("re-read 1 acknowledged call batch" in line for line in again.stderr), \
            again.stderr
    assert again.proc is not None and again.proc.returncode == 0  # SIGTERM settles them all
    with sqlite3.connect(db) as conn:
        got = conn.execute("SELECT SUM(calls), SUM(tokens_in), SUM(tokens_out), SUM(token_calls)"
                           " FROM call_minute WHERE model = 'llm'").fetchone()
        logged = conn.execute("SELECT COUNT(*), SUM(weight) FROM calls").fetchone()
    assert got == (50, sum(c["tokens_in"] for c in calls), sum(c["tokens_out"] for c in calls),
                   50)
    assert logged == (50, 75.0)
