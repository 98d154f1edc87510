"""Versioned schema migrations (a small registry in the manner of sqlite-utils' and datasette's).

Each migration runs once, in order, inside a transaction; ``PRAGMA user_version`` records how far a
file has come. Append new migrations; never edit one that has shipped."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable

Migration = Callable[[sqlite3.Connection], None]
MIGRATIONS: list[Migration] = []


def migration(fn: Migration) -> Migration:
    MIGRATIONS.append(fn)
    return fn


@migration
def m001_initial(conn: sqlite3.Connection) -> None:
    conn.executescript(
        """
        CREATE TABLE jobs (
            id TEXT PRIMARY KEY,
            name TEXT NOT NULL,
            kind TEXT NOT NULL CHECK (kind IN ('training', 'inference', 'other')),
            model TEXT,
            command TEXT,            -- JSON list of argv, when launched by the wrapper
            pids TEXT NOT NULL DEFAULT '[]',
            tags TEXT NOT NULL DEFAULT '{}',
            identity TEXT,           -- Slurm job id, pod, torchrun group: one job per node
            source TEXT NOT NULL,    -- run | api | scheduler | replay
            status TEXT NOT NULL,    -- running | finished | failed | interrupted | lost
            started_s REAL NOT NULL,
            ended_s REAL,
            exit_code INTEGER,
            energy_j REAL NOT NULL DEFAULT 0,
            energy_by_device TEXT NOT NULL DEFAULT '{}',  -- JSON {device_id: joules}
            co2e_g REAL NOT NULL DEFAULT 0,
            cost REAL,               -- NULL: unknown (no price configured)
            currency TEXT,
            provenance TEXT NOT NULL DEFAULT '{}'         -- JSON: how each figure was obtained
        );
        CREATE INDEX jobs_started ON jobs (started_s);
        CREATE INDEX jobs_identity ON jobs (identity);

        -- Attributed energy per minute, device and consumer. consumer: 'job:<id>',
        -- 'service:<model>', 'idle' or 'other'. Conservation holds per device and minute.
        CREATE TABLE energy_minute (
            minute_s INTEGER NOT NULL,
            device_id TEXT NOT NULL,
            device_class TEXT NOT NULL,
            consumer TEXT NOT NULL,
            phase TEXT NOT NULL,     -- training | inference | other | idle
            model TEXT NOT NULL DEFAULT '',
            energy_j REAL NOT NULL,
            co2e_g REAL NOT NULL,
            cost REAL NOT NULL,
            intensity_g_per_kwh REAL NOT NULL,
            intensity_kind TEXT NOT NULL,   -- actual | forecast | static
            provenance TEXT NOT NULL,       -- measured | estimated
            PRIMARY KEY (minute_s, device_id, consumer)
        );
        CREATE INDEX energy_minute_consumer ON energy_minute (consumer, minute_s);

        -- Per-model inference rollups per minute.
        CREATE TABLE call_minute (
            minute_s INTEGER NOT NULL,
            model TEXT NOT NULL,
            calls INTEGER NOT NULL,
            busy_s REAL NOT NULL,
            energy_j REAL NOT NULL,
            co2e_g REAL NOT NULL,
            cost REAL NOT NULL,
            PRIMARY KEY (minute_s, model)
        );

        -- Optional bounded raw call log.
        CREATE TABLE calls (
            id INTEGER PRIMARY KEY,
            batch_id INTEGER NOT NULL,
            model TEXT NOT NULL,
            pid INTEGER,
            start_s REAL NOT NULL,
            end_s REAL NOT NULL,
            tags TEXT NOT NULL DEFAULT '{}',
            energy_j REAL            -- filled once the covering intervals are attributed
        );
        CREATE INDEX calls_model ON calls (model, start_s);

        -- Every acknowledged call batch, so a restart can prove nothing acknowledged was lost.
        CREATE TABLE call_batches (
            id INTEGER PRIMARY KEY,
            received_s REAL NOT NULL,
            calls INTEGER NOT NULL,
            dropped_before INTEGER NOT NULL DEFAULT 0  -- spans the client dropped while we were away
        );

        -- Grid intensity: actuals and forecasts, each with where and when it came from.
        CREATE TABLE intensity_points (
            zone TEXT NOT NULL,
            provider TEXT NOT NULL,
            kind TEXT NOT NULL,      -- actual | forecast | static
            signal TEXT NOT NULL,    -- average | marginal
            start_s REAL NOT NULL,
            end_s REAL NOT NULL,
            intensity_g_per_kwh REAL NOT NULL,
            fetched_at_s REAL NOT NULL,
            PRIMARY KEY (zone, provider, kind, start_s, fetched_at_s)
        );

        -- Deferred (carbon-aware) jobs; they survive daemon restarts.
        CREATE TABLE deferred_jobs (
            id TEXT PRIMARY KEY,
            name TEXT NOT NULL,
            command TEXT NOT NULL,   -- JSON argv
            cwd TEXT,
            env TEXT NOT NULL DEFAULT '{}',
            zone TEXT,
            submitted_s REAL NOT NULL,
            deadline_s REAL NOT NULL,
            duration_s REAL NOT NULL,
            interruptible INTEGER NOT NULL DEFAULT 0,
            status TEXT NOT NULL,    -- queued | running | done | failed | cancelled
            plan TEXT NOT NULL DEFAULT '[]',  -- JSON [[start_s, end_s], ...]
            plan_intensity_g_per_kwh REAL,
            baseline_intensity_g_per_kwh REAL,
            expected_co2e_g REAL,
            planned_at_s REAL,
            forecast_fetched_at_s REAL,
            job_id TEXT,             -- the jobs row once launched
            realised_co2e_g REAL,
            realised_baseline_co2e_g REAL
        );

        CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
        """
    )
