"""Time as carbonwatch writes it: Unix seconds at rest, ISO-8601 UTC with ``Z`` on the wire.

One place for the formatting every report, answer and statement uses. (Parsing user input, which
accepts relative forms, lives in ``scheduler/durations.py``; parsing a provider's times, which
raises the provider's error, in ``grid/parse.py``.)"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any


def iso_utc(t_s: float) -> str:
    """Unix seconds to ISO-8601 UTC, microseconds kept when there are any: ``...T06:00:00.5Z``."""
    return datetime.fromtimestamp(t_s, UTC).isoformat().replace("+00:00", "Z")


def iso_utc_or_none(t_s: Any) -> str | None:
    """:func:`iso_utc`, or None for a missing time or one no datetime can hold."""
    if t_s is None:
        return None
    try:
        return iso_utc(t_s)
    except (ValueError, OverflowError, OSError, TypeError):
        return None
