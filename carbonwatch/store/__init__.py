"""The SQLite store: one file, WAL, versioned migrations, one writer.

Every statement is parameterised. Writers go through one ``Store`` (the daemon owns it on a single
writer thread); readers (reports, the dashboard) open their own read-only connections, which WAL
lets run beside the writer."""

from __future__ import annotations

import contextlib
import functools
import json
import sqlite3
import urllib.parse
import uuid
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from carbonwatch.errors import StoreError
from carbonwatch.store.migrations import MIGRATIONS

if TYPE_CHECKING:
    import sqlite_utils

JSON_COLUMNS = ("command", "pids", "tags", "energy_by_device", "provenance", "plan", "env")


def _connect(path: Path, read_only: bool) -> sqlite3.Connection:
    if read_only:
        if not path.exists():
            raise StoreError(f"store {path} does not exist (nothing recorded yet?)")
        uri = f"file:{urllib.parse.quote(str(path.resolve()))}?mode=ro"
        conn = sqlite3.connect(uri, uri=True, check_same_thread=False)
    else:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)  # data folders: owner only
        if not path.exists():
            # Owner-only: deferred jobs keep their submitter's environment, which may hold secrets.
            # SQLite gives the -wal and -shm files the database file's mode.
            path.touch(mode=0o600)
        conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
    conn.execute("PRAGMA busy_timeout = 5000")
    return conn


class Store:
    def __init__(self, path: str | Path, *, read_only: bool = False) -> None:
        self.path = Path(path)
        self.read_only = read_only
        try:
            self.conn = _connect(self.path, read_only)
            if not read_only:
                self.conn.execute("PRAGMA journal_mode = WAL")
                # NORMAL is durable across process crashes (kill -9) in WAL mode; only a power
                # loss can drop the last transactions.
                self.conn.execute("PRAGMA synchronous = NORMAL")
                self._migrate()
            else:
                version = self.conn.execute("PRAGMA user_version").fetchone()[0]
                if version == 0:
                    raise StoreError(f"{self.path} is not a carbonwatch store (no schema)")
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"cannot open store {self.path}: {exc}") from exc

    def _migrate(self) -> None:
        version = self.conn.execute("PRAGMA user_version").fetchone()[0]
        for number, step in enumerate(MIGRATIONS[version:], start=version + 1):
            step(self.conn)
            self.conn.execute(f"PRAGMA user_version = {int(number)}")

    @functools.cached_property
    def db(self) -> sqlite_utils.Database:
        """sqlite-utils over the same connection, for callers that want its table API. Imported
        on first use: it pulls in pandas (~0.25 s), which `carbonwatch run` never needs."""
        import sqlite_utils

        return sqlite_utils.Database(self.conn)

    def query(self, sql: str, args: Sequence[Any] = ()) -> list[dict[str, Any]]:
        """Rows as dicts (parameterised SQL only)."""
        cursor = self.conn.execute(sql, args)
        names = [c[0] for c in cursor.description]
        return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]

    @property
    def schema_version(self) -> int:
        return self.conn.execute("PRAGMA user_version").fetchone()[0]

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        """One atomic write. The connection is in autocommit mode (so the daemon's writer can
        BEGIN IMMEDIATE itself); inside an open transaction this joins it instead of nesting."""
        if self.conn.in_transaction:
            yield
            return
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        self.conn.execute("COMMIT")

    # --- jobs -------------------------------------------------------------------------------
    def insert_job(self, **fields: Any) -> str:
        job_id = fields.pop("id", None) or uuid.uuid4().hex[:12]
        row = {"id": job_id, **_encode(fields)}
        columns = ", ".join(row)  # keys are our own column names, never user input
        marks = ", ".join(f":{k}" for k in row)
        with self.transaction():
            self.conn.execute(f"INSERT INTO jobs ({columns}) VALUES ({marks})", row)  # noqa: S608
        return job_id

    def update_job(self, job_id: str, **fields: Any) -> None:
        values = _encode(fields)
        if not values:
            return
        assignments = ", ".join(f"{k} = :{k}" for k in values)  # our own column names
        with self.transaction():
            self.conn.execute(
                f"UPDATE jobs SET {assignments} WHERE id = :_id",  # noqa: S608
                {**values, "_id": job_id},
            )

    def job(self, job_id: str) -> dict[str, Any] | None:
        rows = self.query("SELECT * FROM jobs WHERE id = ?", [job_id])
        return _decode(rows[0]) if rows else None

    def jobs(self, since_s: float | None = None, job_id: str | None = None) -> list[dict[str, Any]]:
        sql, args = "SELECT * FROM jobs WHERE 1=1", []
        if since_s is not None:
            sql += " AND started_s >= ?"
            args.append(since_s)
        if job_id is not None:
            sql += " AND id = ?"
            args.append(job_id)
        return [_decode(r) for r in self.query(sql + " ORDER BY started_s", args)]

    # --- energy rollups -----------------------------------------------------------------------
    def add_energy_minutes(self, rows: Iterable[dict[str, Any]]) -> None:
        """Add rows into the minute rollups (an existing minute is summed, not replaced)."""
        sql = """
            INSERT INTO energy_minute (minute_s, device_id, device_class, consumer, phase, model,
                energy_j, co2e_g, cost, intensity_g_per_kwh, intensity_kind, provenance)
            VALUES (:minute_s, :device_id, :device_class, :consumer, :phase, :model,
                :energy_j, :co2e_g, :cost, :intensity_g_per_kwh, :intensity_kind, :provenance)
            ON CONFLICT (minute_s, device_id, consumer) DO UPDATE SET
                intensity_g_per_kwh = CASE WHEN energy_j + excluded.energy_j > 0 THEN
                    (intensity_g_per_kwh * energy_j + excluded.intensity_g_per_kwh
                     * excluded.energy_j) / (energy_j + excluded.energy_j)
                    ELSE excluded.intensity_g_per_kwh END,
                energy_j = energy_j + excluded.energy_j,
                co2e_g = co2e_g + excluded.co2e_g,
                cost = cost + excluded.cost,
                intensity_kind = CASE WHEN intensity_kind = excluded.intensity_kind
                    THEN intensity_kind ELSE 'mixed' END,
                provenance = CASE WHEN provenance = 'estimated' OR excluded.provenance = 'estimated'
                    THEN 'estimated' ELSE 'measured' END
        """
        rows = list(rows)
        if rows:
            with self.transaction():
                self.conn.executemany(sql, rows)


def _encode(fields: dict[str, Any]) -> dict[str, Any]:
    return {
        k: (json.dumps(v) if k in JSON_COLUMNS and not isinstance(v, str) and v is not None else v)
        for k, v in fields.items()
    }


def _decode(row: dict[str, Any]) -> dict[str, Any]:
    out = dict(row)
    for key in JSON_COLUMNS:
        if isinstance(out.get(key), str):
            with contextlib.suppress(json.JSONDecodeError):
                out[key] = json.loads(out[key])
    return out


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


def open_store(path: str | Path, *, read_only: bool = False) -> Store:
    return Store(path, read_only=read_only)
