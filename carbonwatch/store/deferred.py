"""The ``deferred_jobs`` table: rows in and out, and what the scheduler reads of ``jobs`` and
``energy_minute`` for a deferred job (the name's history, the run's record, its minutes).

Functions over a connection that never commit: writes run inside the daemon's writer tasks
(the writer owns the transaction), reads on its read-only connection. Nothing here decides
anything; the scheduler types a row as :class:`carbonwatch.scheduler.job.DeferredJob`."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Mapping
from typing import Any

from carbonwatch.model import job_consumer

_JSON = ("command", "env", "plan", "runs")


def _row(cursor: sqlite3.Cursor, values: tuple[Any, ...]) -> dict[str, Any]:
    out = {d[0]: v for d, v in zip(cursor.description, values, strict=True)}
    for key in _JSON:
        if isinstance(out.get(key), str):
            out[key] = json.loads(out[key])
    out["interruptible"] = bool(out.get("interruptible"))
    return out


def _encode(fields: Mapping[str, Any]) -> dict[str, Any]:
    return {k: json.dumps(v) if k in _JSON and v is not None else v for k, v in fields.items()}


def insert(conn: sqlite3.Connection, row: Mapping[str, Any]) -> None:
    data = _encode(row)
    names = ", ".join(data)
    marks = ", ".join(f":{k}" for k in data)
    conn.execute(f"INSERT INTO deferred_jobs ({names}) VALUES ({marks})", data)  # noqa: S608 - names are ours


def update(conn: sqlite3.Connection, deferred_id: str, /, **fields: Any) -> None:
    data = _encode(fields)
    sets = ", ".join(f"{k} = :{k}" for k in data)
    conn.execute(f"UPDATE deferred_jobs SET {sets} WHERE id = :_id", {**data, "_id": deferred_id})  # noqa: S608


def get(conn: sqlite3.Connection, job_id: str) -> dict[str, Any] | None:
    cur = conn.execute("SELECT * FROM deferred_jobs WHERE id = ?", [job_id])
    found = cur.fetchone()
    return _row(cur, found) if found else None


def rows(
    conn: sqlite3.Connection, statuses: tuple[str, ...] | None = None, limit: int = 1000
) -> list[dict[str, Any]]:
    sql, args = "SELECT * FROM deferred_jobs", []
    if statuses:
        sql += f" WHERE status IN ({', '.join('?' * len(statuses))})"
        args += list(statuses)
    cur = conn.execute(sql + " ORDER BY submitted_s DESC LIMIT ?", [*args, limit])
    return [_row(cur, r) for r in cur.fetchall()]


def history(conn: sqlite3.Connection, name: str) -> tuple[int, float | None, float | None]:
    """(finished runs, mean duration s, mean power W) of the finished jobs named ``name``."""
    count, total_s, total_j = conn.execute(
        "SELECT COUNT(*), SUM(ended_s - started_s), SUM(energy_j) FROM jobs"
        " WHERE name = ? AND status = 'finished' AND ended_s > started_s",
        [name],
    ).fetchone()
    if not count:
        return 0, None, None
    return count, total_s / count, (total_j / total_s if total_s else None)


def find_job(
    conn: sqlite3.Connection, name: str, command: list[str], after_s: float, before_s: float
) -> dict[str, Any] | None:
    """The ``jobs`` row the wrapper recorded for a launch: same name, started while the wrapper
    ran; the same command breaks a tie (the wrapper registers it with the daemon)."""
    cur = conn.execute(
        "SELECT id, command, started_s, ended_s, status, exit_code, energy_j, co2e_g FROM jobs"
        " WHERE name = ? AND started_s >= ? AND started_s <= ? ORDER BY started_s",
        [name, after_s, before_s],
    )
    found = [dict(zip([d[0] for d in cur.description], r, strict=True)) for r in cur.fetchall()]
    same = [r for r in found if r["command"] and json.loads(r["command"]) == command]
    pick = (same or found or [None])[0]
    return pick


def job_minutes(conn: sqlite3.Connection, job_id: str) -> list[tuple[int, float]]:
    """(minute_s, energy_j) of one job, summed over devices."""
    return conn.execute(
        "SELECT minute_s, SUM(energy_j) FROM energy_minute WHERE consumer = ?"
        " GROUP BY minute_s ORDER BY minute_s",
        [job_consumer(job_id)],
    ).fetchall()


def job_by_identity(conn: sqlite3.Connection, identity: str) -> dict[str, Any] | None:
    """The newest ``jobs`` row with this identity (``slurm:<id>``, opened by the Slurm
    prolog): id, co2e_g, energy_j, status."""
    cur = conn.execute(
        "SELECT id, co2e_g, energy_j, status FROM jobs WHERE identity = ?"
        " ORDER BY started_s DESC LIMIT 1", [identity],
    )
    found = cur.fetchone()
    return None if found is None else dict(zip([d[0] for d in cur.description], found,
                                               strict=True))
