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


def model_payback(path: Path | None, model: str, settings: Settings | None = None
                  ) -> dict[str, Any] | None:
    """The statement's payback and embodied blocks; None when the store holds nothing for it."""
    from carbonwatch.statement import model_statement
    from carbonwatch.store import Store

    with read_snapshot(path) as (conn, _schema):
        try:
            s = model_statement(cast(Store, _Snapshot(conn, cast(Path, path))), model, settings)
        except InputError:
            return None
    missing = sorted({n for p in s["embodied"]["phases"].values()
                      for n in p["devices_without_figure"]})
    return {**s["payback"], "devices_without_figure": missing,
            "lifetime_years": s["embodied"]["lifetime_years"],
            "utilisation": s["embodied"]["utilisation"]}
