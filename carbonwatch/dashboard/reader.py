"""Read-only access to the store for the dashboard: connection, readable errors, range rollups.

Every read runs in one read transaction on its own read-only connection, so a page is drawn from
one consistent snapshot while the daemon keeps writing (WAL lets readers run beside the writer).
Failures become ``DataUnavailable`` with a message meant for the page, never a traceback.

Sums over a time range combine whole days from ``energy_day``/``call_day`` and whole hours from
``*_hour`` (kept by triggers, migration m004) with the partial hours at the range's edges from the
minute tables: exact, and milliseconds where grouping a month of minute rows takes seconds. A store
written by an older carbonwatch (no rollup tables) is read from minute tables alone: slower, right.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.request import pathname2url

HOUR_S = 3600
DAY_S = 86400
LEVELS = (("day", DAY_S), ("hour", HOUR_S))  # rollup tables, coarsest first; minutes below
# A locked store should answer within one refresh, not hang the page for SQLite's default wait.
BUSY_TIMEOUT_MS = 400

# Columns a rollup may group or filter by: SQL is built only from these names, values are bound.
ENERGY_COLUMNS = ("device_id", "device_class", "consumer", "phase", "model", "zone", "provenance",
                  "intensity_kind")
ENERGY_SUMS = ("energy_j", "co2e_g", "cost", "intensity_energy", "minutes")
CALL_COLUMNS = ("model",)
CALL_SUMS = ("calls", "busy_s", "energy_j", "co2e_g", "cost", "minutes")
# Token sums of the call tables (migration m006); read as 0 from a store written before them.
TOKEN_SUMS = ("tokens_in", "tokens_out", "token_calls", "token_energy_j")

FIRST_RUN_HINT = "Wrap a job to record it: carbonwatch run -- python train.py"


class DataUnavailable(Exception):
    """The store cannot be read now; ``title``, ``detail`` and ``hint`` are shown in the page."""

    def __init__(self, title: str, detail: str, hint: str = "", kind: str = "error") -> None:
        super().__init__(f"{title}: {detail}")
        self.title = title
        self.detail = detail
        self.hint = hint
        self.kind = kind  # missing | corrupt | locked | schema | error


@dataclass(frozen=True)
class Schema:
    version: int
    has_zone: bool
    has_rollups: bool
    has_tokens: bool = False


def _uri(path: Path) -> str:
    # pathname2url escapes '?', '#' and spaces, which would otherwise end or break the URI.
    return f"file:{pathname2url(str(path.resolve()))}?mode=ro"


NO_STORE_HINT = "Start the dashboard with --db PATH as well to read a node's store here."


@contextmanager
def read_snapshot(path: Path | None) -> Iterator[tuple[sqlite3.Connection, Schema]]:
    """A read-only connection inside one read transaction, and what the schema offers. ``path``
    None: the dashboard has no local store (started with --prometheus only)."""
    if path is None:
        raise DataUnavailable(
            "No local store", "This dashboard was started with --prometheus only: it shows the "
            "fleet through Prometheus, and has no store of its own to read for this page.",
            NO_STORE_HINT, kind="no-store",
        )
    if not path.exists():
        raise DataUnavailable(
            "No store yet", f"{path} does not exist: nothing has been recorded here.",
            FIRST_RUN_HINT + " (or start the daemon: carbonwatch daemon).", kind="missing",
        )
    conn: sqlite3.Connection | None = None
    try:
        conn = sqlite3.connect(_uri(path), uri=True, check_same_thread=False)
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        conn.execute("BEGIN")
        schema = _schema(conn, path)
        yield conn, schema
    except sqlite3.OperationalError as exc:
        raise _readable(exc, path) from exc
    except sqlite3.DatabaseError as exc:
        raise DataUnavailable(
            "Unreadable store", f"{path} is not a readable SQLite database ({exc}).",
            "Point --db at a carbonwatch store; a damaged file can be moved aside and a new one "
            "started by the daemon.", kind="corrupt",
        ) from exc
    finally:
        if conn is not None:
            conn.close()


def _readable(exc: sqlite3.OperationalError, path: Path) -> DataUnavailable:
    text = str(exc)
    if "locked" in text or "busy" in text:
        return DataUnavailable(
            "Store busy", f"{path} is locked by a process writing to it ({text}).",
            "The page retries at the next refresh; the data is not lost.", kind="locked",
        )
    if "no such table" in text or "no such column" in text:
        return DataUnavailable(
            "Unexpected schema", f"{path} does not look like a carbonwatch store ({text}).",
            "Is --db pointing at the right file? A newer carbonwatch may be needed.",
            kind="schema",
        )
    return DataUnavailable("Cannot read the store", f"{path}: {text}", kind="error")


def _schema(conn: sqlite3.Connection, path: Path) -> Schema:
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    if version == 0 or not {"jobs", "energy_minute", "call_minute"} <= tables:
        raise DataUnavailable(
            "Not a carbonwatch store", f"{path} has no carbonwatch schema.",
            "Is --db pointing at the right file? " + FIRST_RUN_HINT, kind="schema",
        )
    columns = {r[1] for r in conn.execute("PRAGMA table_info(energy_minute)")}
    rollups = {f"{t}_{level}" for t in ("energy", "call") for level, _ in LEVELS}
    call_columns = {r[1] for r in conn.execute("PRAGMA table_info(call_minute)")}
    return Schema(version, "zone" in columns, rollups <= tables,
                  set(TOKEN_SUMS) <= call_columns)


@dataclass(frozen=True)
class Span:
    """First and last recorded minute (the last one's end): what 'all' and 'last N' mean."""

    first_s: int
    end_s: int


def data_span(conn: sqlite3.Connection) -> Span | None:
    # Two statements on purpose: SQLite answers a lone MIN() or MAX() of an index's first column
    # with one index lookup, but MIN() and MAX() in one SELECT with a full scan (~0.3 s a month).
    (first,) = conn.execute("SELECT MIN(minute_s) FROM energy_minute").fetchone()
    (last,) = conn.execute("SELECT MAX(minute_s) FROM energy_minute").fetchone()
    if first is None:
        return None
    return Span(int(first), int(last) + 60)


def _filters(where: Mapping[str, object], allowed: Sequence[str]) -> tuple[str, list[object]]:
    sql, args = "", []
    for column, value in where.items():
        if column not in allowed:
            raise ValueError(f"cannot filter on {column!r}")
        if isinstance(value, list | tuple | set | frozenset):
            values = list(value)
            if not values:
                sql += " AND 0"
                continue
            sql += f" AND {column} IN ({', '.join('?' * len(values))})"
            args += values
        else:
            sql += f" AND {column} = ?"
            args.append(value)
    return sql, args


def _parts(start_s: int, end_s: int, bucket_s: int | None, has_rollups: bool
           ) -> list[tuple[str, int, int]]:
    """Split [start, end) into (level, lo, hi): whole days, whole hours at their edges, minutes at
    theirs. A level serves only when the bucket is a whole number of its units."""
    levels = [(name, size) for name, size in LEVELS
              if has_rollups and (bucket_s is None or bucket_s % size == 0)]
    parts: list[tuple[str, int, int]] = []

    def split(lo: int, hi: int, depth: int) -> None:
        if lo >= hi:
            return
        if depth == len(levels):
            parts.append(("minute", lo, hi))
            return
        name, size = levels[depth]
        a, b = -(-lo // size) * size, hi // size * size
        if a >= b:
            split(lo, hi, depth + 1)
            return
        parts.append((name, a, b))
        split(lo, a, depth + 1)
        split(b, hi, depth + 1)

    split(start_s, end_s, 0)
    return parts


def rollup(
    conn: sqlite3.Connection,
    schema: Schema,
    table: str,
    start_s: int,
    end_s: int,
    group: Sequence[str] = (),
    bucket_s: int | None = None,
    where: Mapping[str, object] | None = None,
) -> list[dict[str, float | int | str]]:
    """Sums over [start_s, end_s) of ``table`` ('energy' or 'call'), grouped by ``group`` columns
    and, with ``bucket_s``, by time bucket (key ``t_s``, the bucket's start, aligned to the
    epoch). Days and hours come from the rollup tables where the bucket allows."""
    if table == "energy":
        columns, sums = ENERGY_COLUMNS, ENERGY_SUMS
    else:
        columns, sums = CALL_COLUMNS, CALL_SUMS + TOKEN_SUMS
    where = dict(where or {})
    if "zone" in where and not schema.has_zone:
        where.pop("zone")  # an old store has one zone: every row is in it
    for column in group:
        if column not in columns:
            raise ValueError(f"cannot group by {column!r}")
    out: dict[tuple, dict[str, float | int | str]] = {}
    for kind, lo, hi in _parts(start_s, end_s, bucket_s, schema.has_rollups):
        t = f"{kind}_s"
        select = [f"({t} / {int(bucket_s)}) * {int(bucket_s)}"] if bucket_s else []
        select += [c if (c != "zone" or schema.has_zone) else "'' AS zone" for c in group]
        if kind != "minute":
            aggregates = [f"SUM({s})" for s in sums]
        else:
            aggregates = [
                "COUNT(*)" if s == "minutes"
                else "SUM(energy_j * intensity_g_per_kwh)" if s == "intensity_energy"
                else f"SUM({s})" for s in sums
            ]
        if table == "call" and not schema.has_tokens:  # an older store: no tokens reported
            aggregates = ["0" if s in TOKEN_SUMS else a for s, a in zip(sums, aggregates,
                                                                         strict=True)]
        filters, args = _filters(where, columns)
        keys = list(range(1, len(select) + 1))
        sql = (
            f"SELECT {', '.join(select + aggregates)} FROM {table}_{kind} "  # noqa: S608 - names
            f"WHERE {t} >= ? AND {t} < ?{filters}"  # from the whitelists above; values bound
            + (f" GROUP BY {', '.join(map(str, keys))}" if keys else "")
        )
        names = (["t_s"] if bucket_s else []) + list(group)
        for row in conn.execute(sql, [lo, hi, *args]):
            if row[len(names)] is None:  # no row matched: SUM() of nothing
                continue
            key = tuple(row[: len(names)])
            acc = out.get(key)
            if acc is None:
                out[key] = {**dict(zip(names, key, strict=True)),
                            **dict(zip(sums, row[len(names):], strict=True))}
            else:
                for name, value in zip(sums, row[len(names):], strict=True):
                    acc[name] += value
    rows = list(out.values())
    if bucket_s:
        rows.sort(key=lambda r: r["t_s"])
    return rows
