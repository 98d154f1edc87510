"""The Models page's payback card: a model's training carbon (operational + embodied) against its
inference carbon per 1,000 calls and tokens, and when inference overtook training, over all
records (carbonwatch.footprint, the figures of ``report --model``)."""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from carbonwatch.config import Settings
from carbonwatch.dashboard.reader import read_snapshot
from carbonwatch.errors import InputError


@dataclass
class _Snapshot:
    """What the statement reads of a Store: a connection (here a read snapshot) and a path."""

    conn: sqlite3.Connection
    path: Path


# (path, model, settings, what the store holds) -> payback. The statement reads every minute row
# of the model (embodied carbon needs each minute's device shares): ~0.5 s on a week of an 8-GPU
# node (benchmarks/bench_statement.py), too slow for every refresh; it changes only when energy
# rows or jobs do, which the day rollup's sums and the jobs' count and ends say in a few reads.
_CACHE: dict[tuple[Any, ...], dict[str, Any] | None] = {}
_CACHE_MAX = 64


def _version(conn: sqlite3.Connection, has_rollups: bool) -> tuple[Any, ...]:
    table = "energy_day" if has_rollups else "energy_minute"
    energy = conn.execute(f"SELECT COUNT(*), SUM(energy_j) FROM {table}").fetchone()  # noqa: S608
    jobs = conn.execute("SELECT COUNT(*), SUM(ended_s) FROM jobs").fetchone()
    return (*energy, *jobs)


def model_payback(path: Path | None, model: str, settings: Settings | None = None
                  ) -> dict[str, Any] | None:
    """The statement's payback and embodied blocks; None when the store holds nothing for it."""
    s = settings or Settings()
    with read_snapshot(path) as (conn, schema):
        key = (str(path), model, s.embodied_lifetime_years, s.embodied_utilisation,
               s.embodied_kgco2e, s.zone, s.pue, *_version(conn, schema.has_rollups))
        if key not in _CACHE:
            if len(_CACHE) >= _CACHE_MAX:
                _CACHE.clear()
            _CACHE[key] = _payback(conn, path, model, s)
        return _CACHE[key]


def _payback(conn: sqlite3.Connection, path: Path | None, model: str, settings: Settings
             ) -> dict[str, Any] | None:
    from carbonwatch.statement import model_statement
    from carbonwatch.store import Store

    try:
        s = model_statement(cast(Store, _Snapshot(conn, cast(Path, path))), model, settings)
    except InputError:
        return None
    missing = sorted({n for p in s["embodied"]["phases"].values()
                      for n in p["devices_without_figure"]})
    return {**s["payback"], "devices_without_figure": missing,
            "lifetime_years": s["embodied"]["lifetime_years"],
            "utilisation": s["embodied"]["utilisation"]}
