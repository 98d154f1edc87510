"""Jobs: the list (running jobs' totals so far from the rollups) and one job in detail."""

from __future__ import annotations

import sqlite3
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from carbonwatch.dashboard.data.common import choose_bucket
from carbonwatch.dashboard.reader import data_span, read_snapshot, rollup
from carbonwatch.model import IDLE, job_consumer, job_of_consumer
from carbonwatch.store import job_dicts

# --- jobs -----------------------------------------------------------------------------------
_JOB_COLUMNS = ("id, name, kind, model, status, started_s, ended_s, exit_code, energy_j, "
                "energy_by_device, co2e_g, cost, currency, provenance, source")


def job_rows(conn: sqlite3.Connection, tail: str, args: list[object]) -> list[dict[str, Any]]:
    cur = conn.execute(f"SELECT {_JOB_COLUMNS} FROM jobs {tail}", args)  # noqa: S608 - fixed SQL
    return job_dicts(cur)


def jobs(path: Path | None) -> list[dict[str, Any]]:
    """Every job, newest first. A running job's totals so far come from the rollups (its own row
    is only written when it ends)."""
    with read_snapshot(path) as (conn, schema):
        rows = job_rows(conn, "ORDER BY started_s DESC", [])
        running = [r for r in rows if r["status"] == "running"]
        span = data_span(conn)
        if running and span is not None:
            start = int(min(r["started_s"] for r in running)) // 60 * 60
            sums = rollup(conn, schema, "energy", start, span.end_s, ("consumer",), None,
                          {"consumer": [job_consumer(r['id']) for r in running]})
            so_far = {str(s["consumer"]): s for s in sums}
            for r in running:
                s = so_far.get(job_consumer(r['id']))
                if s is not None:
                    r.update(energy_j=float(s["energy_j"]), co2e_g=float(s["co2e_g"]),
                             cost=float(s["cost"]) if s["cost"] else r["cost"])
    return rows


@dataclass
class JobDetail:
    job: dict[str, Any]
    start_s: int
    end_s: int
    bucket_s: int
    power_w: dict[str, tuple[list[int], list[float]]]  # device -> (bucket starts, mean W)
    shares: dict[str, dict[str, float]]  # device -> {"this job", "other jobs", "idle", "other"} J
    energy_by_provenance: dict[str, float]
    energy_by_intensity_kind: dict[str, float]
    other_consumers: dict[str, list[str]]  # device -> other jobs seen on it meanwhile


def job_detail(path: Path | None, job_id: str) -> JobDetail | None:
    with read_snapshot(path) as (conn, schema):
        found = job_rows(conn, "WHERE id = ?", [job_id])
        if not found:
            return None
        job = found[0]
        span = data_span(conn)
        end_hint = span.end_s if span else int(job["started_s"]) + 60
        start = int(job["started_s"]) // 60 * 60
        end = max(start + 60, -(-int(job["ended_s"] or end_hint) // 60) * 60)
        bucket = choose_bucket(end - start)
        consumer = job_consumer(job_id)
        mine = rollup(conn, schema, "energy", start, end, ("device_id",), bucket,
                      {"consumer": consumer})
        devices = sorted({str(r["device_id"]) for r in mine})
        shared = rollup(conn, schema, "energy", start, end, ("device_id", "consumer", "phase"),
                        None, {"device_id": devices})
        prov = rollup(conn, schema, "energy", start, end, ("provenance", "intensity_kind"), None,
                      {"consumer": consumer})
    power: dict[str, tuple[list[int], list[float]]] = {d: ([], []) for d in devices}
    for r in mine:
        t = int(r["t_s"])
        # Mean power over the part of the bucket the job was running, not the whole bucket.
        covered = min(t + bucket, end) - max(t, start)
        power[str(r["device_id"])][0].append(t)
        power[str(r["device_id"])][1].append(float(r["energy_j"]) / max(covered, 60))
    shares: dict[str, dict[str, float]] = {
        d: {"this job": 0.0, "other jobs": 0.0, "idle": 0.0, "other": 0.0} for d in devices}
    others: dict[str, set[str]] = {d: set() for d in devices}
    for r in shared:
        d, c = str(r["device_id"]), str(r["consumer"])
        part = ("this job" if c == consumer else "idle" if c == IDLE
                else "other jobs" if job_of_consumer(c) is not None else "other")
        shares[d][part] += float(r["energy_j"])
        if part == "other jobs":
            others[d].add(job_of_consumer(c) or c)
    by_prov: dict[str, float] = defaultdict(float)
    by_kind: dict[str, float] = defaultdict(float)
    for r in prov:
        by_prov[str(r["provenance"])] += float(r["energy_j"])
        by_kind[str(r["intensity_kind"])] += float(r["energy_j"])
    return JobDetail(job, start, end, bucket, power, shares, dict(by_prov), dict(by_kind),
                     {d: sorted(v) for d, v in others.items()})
