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
            dropped_before INTEGER NOT NULL DEFAULT 0  -- spans the client dropped meanwhile
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


@migration
def m002_dashboard_reads(conn: sqlite3.Connection) -> None:
    """The zone each minute's energy was used in, and indexes for the dashboard's range reads.

    ``zone`` lets a store that holds several grid zones (a merged fleet store, or a node moved
    between regions) be split by zone; '' means "the node's configured zone". Guarded, because
    the column is plain data any writer may add."""
    columns = {row[1] for row in conn.execute("PRAGMA table_info(energy_minute)")}
    if "zone" not in columns:
        conn.execute("ALTER TABLE energy_minute ADD COLUMN zone TEXT NOT NULL DEFAULT ''")


@migration
def m003_daemon_calls(conn: sqlite3.Connection) -> None:
    """What the daemon needs to prove that nothing acknowledged is lost and to split calls' energy:

    - ``call_batches.pending``: the batch's request body, kept until all its calls are settled, so
      a restart after a crash re-reads the spans it acknowledged; ``consumers`` how its pids and
      models were resolved to jobs then.
    - per-job call totals: energy of the calls themselves and the service's energy between calls,
      so ``calls_energy_j + between_calls_j`` can be checked against the job's attributed energy.
    """
    conn.executescript(
        """
        ALTER TABLE call_batches ADD COLUMN pending BLOB;
        ALTER TABLE call_batches ADD COLUMN consumers TEXT;
        CREATE INDEX call_batches_pending ON call_batches (id) WHERE pending IS NOT NULL;
        ALTER TABLE jobs ADD COLUMN calls INTEGER NOT NULL DEFAULT 0;
        ALTER TABLE jobs ADD COLUMN calls_energy_j REAL NOT NULL DEFAULT 0;
        ALTER TABLE jobs ADD COLUMN between_calls_j REAL NOT NULL DEFAULT 0;
        CREATE INDEX jobs_status ON jobs (status);
        """
    )


# Hour and day rollups of the minute tables, kept exact by triggers so that no writer has to know
# about them. The dashboard and the statement read whole days and hours from these and only the
# partial days and hours at a range's edges from finer tables: grouping 30 days of a busy node's
# minute rows (2.5 million) takes seconds, its days a few milliseconds. Every write path is
# covered (insert, the additive ON CONFLICT DO UPDATE, update, delete), so the sums equal the
# minute sums up to float rounding. Writers must not use INSERT OR REPLACE on the minute tables:
# SQLite fires no delete trigger for a replaced row unless recursive_triggers is on, and the
# rollups would count it twice.
ROLLUP_LEVELS = (("hour", 3600), ("day", 86400))
_ENERGY_GROUP = (
    "device_id, device_class, consumer, phase, model, zone, provenance, intensity_kind"
)
_ENERGY_SUMS = "energy_j, co2e_g, cost, intensity_energy, minutes"


def _energy_upsert(level: str, seconds: int, row: str, sign: str) -> str:
    """An upsert adding (sign '+') or removing (sign '-') minute row ``row`` (NEW or OLD)."""
    # Built from the constants above and "NEW"/"OLD" only, never from data.
    r, key = row, f"{level}_s, {_ENERGY_GROUP}"
    return f"""
        INSERT INTO energy_{level} ({key}, {_ENERGY_SUMS}) VALUES (
            {r}.minute_s - {r}.minute_s % {seconds}, {r}.device_id, {r}.device_class,
            {r}.consumer, {r}.phase, {r}.model, {r}.zone, {r}.provenance, {r}.intensity_kind,
            {sign}{r}.energy_j, {sign}{r}.co2e_g, {sign}{r}.cost,
            {sign}({r}.energy_j * {r}.intensity_g_per_kwh), {sign}1)
        ON CONFLICT ({key}) DO UPDATE SET
            energy_j = energy_j + excluded.energy_j, co2e_g = co2e_g + excluded.co2e_g,
            cost = cost + excluded.cost,
            intensity_energy = intensity_energy + excluded.intensity_energy,
            minutes = minutes + excluded.minutes;"""  # noqa: S608


def _call_upsert(level: str, seconds: int, row: str, sign: str) -> str:
    r = row
    return f"""
        INSERT INTO call_{level} ({level}_s, model, calls, busy_s, energy_j, co2e_g, cost, minutes)
        VALUES ({r}.minute_s - {r}.minute_s % {seconds}, {r}.model, {sign}{r}.calls,
            {sign}{r}.busy_s, {sign}{r}.energy_j, {sign}{r}.co2e_g, {sign}{r}.cost, {sign}1)
        ON CONFLICT ({level}_s, model) DO UPDATE SET
            calls = calls + excluded.calls, busy_s = busy_s + excluded.busy_s,
            energy_j = energy_j + excluded.energy_j, co2e_g = co2e_g + excluded.co2e_g,
            cost = cost + excluded.cost, minutes = minutes + excluded.minutes;"""  # noqa: S608


def _rollup_statements(level: str, seconds: int) -> list[str]:
    t = f"{level}_s"
    return [
        f"""CREATE TABLE energy_{level} (
            {t} INTEGER NOT NULL, device_id TEXT NOT NULL, device_class TEXT NOT NULL,
            consumer TEXT NOT NULL, phase TEXT NOT NULL, model TEXT NOT NULL, zone TEXT NOT NULL,
            provenance TEXT NOT NULL, intensity_kind TEXT NOT NULL,
            energy_j REAL NOT NULL, co2e_g REAL NOT NULL, cost REAL NOT NULL,
            intensity_energy REAL NOT NULL,  -- sum of energy_j * intensity_g_per_kwh
            minutes INTEGER NOT NULL,        -- minute rows summed (idle consumer: minutes seen)
            PRIMARY KEY ({t}, {_ENERGY_GROUP})) WITHOUT ROWID""",
        f"CREATE INDEX energy_{level}_consumer ON energy_{level} (consumer, {t})",
        f"""CREATE TABLE call_{level} (
            {t} INTEGER NOT NULL, model TEXT NOT NULL, calls INTEGER NOT NULL,
            busy_s REAL NOT NULL, energy_j REAL NOT NULL, co2e_g REAL NOT NULL, cost REAL NOT NULL,
            minutes INTEGER NOT NULL, PRIMARY KEY ({t}, model)) WITHOUT ROWID""",
        f"""INSERT INTO energy_{level} ({t}, {_ENERGY_GROUP}, {_ENERGY_SUMS})
            SELECT minute_s - minute_s % {seconds}, {_ENERGY_GROUP}, SUM(energy_j), SUM(co2e_g),
                SUM(cost), SUM(energy_j * intensity_g_per_kwh), COUNT(*)
            FROM energy_minute GROUP BY 1, {_ENERGY_GROUP}""",  # noqa: S608
        f"""INSERT INTO call_{level} ({t}, model, calls, busy_s, energy_j, co2e_g, cost, minutes)
            SELECT minute_s - minute_s % {seconds}, model, SUM(calls), SUM(busy_s),
                SUM(energy_j), SUM(co2e_g), SUM(cost), COUNT(*) FROM call_minute GROUP BY 1, 2""",  # noqa: S608
    ]


@migration
def m004_rollups(conn: sqlite3.Connection) -> None:
    exists = conn.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'energy_hour'"
    ).fetchone()
    if exists:  # created, backfilled and committed by an earlier run cut short before user_version
        return
    statements = ["CREATE INDEX IF NOT EXISTS call_minute_model ON call_minute (model, minute_s)"]
    for level, seconds in ROLLUP_LEVELS:
        statements += _rollup_statements(level, seconds)
    for table, upsert in (("energy_minute", _energy_upsert), ("call_minute", _call_upsert)):
        add = "".join(upsert(level, seconds, "NEW", "+") for level, seconds in ROLLUP_LEVELS)
        remove = "".join(upsert(level, seconds, "OLD", "-") for level, seconds in ROLLUP_LEVELS)
        statements += [
            f"CREATE TRIGGER {table}_rollup_ai AFTER INSERT ON {table} BEGIN{add} END",
            f"CREATE TRIGGER {table}_rollup_ad AFTER DELETE ON {table} BEGIN{remove} END",
            f"CREATE TRIGGER {table}_rollup_au AFTER UPDATE ON {table} BEGIN{remove}{add} END",
        ]
    # One transaction: a crash leaves either nothing or tables, backfill and triggers together.
    conn.execute("BEGIN")
    try:
        for sql in statements:
            conn.execute(sql)
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


@migration
def m005_deferred_runs_and_actuals(conn: sqlite3.Connection) -> None:
    """What the carbon-aware scheduler and the actuals correction need.

    - ``energy_minute.co2e_g_forecast``: the figure first costed with a forecast intensity, kept
      when actuals arrive and ``co2e_g`` is recomputed (NULL: never corrected).
    - ``deferred_jobs``: the job's kind, provider and URL (per-job overrides of the settings),
      what the plan was based on, the energy expected from the name's history, and what happened
      when it ran: the wrapper's pid and start time (to find it again after a daemon restart),
      the real run windows (interruptible jobs pause between them), the running time so far,
      exit code, a human message and the log file. Guarded column by column, so a run cut short
      before ``user_version`` was written can be repeated."""
    wanted = {
        "energy_minute": [("co2e_g_forecast", "REAL")],
        "deferred_jobs": [
            ("kind", "TEXT NOT NULL DEFAULT 'training'"),
            ("provider", "TEXT NOT NULL DEFAULT ''"),
            ("provider_url", "TEXT NOT NULL DEFAULT ''"),
            ("plan_basis", "TEXT"),  # forecast | no_forecast
            ("forecast_via", "TEXT"),  # provider | cache | static
            ("expected_energy_j", "REAL"),
            ("expected_baseline_co2e_g", "REAL"),
            ("started_s", "REAL"),
            ("ended_s", "REAL"),
            ("exit_code", "INTEGER"),
            ("wrapper_pid", "INTEGER"),
            ("wrapper_created_s", "REAL"),  # psutil create_time: guards against pid reuse
            ("runs", "TEXT NOT NULL DEFAULT '[]'"),  # JSON [[start_s, end_s|null], ...]
            ("ran_s", "REAL NOT NULL DEFAULT 0"),
            ("message", "TEXT"),
            ("log_path", "TEXT"),
        ],
    }
    for table, columns in wanted.items():
        have = {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}
        for name, decl in columns:
            if name not in have:
                conn.execute(f"ALTER TABLE {table} ADD COLUMN {name} {decl}")
    conn.execute(
        "CREATE INDEX IF NOT EXISTS deferred_jobs_status ON deferred_jobs (status, submitted_s)"
    )
    # Partial: only the minutes still awaiting actuals are indexed, so the index stays small.
    conn.execute(
        "CREATE INDEX IF NOT EXISTS energy_minute_forecast ON energy_minute (minute_s)"
        " WHERE intensity_kind = 'forecast'"
    )


# Token columns of the call rollups (m006): summed as the other call sums are, by the triggers.
TOKEN_SUMS = ("tokens_in", "tokens_out", "token_calls", "token_energy_j")
_TOKEN_COLUMNS = (
    ("tokens_in", "INTEGER NOT NULL DEFAULT 0"),  # tokens in, summed over the calls
    ("tokens_out", "INTEGER NOT NULL DEFAULT 0"),
    ("token_calls", "INTEGER NOT NULL DEFAULT 0"),  # calls that reported tokens_out
    ("token_energy_j", "REAL NOT NULL DEFAULT 0"),  # those calls' own energy
)


def _call_token_upsert(level: str, seconds: int, row: str, sign: str) -> str:
    """As ``_call_upsert`` (m004), with the token sums."""
    r = row
    names = ("calls", "busy_s", "energy_j", "co2e_g", "cost", *TOKEN_SUMS)
    columns = ", ".join(names)
    values = ", ".join(f"{sign}{r}.{c}" for c in names)
    assignments = ", ".join(f"{c} = {c} + excluded.{c}" for c in (*names, "minutes"))
    return f"""
        INSERT INTO call_{level} ({level}_s, model, {columns}, minutes)
        VALUES ({r}.minute_s - {r}.minute_s % {seconds}, {r}.model, {values}, {sign}1)
        ON CONFLICT ({level}_s, model) DO UPDATE SET {assignments};"""  # noqa: S608


@migration
def m006_tokens(conn: sqlite3.Connection) -> None:
    """Tokens per model: ``call_minute`` and its hour and day rollups gain ``tokens_in``,
    ``tokens_out``, ``token_calls`` (calls that reported tokens_out) and ``token_energy_j``
    (those calls' energy, so a per-token figure says how much energy it covers); the call_minute
    triggers are rebuilt to sum them. The raw call log keeps each call's ``weight`` and tokens.
    Existing rows hold no tokens (0): the figures stay unknown for them, never made up.
    One transaction, every column guarded, so a run cut short is simply repeated."""
    conn.execute("BEGIN")
    try:
        for table in ("call_minute", *(f"call_{level}" for level, _ in ROLLUP_LEVELS)):
            have = {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}
            for name, decl in _TOKEN_COLUMNS:
                if name not in have:
                    conn.execute(f"ALTER TABLE {table} ADD COLUMN {name} {decl}")
        have = {row[1] for row in conn.execute("PRAGMA table_info(calls)")}
        for name, decl in (("weight", "REAL"), ("tokens_in", "INTEGER"), ("tokens_out", "INTEGER")):
            if name not in have:
                conn.execute(f"ALTER TABLE calls ADD COLUMN {name} {decl}")  # NULL: not reported
        add = "".join(_call_token_upsert(lv, s, "NEW", "+") for lv, s in ROLLUP_LEVELS)
        remove = "".join(_call_token_upsert(lv, s, "OLD", "-") for lv, s in ROLLUP_LEVELS)
        for suffix in ("ai", "ad", "au"):
            conn.execute(f"DROP TRIGGER IF EXISTS call_minute_rollup_{suffix}")
        conn.execute(f"CREATE TRIGGER call_minute_rollup_ai AFTER INSERT ON call_minute "
                     f"BEGIN{add} END")
        conn.execute(f"CREATE TRIGGER call_minute_rollup_ad AFTER DELETE ON call_minute "
                     f"BEGIN{remove} END")
        conn.execute(f"CREATE TRIGGER call_minute_rollup_au AFTER UPDATE ON call_minute "
                     f"BEGIN{remove}{add} END")
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


@migration
def m007_owners(conn: sqlite3.Connection) -> None:
    """Who owns each job, and nothing secret kept after a deferred job ends.

    - ``jobs.owner_uid``: the local uid that registered the job (peer credentials on the unix
      socket, ``/proc/net/tcp`` on loopback); NULL for a job registered from another machine or
      by a wrapper writing the store itself. Only its owner or an operator may end or merge it.
    - ``deferred_jobs.owner_uid`` / ``owner_gid``: who submitted it; a root daemon runs the
      command as this uid and gid, never as root for someone else.
    - The captured environment of deferred jobs that already ended is erased (it may hold
      secrets); from now on it is erased when a job ends."""
    for table, columns in {
        "jobs": [("owner_uid", "INTEGER")],
        "deferred_jobs": [("owner_uid", "INTEGER"), ("owner_gid", "INTEGER")],
    }.items():
        have = {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}
        for name, decl in columns:
            if name not in have:
                conn.execute(f"ALTER TABLE {table} ADD COLUMN {name} {decl}")
    conn.execute(
        "UPDATE deferred_jobs SET env = '{}' WHERE status IN ('done', 'failed', 'cancelled')"
    )


@migration
def m008_gpu_idle(conn: sqlite3.Connection) -> None:
    """Each GPU's idle power as learned from its energy counter over process-free intervals, by
    GPU UUID, so a restart, a ``carbonwatch run`` and a replay start from it (see
    :mod:`carbonwatch.store.gpu_idle`). ``learned_s``: process-free seconds behind the figure."""
    conn.execute(
        "CREATE TABLE IF NOT EXISTS gpu_idle ("
        " uuid TEXT PRIMARY KEY,"
        " idle_w REAL NOT NULL CHECK (idle_w >= 0),"
        " learned_s REAL NOT NULL,"
        " updated_s REAL NOT NULL)"
    )


@migration
def m009_statements(conn: sqlite3.Connection) -> None:
    """The device models behind each ``device_id`` (first and last seen), so embodied carbon
    (carbonwatch.embodied) can find each device's figure. Stores written before this hold no
    models: their embodied carbon is unknown, never 0. Deferred jobs gain ``plan_signal``: which
    intensity signal (average or marginal) their plan minimised."""
    conn.execute(
        "CREATE TABLE IF NOT EXISTS devices (device_id TEXT NOT NULL, device_class TEXT NOT NULL,"
        " name TEXT NOT NULL, uuid TEXT, first_seen_s REAL NOT NULL, last_seen_s REAL NOT NULL,"
        " PRIMARY KEY (device_id, name))"
    )
    have = {row[1] for row in conn.execute("PRAGMA table_info(deferred_jobs)")}
    if "plan_signal" not in have:  # average | marginal: which intensity a plan minimised
        conn.execute("ALTER TABLE deferred_jobs ADD COLUMN plan_signal TEXT")


@migration
def m010_sched_error_and_slurm(conn: sqlite3.Connection) -> None:
    """Forecast error and Slurm deferral on ``deferred_jobs``.

    - ``saving_band_g_per_kwh``: the one-sigma band of the expected saving, from the provider's
      measured forecast error (NULL: unknown).
    - ``via``: how the job is started: '' (the daemon's wrapper) or 'slurm' (``sbatch --begin``);
      ``slurm_job_id`` and ``slurm_state`` the Slurm job and its last seen state. For a Slurm
      job ``command`` holds the sbatch arguments. Guarded column by column."""
    wanted = [
        ("saving_band_g_per_kwh", "REAL"),
        ("via", "TEXT NOT NULL DEFAULT ''"),
        ("slurm_job_id", "TEXT"),
        ("slurm_state", "TEXT"),
    ]
    have = {row[1] for row in conn.execute("PRAGMA table_info(deferred_jobs)")}
    for name, decl in wanted:
        if name not in have:
            conn.execute(f"ALTER TABLE deferred_jobs ADD COLUMN {name} {decl}")
