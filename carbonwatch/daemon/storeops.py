"""The daemon's SQL: writes that run inside one writer task's transaction (``Store`` helpers join
it), and reads for the API. A call batch, or a flush of minute rows together with the job totals
they add to, commits as one transaction."""

from __future__ import annotations

import json
import math
import sqlite3
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from carbonwatch.model import job_consumer, job_of_consumer
from carbonwatch.store import Store, jobs
from carbonwatch.tokens import per_token

CALL_MINUTE_UPSERT = """
    INSERT INTO call_minute (minute_s, model, calls, busy_s, energy_j, co2e_g, cost,
        tokens_in, tokens_out, token_calls, token_energy_j)
    VALUES (:minute_s, :model, :calls, :busy_s, :energy_j, :co2e_g, :cost,
        :tokens_in, :tokens_out, :token_calls, :token_energy_j)
    ON CONFLICT (minute_s, model) DO UPDATE SET
        calls = calls + excluded.calls, busy_s = busy_s + excluded.busy_s,
        energy_j = energy_j + excluded.energy_j, co2e_g = co2e_g + excluded.co2e_g,
        cost = cost + excluded.cost, tokens_in = tokens_in + excluded.tokens_in,
        tokens_out = tokens_out + excluded.tokens_out,
        token_calls = token_calls + excluded.token_calls,
        token_energy_j = token_energy_j + excluded.token_energy_j
"""
# A minute row from a writer that knows nothing of tokens (older code, tests) reported none.
NO_TOKENS = {"tokens_in": 0, "tokens_out": 0, "token_calls": 0, "token_energy_j": 0.0}



# --- writes (inside a writer task) ---------------------------------------------------------------


def insert_job(conn: sqlite3.Connection, row: Mapping[str, Any]) -> None:
    """A job registered with the daemon, ``running`` (through the jobs table's one inserter)."""
    jobs.insert(conn, {
        **{k: row.get(k) for k in _REGISTERED},
        "status": "running",
        "pids": sorted(row["pids"]),
        "tags": row.get("tags") or {},
        "provenance": row.get("provenance") or {},
    })


_REGISTERED = ("id", "name", "kind", "model", "command", "identity", "source", "started_s",
               "cost", "currency", "owner_uid")


def set_job_pids(conn: sqlite3.Connection, job_id: str, pids: Iterable[int]) -> None:
    conn.execute("UPDATE jobs SET pids = ? WHERE id = ?", [json.dumps(sorted(pids)), job_id])


def end_job(
    conn: sqlite3.Connection, job_id: str, *, status: str, ended_s: float, exit_code: int | None,
    pids: Iterable[int],
) -> None:
    conn.execute(
        "UPDATE jobs SET status = ?, ended_s = ?, exit_code = ?, pids = ? WHERE id = ?",
        [status, ended_s, exit_code, json.dumps(sorted(pids)), job_id],
    )


def report_lost_end(
    conn: sqlite3.Connection, job_id: str, *, status: str, exit_code: int | None
) -> None:
    """A late end report of a job marked lost: its status and exit code, nothing else."""
    conn.execute(
        "UPDATE jobs SET status = ?, exit_code = ? WHERE id = ? AND status = 'lost'",
        [status, exit_code, job_id],
    )


def add_energy_minutes(store: Store, rows: Sequence[dict[str, Any]]) -> None:
    """Add minute rows, and the same energy to the jobs' totals, so that a job's energy_j always
    equals the sum of its energy_minute rows (both commit together)."""
    if not rows:
        return
    store.add_energy_minutes(rows)
    conn = store.conn
    per_job: dict[str, list[Any]] = {}
    for r in rows:
        job_id = job_of_consumer(r["consumer"])
        if job_id is None:
            continue
        acc = per_job.setdefault(job_id, [0.0, 0.0, 0.0, defaultdict(float)])
        acc[0] += r["energy_j"]
        acc[1] += r["co2e_g"]
        acc[2] += r["cost"]
        acc[3][r["device_id"]] += r["energy_j"]
    for job_id, (energy_j, carbon_g, cost, by_device) in per_job.items():
        found = conn.execute("SELECT energy_by_device FROM jobs WHERE id = ?", [job_id]).fetchone()
        if found is None:
            continue
        merged = json.loads(found[0] or "{}")
        for device_id, e in by_device.items():
            merged[device_id] = merged.get(device_id, 0.0) + e
        conn.execute(
            "UPDATE jobs SET energy_j = energy_j + ?, co2e_g = co2e_g + ?,"
            " cost = CASE WHEN cost IS NULL THEN NULL ELSE cost + ? END, energy_by_device = ?"
            " WHERE id = ?",
            [energy_j, carbon_g, cost, json.dumps(merged), job_id],
        )


def insert_call_batch(
    conn: sqlite3.Connection, batch_id: int, received_s: float, calls: int, dropped: int,
    body: bytes, consumers: Mapping[str, str],
) -> None:
    """The batch and its request body (``pending`` until every call in it is settled)."""
    conn.execute(
        "INSERT INTO call_batches (id, received_s, calls, dropped_before, pending, consumers)"
        " VALUES (?, ?, ?, ?, ?, ?)",
        [batch_id, received_s, calls, dropped, body if calls else None, json.dumps(consumers)],
    )


def settle_batches(
    conn: sqlite3.Connection,
    batch_ids: Sequence[int],
    minute_rows: Sequence[Mapping[str, Any]],
    job_calls: Mapping[str, tuple[int, float]],
    between_j: Mapping[str, float],
) -> None:
    """Record settled batches: minute rollups, per-job call totals, and clear the batches'
    pending bodies (they no longer need re-reading after a restart)."""
    if minute_rows:
        conn.executemany(CALL_MINUTE_UPSERT, (
            r if "tokens_in" in r else {**r, **NO_TOKENS} for r in minute_rows))
    for consumer, (calls, energy_j) in job_calls.items():
        if (job_id := job_of_consumer(consumer)) is not None:
            conn.execute(
                "UPDATE jobs SET calls = calls + ?, calls_energy_j = calls_energy_j + ?"
                " WHERE id = ?",
                [calls, energy_j, job_id],
            )
    for consumer, energy_j in between_j.items():
        if (job_id := job_of_consumer(consumer)) is not None:
            conn.execute(
                "UPDATE jobs SET between_calls_j = between_calls_j + ? WHERE id = ?",
                [energy_j, job_id],
            )
    if batch_ids:
        conn.executemany(
            "UPDATE call_batches SET pending = NULL WHERE id = ?", [(b,) for b in batch_ids]
        )


def log_calls(conn: sqlite3.Connection, rows: Sequence[tuple[Any, ...]], keep: int) -> None:
    """Append settled calls to the raw call log and keep only its newest ``keep`` rows (ids only
    grow, so trimming is one range delete)."""
    if not rows or keep <= 0:
        return
    conn.executemany(
        "INSERT INTO calls (batch_id, model, pid, start_s, end_s, tags, energy_j, weight,"
        " tokens_in, tokens_out) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        rows,
    )
    conn.execute("DELETE FROM calls WHERE id <= (SELECT MAX(id) FROM calls) - ?", [keep])


def set_meta(conn: sqlite3.Connection, key: str, value: Any) -> None:
    conn.execute(
        "INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET"
        " value = excluded.value",
        [key, json.dumps(value)],
    )


# --- reads (any connection) ------------------------------------------------------------------


def get_meta(conn: sqlite3.Connection, key: str) -> Any:
    row = conn.execute("SELECT value FROM meta WHERE key = ?", [key]).fetchone()
    return json.loads(row[0]) if row else None


def running_jobs(store: Store) -> list[dict[str, Any]]:
    """The daemon's running jobs. Not those a wrapper measures on its own (source 'run'): the
    wrapper writes their energy itself, and the daemon measuring them too would count it twice."""
    return [jobs.decode(r) for r in store.db.query(
        "SELECT * FROM jobs WHERE status = 'running' AND source != 'run'")]


def pending_batches(conn: sqlite3.Connection) -> list[tuple[int, bytes, dict[str, str]]]:
    rows = conn.execute(
        "SELECT id, pending, consumers FROM call_batches WHERE pending IS NOT NULL ORDER BY id"
    ).fetchall()
    return [(int(i), bytes(body), json.loads(consumers or "{}")) for i, body, consumers in rows]


def energy_totals(conn: sqlite3.Connection) -> list[tuple[str, str, str, str, float, float, float]]:
    """(consumer, phase, model, device_id, energy_j, co2e_g, cost) summed over all time."""
    return conn.execute(
        "SELECT consumer, phase, model, device_id, SUM(energy_j), SUM(co2e_g), SUM(cost)"
        " FROM energy_minute GROUP BY consumer, phase, model, device_id"
    ).fetchall()


def job_names_and_ends(
    conn: sqlite3.Connection, job_ids: Iterable[str]
) -> dict[str, tuple[str, float | None]]:
    """id -> (name, ended_s); ended_s is None while the job runs."""
    ids = list(job_ids)
    out: dict[str, tuple[str, float | None]] = {}
    for i in range(0, len(ids), 500):
        chunk = ids[i:i + 500]
        marks = ",".join("?" * len(chunk))
        for job_id, name, status, ended_s in conn.execute(
            f"SELECT id, name, status, ended_s FROM jobs WHERE id IN ({marks})", chunk  # noqa: S608
        ):
            out[job_id] = (name, None if status == "running" else float(ended_s or 0.0))
    return out


def calls_by_model(conn: sqlite3.Connection) -> dict[str, int]:
    return dict(conn.execute("SELECT model, SUM(calls) FROM call_minute GROUP BY model"))


def tokens_by_model(conn: sqlite3.Connection) -> dict[tuple[str, str], int]:
    """(model, "in" | "out") -> tokens over all time (the token counter's seed)."""
    out: dict[tuple[str, str], int] = {}
    for model, t_in, t_out in conn.execute(
        "SELECT model, SUM(tokens_in), SUM(tokens_out) FROM call_minute GROUP BY model"
        " HAVING SUM(tokens_in) > 0 OR SUM(tokens_out) > 0"
    ):
        if t_in:
            out[(model, "in")] = int(t_in)
        if t_out:
            out[(model, "out")] = int(t_out)
    return out


def dropped_spans(conn: sqlite3.Connection) -> int:
    """Spans clients reported dropping, over every batch received.

    TOTAL, not SUM: SUM of integers raises "integer overflow" past 2^63, and a store holding
    such values (older daemons accepted 2^62 per batch) must still open. TOTAL sums as a float."""
    return int(conn.execute("SELECT TOTAL(dropped_before) FROM call_batches").fetchone()[0])


def list_jobs(store: Store, status: str | None, limit: int) -> list[dict[str, Any]]:
    sql, args = "SELECT * FROM jobs", []
    if status is not None:
        sql += " WHERE status = ?"
        args.append(status)
    sql += " ORDER BY started_s DESC, id LIMIT ?"
    args.append(limit)
    return [jobs.decode(r) for r in store.db.query(sql, args)]


def summary(
    conn: sqlite3.Connection, group_by: str, since_s: float | None, until_s: float | None
) -> list[dict[str, Any]]:
    """Energy, carbon and cost per phase, model or job over [since, until) at minute resolution;
    calls from the per-model call rollups (per job: the job's settled calls)."""
    lo = -math.inf if since_s is None else math.floor(since_s / 60) * 60
    hi = math.inf if until_s is None else until_s
    column = {"phase": "phase", "model": "model", "job": "consumer"}[group_by]
    rows = conn.execute(
        f"SELECT {column}, SUM(energy_j), SUM(co2e_g), SUM(cost) FROM energy_minute"  # noqa: S608
        " WHERE minute_s >= ? AND minute_s < ? GROUP BY 1 ORDER BY 2 DESC",
        [lo, hi],
    ).fetchall()
    groups = {
        key: {"key": key, "energy_j": e or 0.0, "co2e_g": g or 0.0, "cost": c or 0.0, "calls": 0}
        for key, e, g, c in rows
    }
    if group_by == "model":
        _add_token_figures(conn, groups, lo, hi)
    elif group_by == "phase":
        calls = conn.execute(
            "SELECT model, SUM(calls) FROM call_minute WHERE minute_s >= ? AND minute_s < ?"
            " GROUP BY model",
            [lo, hi],
        ).fetchall()
        for _model, n in calls:
            key = "inference"
            group = groups.setdefault(
                key, {"key": key, "energy_j": 0.0, "co2e_g": 0.0, "cost": 0.0, "calls": 0}
            )
            group["calls"] += int(n or 0)
    else:
        ids = [j for k in groups if (j := job_of_consumer(k)) is not None]
        for i in range(0, len(ids), 500):
            chunk = ids[i:i + 500]
            marks = ",".join("?" * len(chunk))
            for job_id, name, n in conn.execute(
                f"SELECT id, name, calls FROM jobs WHERE id IN ({marks})", chunk  # noqa: S608
            ):
                groups[job_consumer(job_id)].update(name=name, calls=int(n))
    return list(groups.values())


def _add_token_figures(
    conn: sqlite3.Connection, groups: dict[Any, dict[str, Any]], lo: float, hi: float
) -> None:
    """Per model: calls, tokens and the per-token figures (carbonwatch.tokens) over [lo, hi)."""
    serving = {model: (e or 0.0, g or 0.0) for model, e, g in conn.execute(
        "SELECT model, SUM(energy_j), SUM(co2e_g) FROM energy_minute"
        " WHERE minute_s >= ? AND minute_s < ? AND phase = 'inference' GROUP BY model", [lo, hi])}
    calls = {row[0]: row[1:] for row in conn.execute(
        "SELECT model, SUM(calls), SUM(energy_j), SUM(tokens_in), SUM(tokens_out),"
        " SUM(token_calls), SUM(token_energy_j) FROM call_minute"
        " WHERE minute_s >= ? AND minute_s < ? GROUP BY model", [lo, hi])}
    for model in calls.keys() - groups.keys():
        groups[model] = {"key": model, "energy_j": 0.0, "co2e_g": 0.0, "cost": 0.0, "calls": 0}
    for model, group in groups.items():
        n, calls_j, t_in, t_out, t_calls, t_j = calls.get(model, (0, 0.0, 0, 0, 0, 0.0))
        energy_j, carbon_g = serving.get(model, (0.0, 0.0))
        group["calls"] = int(n or 0)
        group["inference_energy_j"] = energy_j
        group["inference_co2e_g"] = carbon_g
        group.update(per_token(
            serving_energy_j=energy_j, serving_co2e_g=carbon_g, calls=int(n or 0),
            calls_energy_j=calls_j or 0.0, tokens_in=int(t_in or 0), tokens_out=int(t_out or 0),
            token_calls=int(t_calls or 0), token_energy_j=t_j or 0.0))
