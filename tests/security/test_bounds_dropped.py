"""Finding 3: a batch's ``dropped`` count is capped per request and summed without overflow, and
a store that already holds counts whose SUM overflows still opens (it once could not: the
daemon never started again, telling the operator the file might be damaged)."""

from __future__ import annotations

import sqlite3

from daemon_helpers import DaemonProcess

HUGE = 2**62  # twice this overflows a signed 64-bit SUM


def _dropped_metric(text: str) -> float:
    for line in text.splitlines():
        if line.startswith("carbonwatch_inference_spans_dropped"):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError("no carbonwatch_inference_spans_dropped in /metrics")


def test_a_huge_dropped_count_is_refused_and_the_daemon_restarts(tmp_path):
    from carbonwatch.daemon.validation import MAX_DROPPED_PER_REQUEST

    daemon = DaemonProcess(tmp_path / "cw.db", "--backend", "none").start()
    try:
        answers = [daemon.request("POST", "/v1/calls", {"calls": [], "dropped": HUGE})
                   for _ in range(2)]
        ok = daemon.request("POST", "/v1/calls",
                            {"calls": [], "dropped": MAX_DROPPED_PER_REQUEST})
    finally:
        assert daemon.stop() == 0
    for status, body in answers:
        assert status == 400
        assert "dropped" in body["error"] and str(MAX_DROPPED_PER_REQUEST) in body["error"]
    assert ok[0] == 200
    daemon.start()
    try:
        status, text = daemon.request("GET", "/metrics")
        assert status == 200
        assert _dropped_metric(text) == MAX_DROPPED_PER_REQUEST
    finally:
        assert daemon.stop() == 0


def test_a_store_whose_dropped_counts_overflow_sum_still_opens(tmp_path):
    """Rows an older daemon accepted (2^62 twice): the start sums them as a float and serves."""
    db = tmp_path / "cw.db"
    daemon = DaemonProcess(db, "--backend", "none").start()
    assert daemon.stop() == 0
    with sqlite3.connect(db) as conn:
        conn.executemany(
            "INSERT INTO call_batches (id, received_s, calls, dropped_before, pending, consumers)"
            " VALUES (?, 0, 0, ?, NULL, '{}')", [(1, HUGE), (2, HUGE)])
        try:  # the overflow this guards against, on this SQLite
            conn.execute("SELECT SUM(dropped_before) FROM call_batches").fetchone()
            raise AssertionError("SUM did not overflow: the test would prove nothing")
        except sqlite3.OperationalError as exc:
            assert "overflow" in str(exc)
    daemon.start()
    try:
        status, health = daemon.request("GET", "/healthz")
        assert status == 200, health
        assert _dropped_metric(daemon.request("GET", "/metrics")[1]) == float(2 * HUGE)
    finally:
        assert daemon.stop() == 0
    assert "Traceback" not in "".join(daemon.stderr)
