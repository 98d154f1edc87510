"""The ``jobs`` table: one encoding of its JSON columns, one inserter, one updater, readers.

Functions over a connection that never commit: the caller owns the transaction
(:meth:`carbonwatch.store.Store.transaction`, or the daemon's writer task)."""

from __future__ import annotations

import contextlib
import json
import sqlite3
import uuid
from collections.abc import Mapping
from typing import Any

# Columns (of jobs, and of deferred_jobs for ``plan``/``env``) stored as JSON text.
JSON_COLUMNS = ("command", "pids", "tags", "energy_by_device", "provenance", "plan", "env")


def encode(fields: Mapping[str, Any]) -> dict[str, Any]:
    """Fields as stored: JSON columns dumped (a str is taken as already encoded)."""
    return {
        k: (json.dumps(v) if k in JSON_COLUMNS and not isinstance(v, str) and v is not None else v)
        for k, v in fields.items()
    }


def decode(row: Mapping[str, Any]) -> dict[str, Any]:
    """A stored row with its JSON columns loaded (an unreadable one is left as text)."""
    out = dict(row)
    for key in JSON_COLUMNS:
        if isinstance(out.get(key), str):
            with contextlib.suppress(json.JSONDecodeError):
                out[key] = json.loads(out[key])
    return out


def insert(conn: sqlite3.Connection, fields: Mapping[str, Any]) -> str:
    """Insert one job (an id is made when none is given); returns its id."""
    job_id = fields.get("id") or uuid.uuid4().hex[:12]
    row = {**encode({k: v for k, v in fields.items() if k != "id"}), "id": job_id}
    columns = ", ".join(row)  # keys are our own column names, never user input
    marks = ", ".join(f":{k}" for k in row)
    conn.execute(f"INSERT INTO jobs ({columns}) VALUES ({marks})", row)  # noqa: S608
    return job_id


def update(conn: sqlite3.Connection, job_id: str, fields: Mapping[str, Any]) -> None:
    values = encode(fields)
    if not values:
        return
    assignments = ", ".join(f"{k} = :{k}" for k in values)  # our own column names
    conn.execute(
        f"UPDATE jobs SET {assignments} WHERE id = :_id",  # noqa: S608
        {**values, "_id": job_id},
    )


def _dicts(cursor: sqlite3.Cursor) -> list[dict[str, Any]]:
    names = [c[0] for c in cursor.description]
    return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]


def get(conn: sqlite3.Connection, job_id: str) -> dict[str, Any] | None:
    rows = _dicts(conn.execute("SELECT * FROM jobs WHERE id = ?", [job_id]))
    return decode(rows[0]) if rows else None


def select(
    conn: sqlite3.Connection, since_s: float | None = None, job_id: str | None = None
) -> list[dict[str, Any]]:
    sql, args = "SELECT * FROM jobs WHERE 1=1", []
    if since_s is not None:
        sql += " AND started_s >= ?"
        args.append(since_s)
    if job_id is not None:
        sql += " AND id = ?"
        args.append(job_id)
    return [decode(r) for r in _dicts(conn.execute(sql + " ORDER BY started_s", args))]


def job_dicts(cursor: sqlite3.Cursor) -> list[dict[str, Any]]:
    """The rows of a ``SELECT ... FROM jobs`` as dicts, ``energy_by_device`` and ``provenance``
    decoded from JSON; an empty or unreadable value reads as {}, so one bad row never breaks a
    report or a page."""
    names = [d[0] for d in cursor.description]
    out = []
    for values in cursor:
        row = dict(zip(names, values, strict=True))
        for key in ("energy_by_device", "provenance"):
            try:
                row[key] = json.loads(row[key]) if row[key] else {}
            except (TypeError, json.JSONDecodeError):
                row[key] = {}
        out.append(row)
    return out
