"""Time, in one place: Unix seconds at rest, ISO-8601 UTC with ``Z`` on the wire.

Two parsers with two contracts, named for them: :func:`parse_user_time_s` reads what a user types
(``now``, ``+12h``, ISO-8601 that must carry a zone; InputError), :func:`parse_feed_time_s` reads
a provider's or a file's timestamps (naive means UTC; ProviderError naming where). Durations
(``45m``, ``PT1H30M``) and the one-year horizon live here too."""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime
from typing import Any

from carbonwatch.errors import InputError, ProviderError


def iso_utc_exact(t_s: float) -> str:
    """Unix seconds to ISO-8601 UTC, microseconds kept when there are any: ``...T06:00:00.5Z``."""
    return datetime.fromtimestamp(t_s, UTC).isoformat().replace("+00:00", "Z")


def iso_utc_or_none(t_s: Any, *, exact: bool = True) -> str | None:
    """:func:`iso_utc_exact` (:func:`iso_utc` with ``exact=False``), or None for a missing time
    or one no datetime can hold (infinite, out of range, a stored value of an older daemon)."""
    if t_s is None:
        return None
    try:
        return iso_utc_exact(t_s) if exact else iso_utc(t_s)
    except (ValueError, OverflowError, OSError, TypeError):
        return None


def iso_utc(t_s: float) -> str:
    """Unix seconds to ``2026-12-01T06:00:00Z`` (whole seconds: forecasts, plans, deadlines)."""
    return datetime.fromtimestamp(t_s, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_feed_time_s(raw: Any, where: str) -> float:
    """A provider's ISO-8601 time (``Z`` or an offset; naive means UTC) to Unix seconds."""
    if not isinstance(raw, str) or not raw:
        raise ProviderError(f"{where}: expected an ISO-8601 time, got {raw!r}")
    try:
        when = datetime.fromisoformat(raw.strip())
    except ValueError as exc:
        raise ProviderError(f"{where}: cannot parse time {raw!r}") from exc
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.timestamp()


# The farthest ahead a deadline (or a job's length) may be: forecasts reach days ahead, and a
# time past year 9999 cannot even be shown (1e12 s was once stored and broke every listing).
MAX_AHEAD_S = 365 * 86400.0
_UNIT_S = {"d": 86400.0, "h": 3600.0, "m": 60.0, "s": 1.0}
_COMPACT = re.compile(r"(\d+(?:\.\d+)?)([dhms])")
_ISO = re.compile(
    r"P(?:(?P<d>\d+(?:\.\d+)?)D)?(?:T(?:(?P<h>\d+(?:\.\d+)?)H)?(?:(?P<m>\d+(?:\.\d+)?)M)?"
    r"(?:(?P<s>\d+(?:\.\d+)?)S)?)?"
)


def parse_duration_s(text: str) -> float:
    """``45m``, ``2h``, ``1h30m``, ``1d``, ``90s`` or ISO-8601 ``PT1H30M``; must be > 0."""
    raw = text.strip().lower().replace(" ", "")
    seconds: float | None = None
    iso = _ISO.fullmatch(raw.upper())
    if iso and raw.upper() not in ("P", "PT"):
        seconds = sum(float(v) * _UNIT_S[k.lower()] for k, v in iso.groupdict().items() if v)
    elif raw and _COMPACT.sub("", raw) == "":
        units = [u for _, u in _COMPACT.findall(raw)]
        if len(set(units)) == len(units) and units == sorted(units, key="dhms".index):
            seconds = sum(float(n) * _UNIT_S[u] for n, u in _COMPACT.findall(raw))
    if seconds is None:
        raise InputError(
            f"cannot parse duration {text[:64]!r}; use e.g. 45m, 2h, 1h30m, 1d or PT1H30M")
    if not (math.isfinite(seconds) and seconds > 0):
        raise InputError(f"duration {text[:64]!r} must be a finite number more than zero")
    return seconds


def parse_user_time_s(text: str, now_s: float) -> float:
    """``now``, ``+12h`` (relative to now) or ISO-8601 with ``Z`` or an offset, to Unix seconds.

    A time without a zone is refused rather than guessed: a deadline read in the wrong zone is
    missed by hours."""
    raw = text.strip()
    if raw.lower() == "now":
        return now_s
    if raw.startswith("+"):
        return now_s + parse_duration_s(raw[1:])
    try:
        when = datetime.fromisoformat(raw)
    except ValueError as exc:
        raise InputError(
            f"cannot parse time {text!r}; use ISO-8601 like 2026-12-01T06:00:00Z, +12h, or now"
        ) from exc
    if when.tzinfo is None:
        raise InputError(f"time {text!r} has no zone; add Z (UTC) or an offset like +01:00")
    return when.timestamp()


def check_ahead(t_s: float, now_s: float, what: str) -> float:
    """``t_s`` if it is at most :data:`MAX_AHEAD_S` after ``now_s``, else a clear InputError."""
    if not (math.isfinite(t_s) and t_s - now_s <= MAX_AHEAD_S):
        raise InputError(f"{what} is more than a year ahead; the most is 365 days from now")
    if t_s < 0:  # before 1970: no forecast, and some such times cannot even be shown
        raise InputError(f"{what} is before 1970")
    return t_s
