"""Finding 6: distinct model names are capped (max_label_values); the rest are folded into
'other' and counted, so /metrics, memory and the per-minute rollups do not grow by one series
per name a client makes up."""

from __future__ import annotations

import re
import sqlite3
import time

from daemon_helpers import DaemonProcess

CAP = 50


def _models_on_metrics(text: str) -> set[str]:
    return set(re.findall(r'carbonwatch_inference_calls_total\{model="([^"]*)"', text))


def _folded(text: str) -> float:
    line = next(x for x in text.splitlines()
                if x.startswith("carbonwatch_label_values_folded_total"))
    return float(line.rsplit(" ", 1)[1])


def test_thirty_thousand_model_names_fold_into_other(tmp_path):
    daemon = DaemonProcess(tmp_path / "cw.db", "--backend", "none",
                           env={"CARBONWATCH_MAX_LABEL_VALUES": str(CAP)}).start()
    try:
        now = time.time()
        for b in range(3):
            calls = [{"model": f"model-{b}-{i}", "start": now - 2.0, "end": now - 1.0}
                     for i in range(10_000)]
            assert daemon.request("POST", "/v1/calls", {"calls": calls})[0] == 200
        status, job = daemon.request("POST", "/v1/jobs",
                                     {"name": "j", "kind": "inference", "model": "late-model"})
        assert status == 201
        daemon.wait_for(lambda: daemon.request("GET", "/healthz")[1]["pending_calls"] == 0)
        daemon.wait_for(lambda: "other" in _models_on_metrics(daemon.request("GET", "/metrics")[1]))
        text = daemon.request("GET", "/metrics")[1]
    finally:
        assert daemon.stop() == 0
    models = _models_on_metrics(text)
    assert len(models) == CAP + 1 and "other" in models
    assert _folded(text) == 30_000 - CAP + 1  # every call past the cap, and the late job
    assert len(text) < 64 * 1024
    with sqlite3.connect(daemon.db) as conn:
        assert conn.execute("SELECT SUM(calls) FROM call_minute").fetchone()[0] == 30_000
        assert conn.execute("SELECT COUNT(DISTINCT model) FROM call_minute").fetchone()[0] \
            == CAP + 1
        assert conn.execute("SELECT COUNT(*) FROM call_minute").fetchone()[0] <= 2 * (CAP + 1)
    # a restart keeps the same names: the places go to the models already stored
    daemon.start()
    try:
        again = daemon.request("GET", "/metrics")[1]
    finally:
        assert daemon.stop() == 0
    assert _models_on_metrics(again) == models


def _tokens_models(text: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for model, value in re.findall(
            r'carbonwatch_inference_tokens_total\{direction="out",model="([^"]*)"[^}]*\} (\S+)',
            text):
        out[model] = out.get(model, 0.0) + float(value)
    return out


def test_a_store_with_more_names_than_the_cap_starts_folded_tokens_included(tmp_path):
    """A store written under a larger cap (or before there was one): after a restart with a
    smaller one, calls and tokens alike show at most the cap's names, the rest as 'other', and
    no token is lost in the fold."""
    db = tmp_path / "cw.db"
    daemon = DaemonProcess(db, "--backend", "none").start()
    try:
        now = time.time()
        calls = [{"model": f"m-{i}", "start": now - 2.0, "end": now - 1.0, "tokens_out": 3}
                 for i in range(40)]
        assert daemon.request("POST", "/v1/calls", {"calls": calls})[0] == 200
        daemon.wait_for(lambda: len(_tokens_models(daemon.request("GET", "/metrics")[1])) == 40)
    finally:
        assert daemon.stop() == 0
    small = DaemonProcess(db, "--backend", "none", env={"CARBONWATCH_MAX_LABEL_VALUES": "5"})
    small.start()
    try:
        text = small.request("GET", "/metrics")[1]
    finally:
        assert small.stop() == 0
    tokens = _tokens_models(text)
    assert len(tokens) == 6 and "other" in tokens, sorted(tokens)
    assert sum(tokens.values()) == 40 * 3
    assert set(tokens) == _models_on_metrics(text)
