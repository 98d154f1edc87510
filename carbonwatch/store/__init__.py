"""The SQLite store: one file, WAL, versioned migrations, one writer.

Every statement is parameterised. Writers go through one ``Store`` (the daemon owns it on a single
writer thread); readers (reports, the dashboard) open their own read-only connections, which WAL
lets run beside the writer."""

from __future__ import annotations

import contextlib
import functools
import sqlite3
import urllib.parse
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from carbonwatch.errors import StoreError
from carbonwatch.store import energy, jobs
from carbonwatch.store.jobs import JSON_COLUMNS, job_dicts
from carbonwatch.store.migrations import MIGRATIONS

__all__ = ["JSON_COLUMNS", "Store", "job_dicts", "open_store", "transaction"]

if TYPE_CHECKING:
    import sqlite_utils



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

    def transaction(self) -> contextlib.AbstractContextManager[None]:
        """One atomic write (see :func:`transaction`)."""
        return transaction(self.conn)

    # --- jobs (carbonwatch.store.jobs) ------------------------------------------------------
    def insert_job(self, **fields: Any) -> str:
        with self.transaction():
            return jobs.insert(self.conn, fields)

    def update_job(self, job_id: str, **fields: Any) -> None:
        with self.transaction():
            jobs.update(self.conn, job_id, fields)

    def job(self, job_id: str) -> dict[str, Any] | None:
        return jobs.get(self.conn, job_id)

    def jobs(self, since_s: float | None = None, job_id: str | None = None) -> list[dict[str, Any]]:
        return jobs.select(self.conn, since_s, job_id)

    # --- energy rollups (carbonwatch.store.energy) --------------------------------------------
    def add_energy_minutes(self, rows: Iterable[dict[str, Any]]) -> None:
        """Add rows into the minute rollups (an existing minute is summed, not replaced)."""
        rows = list(rows)
        if rows:
            with self.transaction():
                energy.add_minutes(self.conn, rows)


@contextlib.contextmanager
def transaction(conn: sqlite3.Connection) -> Iterator[None]:
    """One atomic write on an autocommit connection (so the daemon's writer can BEGIN IMMEDIATE
    itself); inside an open transaction this joins it instead of nesting, and never commits
    the caller's. The table modules (jobs, energy, intensity, deferred, ...) never commit."""
    if conn.in_transaction:
        yield
        return
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def open_store(path: str | Path, *, read_only: bool = False) -> Store:
    return Store(path, read_only=read_only)
