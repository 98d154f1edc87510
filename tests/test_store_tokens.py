"""Migration m006_tokens: a store written before it keeps its calls and gains token columns; the
hour and day rollups sum the tokens through every write path, as m004's triggers sum the rest."""

from __future__ import annotations

import sqlite3

from carbonwatch.daemon.flush import Flush, merge_flushes
from carbonwatch.daemon.metrics import MetricTotals
from carbonwatch.daemon.storeops import CALL_MINUTE_UPSERT, NO_TOKENS, settle_batches
from carbonwatch.store import open_store
from carbonwatch.store.migrations import MIGRATIONS

SUMS = "SUM(calls), SUM(energy_j), SUM(tokens_in), SUM(tokens_out), SUM(token_calls)"


def _old_store(path) -> None:
    """A store as carbonwatch wrote it before tokens (schema version 5), with calls in it."""
    conn = sqlite3.connect(path, isolation_level=None)
    index = next(i for i, m in enumerate(MIGRATIONS) if m.__name__.endswith("_tokens"))
    for number, step in enumerate(MIGRATIONS[:index], start=1):
        step(conn)
        conn.execute(f"PRAGMA user_version = {number}")
    conn.executemany(
        "INSERT INTO call_minute (minute_s, model, calls, busy_s, energy_j, co2e_g, cost)"
        " VALUES (?, 'm', ?, 1.0, ?, 0.1, 0.0)", [(60, 3, 30.0), (3600 + 60, 2, 20.0)])
    conn.close()


def _rollups_equal_minutes(conn: sqlite3.Connection) -> tuple:
    minutes = conn.execute(f"SELECT {SUMS} FROM call_minute").fetchone()  # noqa: S608
    for table in ("call_hour", "call_day"):
        assert conn.execute(f"SELECT {SUMS} FROM {table}").fetchone() == minutes, table  # noqa: S608
    return minutes


def test_an_old_store_gains_token_columns_and_its_rollups_sum_tokens(tmp_path):
    db = tmp_path / "cw.db"
    _old_store(db)
    with open_store(db) as store:
        conn = store.conn
        assert store.schema_version == len(MIGRATIONS)
        # Old calls reported no tokens: zeros, so their per-token figures stay unknown.
        assert _rollups_equal_minutes(conn) == (5, 50.0, 0, 0, 0)
        with store.transaction():
            settle_batches(conn, [], [
                {"minute_s": 60, "model": "m", "calls": 2, "busy_s": 1.0, "energy_j": 4.0,
                 "co2e_g": 0.1, "cost": 0.0, "tokens_in": 700, "tokens_out": 90,
                 "token_calls": 2, "token_energy_j": 4.0},  # adds to an old minute (upsert)
                {"minute_s": 7200, "model": "m", "calls": 1, "busy_s": 1.0, "energy_j": 1.0,
                 "co2e_g": 0.1, "cost": 0.0, "tokens_in": 5, "tokens_out": 7,
                 "token_calls": 1, "token_energy_j": 1.0},  # a new minute (insert)
                {"minute_s": 7200, "model": "x", "calls": 1, "busy_s": 1.0, "energy_j": 1.0,
                 "co2e_g": 0.1, "cost": 0.0},  # a writer that knows nothing of tokens
            ], {}, {})
        assert _rollups_equal_minutes(conn) == (9, 56.0, 705, 97, 3)
        assert conn.execute("SELECT tokens_in, tokens_out, token_calls, token_energy_j"
                            " FROM call_hour WHERE hour_s = 0").fetchone() == (700, 90, 2, 4.0)
        with store.transaction():  # update and delete paths of the triggers
            conn.execute("UPDATE call_minute SET tokens_out = tokens_out + 10 WHERE minute_s = 60")
            conn.execute("DELETE FROM call_minute WHERE minute_s = 7200 AND model = 'm'")
        assert _rollups_equal_minutes(conn) == (8, 55.0, 700, 100, 2)
        # The raw call log keeps each call's work measures (NULL: not reported).
        columns = {r[1] for r in conn.execute("PRAGMA table_info(calls)")}
        assert {"weight", "tokens_in", "tokens_out"} <= columns


def test_the_migration_repeats_cleanly_after_a_cut_short_run(tmp_path):
    """Columns are guarded and triggers rebuilt: running m006 twice changes nothing."""
    db = tmp_path / "cw.db"
    _old_store(db)
    open_store(db).close()
    conn = sqlite3.connect(db, isolation_level=None)
    next(m for m in MIGRATIONS if m.__name__.endswith("_tokens"))(conn)
    conn.execute(CALL_MINUTE_UPSERT, {"minute_s": 120, "model": "m", "calls": 1, "busy_s": 1.0,
                                      "energy_j": 1.0, "co2e_g": 0.0, "cost": 0.0, **NO_TOKENS,
                                      "tokens_out": 3, "token_calls": 1})
    assert _rollups_equal_minutes(conn) == (6, 51.0, 0, 3, 1)  # summed once, not twice
    conn.close()


def test_flushes_the_store_refused_keep_their_tokens_when_merged():
    def flush(minute_s: int, tokens_in: int, tokens_out: int) -> Flush:
        return Flush(energy_rows=[], batch_ids=[], call_rows=[], call_minutes=[{
            "minute_s": minute_s, "model": "llm", "calls": 2, "busy_s": 1.0, "energy_j": 2.0,
            "co2e_g": 0.2, "cost": 0.0, "tokens_in": tokens_in, "tokens_out": tokens_out,
            "token_calls": 2, "token_energy_j": 2.0}], job_calls={}, between_j={},
            metric_energy=[], sampled_until_s=None)

    merged, _ = merge_flushes([flush(60, 10, 3), flush(60, 5, 4), flush(120, 1, 1)], 10)
    by_minute = {r["minute_s"]: r for r in merged.call_minutes}
    assert (by_minute[60]["tokens_in"], by_minute[60]["tokens_out"],
            by_minute[60]["token_calls"]) == (15, 7, 4)
    totals = MetricTotals()
    merged.published(totals)
    assert totals.tokens() == {("llm", "in"): 16, ("llm", "out"): 8}
