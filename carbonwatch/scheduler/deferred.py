"""The ``deferred_jobs`` table: rows in and out, the name's history, and the API's view of a row.

Plain SQL on a ``sqlite3.Connection``: writes run inside the daemon's writer tasks (the writer
owns the transaction), reads on its read-only connection. Nothing here decides anything."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Mapping
from typing import Any

from carbonwatch.grid.parse import iso_utc
from carbonwatch.scheduler.job import ACTIVE, FINAL  # noqa: F401 - re-exported for callers

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
        [f"job:{job_id}"],
    ).fetchall()


def _pct(part: float | None, whole: float | None) -> float | None:
    if part is None or whole is None or whole <= 0:
        return None
    return 100.0 * (1.0 - part / whole)


def _iso(t_s: Any) -> str | None:
    """iso_utc, or None for a stored time no datetime can hold (rows of older daemons)."""
    try:
        return iso_utc(t_s)
    except (ValueError, OverflowError, OSError, TypeError):
        return None


def view(row: Mapping[str, Any]) -> dict[str, Any]:
    """The API's (and ``carbonwatch queue --json``'s) picture of a deferred job. The captured
    environment is never shown: it may hold secrets."""
    plan = row.get("plan") or []
    saving = _pct(row.get("plan_intensity_g_per_kwh"), row.get("baseline_intensity_g_per_kwh"))
    base, band = row.get("baseline_intensity_g_per_kwh"), row.get("saving_band_g_per_kwh")
    return {
        "id": row["id"],
        "name": row["name"],
        "kind": row.get("kind"),
        "status": row["status"],
        "command": row["command"],
        "cwd": row.get("cwd"),
        "owner_uid": row.get("owner_uid"),
        "zone": row.get("zone"),
        "provider": row.get("provider"),
        "interruptible": bool(row.get("interruptible")),
        "submitted": _iso(row["submitted_s"]),
        "deadline": _iso(row["deadline_s"]),
        "deadline_s": row["deadline_s"],
        "duration_s": row["duration_s"],
        "plan": [
            {"start": _iso(s), "end": _iso(e), "start_s": s, "end_s": e} for s, e in plan
        ],
        "plan_basis": row.get("plan_basis"),
        "plan_signal": row.get("plan_signal"),  # average | marginal: what the plan minimised
        "forecast_via": row.get("forecast_via"),
        "planned_at": None if row.get("planned_at_s") is None else _iso(row["planned_at_s"]),
        "plan_intensity_g_per_kwh": row.get("plan_intensity_g_per_kwh"),
        "baseline_intensity_g_per_kwh": row.get("baseline_intensity_g_per_kwh"),
        "expected_energy_j": row.get("expected_energy_j"),
        "expected_co2e_g": row.get("expected_co2e_g"),
        "expected_baseline_co2e_g": row.get("expected_baseline_co2e_g"),
        "expected_saving_pct": saving,
        # One sigma of the expected saving from the provider's measured forecast error, in
        # points of the same percentage (None: the error is unknown).
        "saving_band_pct": None if band is None or not base else 100.0 * band / base,
        "via": row.get("via") or "",
        "slurm_job_id": row.get("slurm_job_id"),
        "slurm_state": row.get("slurm_state"),
        "started_s": row.get("started_s"),
        "ended_s": row.get("ended_s"),
        "runs": row.get("runs") or [],
        "exit_code": row.get("exit_code"),
        "job_id": row.get("job_id"),
        "realised_co2e_g": row.get("realised_co2e_g"),
        "realised_baseline_co2e_g": row.get("realised_baseline_co2e_g"),
        "realised_saving_pct": _pct(
            row.get("realised_co2e_g"), row.get("realised_baseline_co2e_g")
        ),
        "message": row.get("message"),
        "log_path": row.get("log_path"),
    }
