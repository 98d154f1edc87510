"""Any intensity time series as CSV: a local file or an http(s) URL.

Columns are found, not configured: the timestamp column by name (``timestamp``, ``datetime``,
``time``, ``from``, ``point_time``, ...) or, failing that, the first column whose first value is
a date-time (which also covers a file whose first header cell is empty, like EIA-930's WAAT).
The intensity column by name (``avg_CI``, ``carbon_intensity``, ``intensity``, ``moer``,
``value``, ...). Header cells are compared in one form: ``Carbon Intensity (gCO2eq/kWh)``,
``carbonIntensity`` and ``carbon_intensity`` are the same name (units in brackets dropped,
camelCase and spaces to snake_case). A name with ``lbs`` is taken as lbs/MWh and converted.
Empty, ``nan`` or ``NA`` cells are gaps, not points; a negative or non-numeric value is an error
naming its line.

Timestamps without a zone are UTC, or local time in ``tz`` (an IANA name) when given: DST-correct
through zoneinfo, and in the repeated hour of a change back the second reading of a local time is
the later instant. Rows may come in any order; a repeated timestamp keeps the better source (a
``kind``/``type``/``source`` column saying actual beats forecast; otherwise the later row, a
revision). Each point holds until the next, no longer than the local resolution
(:mod:`carbonwatch.grid.steps`).
"""

from __future__ import annotations

import asyncio
import csv
import io
import math
import re
from datetime import UTC, datetime, tzinfo
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import aiohttp

from carbonwatch.clock import Clock, SystemClock
from carbonwatch.errors import InputError, ProviderError
from carbonwatch.grid.http import HttpPolicy
from carbonwatch.grid.parse import LB_PER_MWH_TO_G_PER_KWH, spans
from carbonwatch.grid.types import IntensityPoint

NAME = "csv"
_TIME_NAMES = (
    "timestamp",
    "datetime",
    "date_time",
    "time",
    "start",
    "start_time",
    "from",
    "point_time",
    "period_start",
    "date",
    "",
)
_VALUE_NAMES = (
    "avg_ci",
    "carbon_intensity_g_per_kwh",
    "intensity_g_per_kwh",
    "carbon_intensity",
    "intensity",
    "ci",
    "moer",
    "co2_moer",
    "value",
    "forecast",
)
_KIND_NAMES = ("kind", "type", "source", "data_type")
# Lower is better when two rows share a timestamp; words not listed rank with forecasts.
_KIND_RANK = {"actual": 0, "measured": 0, "historical": 0, "estimate": 1, "forecast": 2}
_MISSING = frozenset({"", "nan", "na", "n/a", "null", "none", "-"})


def header_name(cell: str) -> str:
    """One form for a header cell: units in brackets dropped, camelCase and spaces to snake."""
    cell = re.sub(r"[\(\[][^\)\]]*[\)\]]", "", cell).strip()
    cell = re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", cell)
    return re.sub(r"[^a-z0-9]+", "_", cell.lower()).strip("_")


def timezone(name: str | None) -> tzinfo:
    """UTC, or the IANA zone ``name`` (InputError naming it when unknown)."""
    if not name or name.upper() == "UTC":
        return UTC
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise InputError(f"unknown time zone {name!r} (an IANA name like Europe/London)") from exc


def _parse_naive(text: str) -> datetime | None:
    text = text.strip()
    if not text:
        return None
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        return None


def _parse_when(text: str, tz: tzinfo = UTC) -> float | None:
    when = _parse_naive(text)
    if when is None:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=tz)
    return when.timestamp()


class _LocalTimes:
    """Naive local times to Unix seconds in ``tz``: the second time a file gives a local time
    that the change back from DST makes ambiguous, it is the later (fold=1) instant."""

    def __init__(self, tz: tzinfo) -> None:
        self.tz = tz
        self.seen: set[datetime] = set()

    def __call__(self, text: str) -> float | None:
        when = _parse_naive(text)
        if when is None:
            return None
        if when.tzinfo is not None:
            return when.timestamp()
        first = when.replace(tzinfo=self.tz)
        if when in self.seen:
            second = when.replace(tzinfo=self.tz, fold=1)
            if second.utcoffset() != first.utcoffset():
                return second.timestamp()
        self.seen.add(when)
        return first.timestamp()


def _pick_columns(header: list[str], first: list[str]) -> tuple[int, int]:
    names = [header_name(h) for h in header]
    time_col = next((names.index(n) for n in _TIME_NAMES if n in names), None)
    if time_col is None or (time_col < len(first) and _parse_when(first[time_col]) is None):
        time_col = next((i for i, cell in enumerate(first) if _parse_when(cell) is not None), None)
    if time_col is None:
        raise InputError(f"no timestamp column found among the header's {len(header)} columns "
                         "(e.g. 'timestamp', 'datetime')")
    value_col = next((names.index(n) for n in _VALUE_NAMES if n in names), None)
    if value_col is None:
        value_col = next(
            (i for i, n in enumerate(names) if "intensity" in n or "co2" in n or "lbs" in n), None
        )
    if value_col is None or value_col == time_col:
        raise InputError(f"no intensity column found among the header's {len(header)} columns "
                         "(e.g. 'avg_CI', 'intensity')")
    return time_col, value_col


def read_intensity_csv(
    text: str,
    *,
    zone: str = "",
    kind: str = "forecast",
    provider: str = NAME,
    fetched_at_s: float | None = None,
    default_step_s: float = 3600.0,
    tz: str | None = None,
) -> list[IntensityPoint]:
    """Parse CSV text into sorted points; raise InputError naming the bad line. ``tz``: the
    zone of timestamps written without one (default UTC)."""
    when_of = _LocalTimes(timezone(tz))
    rows = list(csv.reader(io.StringIO(text.lstrip("\ufeff"))))
    rows = [r for r in rows if any(cell.strip() for cell in r)]
    if len(rows) < 2:
        raise InputError("CSV has no data rows")
    header, body = rows[0], rows[1:]
    time_col, value_col = _pick_columns(header, body[0])
    scale = LB_PER_MWH_TO_G_PER_KWH if "lbs" in header[value_col].lower() else 1.0
    names = [header_name(h) for h in header]
    kind_col = next((names.index(n) for n in _KIND_NAMES if n in names), None)
    best: dict[float, tuple[int, int, float]] = {}  # start -> (rank, -line, value)
    for line_no, row in enumerate(body, start=2):
        if max(time_col, value_col) >= len(row):
            raise InputError(f"line {line_no}: too few cells")
        cell = row[value_col].strip()
        if cell.lower() in _MISSING:
            continue  # a gap in the series
        start_s = when_of(row[time_col])
        if start_s is None:
            raise InputError(f"line {line_no}: cannot parse time in column {time_col + 1}")
        try:
            value = float(cell) * scale
        except ValueError:
            raise InputError(f"line {line_no}: intensity in column {value_col + 1} is not a "
                             "number") from None
        if math.isnan(value):
            continue
        if not math.isfinite(value) or value < 0:
            raise InputError(f"line {line_no}: intensity in column {value_col + 1} is not finite "
                             "and >= 0")
        has_kind = kind_col is not None and kind_col < len(row)
        label = row[kind_col].strip().lower() if has_kind else ""
        candidate = (_KIND_RANK.get(label, 2), -line_no, value)
        if start_s not in best or candidate < best[start_s]:
            best[start_s] = candidate  # the better source, else the later row (a revision)
    if not best:
        raise InputError("CSV has no usable intensity values")
    parsed = sorted((s, v) for s, (_, _, v) in best.items())
    ends = spans([s for s, _ in parsed], default_step_s)
    return [
        IntensityPoint(s, e, v, kind, "average", provider, zone, fetched_at_s)
        for (s, v), (_, e) in zip(parsed, ends, strict=True)
    ]


class CsvProvider:
    """A Provider over a CSV file or URL (``provider_url``); ``kind`` labels its points."""

    name = NAME

    def __init__(
        self,
        source: str,
        *,
        kind: str = "forecast",
        policy: HttpPolicy = HttpPolicy(),
        clock: Clock | None = None,
        session: aiohttp.ClientSession | None = None,
        tz: str = "",
    ) -> None:
        if not source:
            raise ProviderError("csv: no file or URL configured (provider_url)")
        self.source = source
        self.kind = kind
        self.policy = policy
        self.clock = clock or SystemClock()
        self.session = session
        self.tz = tz

    async def _text(self) -> str:
        if self.source.startswith(("http://", "https://")):
            return await self._download()
        try:
            return await asyncio.to_thread(Path(self.source).read_text, encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ProviderError(f"csv: cannot read {self.source}: {exc}") from exc

    async def _download(self) -> str:
        timeout = aiohttp.ClientTimeout(total=self.policy.timeout_s)
        try:
            if self.session is None:
                async with aiohttp.ClientSession() as session:
                    return await self._get(session, timeout)
            return await self._get(self.session, timeout)
        except TimeoutError as exc:
            raise ProviderError(f"csv: {self.source} timed out") from exc
        except aiohttp.ClientError as exc:
            raise ProviderError(f"csv: cannot fetch ({type(exc).__name__})") from exc

    async def _get(self, session: aiohttp.ClientSession, timeout: aiohttp.ClientTimeout) -> str:
        async with session.get(self.source, timeout=timeout) as resp:
            if resp.status != 200:
                raise ProviderError(f"csv: HTTP {resp.status}")
            return await resp.text()

    async def _points(self, zone: str) -> list[IntensityPoint]:
        text = await self._text()
        try:
            return read_intensity_csv(
                text, zone=zone, kind=self.kind, fetched_at_s=self.clock.time(), tz=self.tz
            )
        except InputError as exc:
            raise ProviderError(f"csv: {self.source}: {exc}") from exc

    async def latest(self, zone: str) -> IntensityPoint:
        now_s = self.clock.time()
        for point in await self._points(zone):
            if point.start_s <= now_s < point.end_s:
                return point
        raise ProviderError(f"csv: {self.source} has no point covering now")

    async def forecast(self, zone: str) -> list[IntensityPoint]:
        now_s = self.clock.time()
        points = [p for p in await self._points(zone) if p.end_s > now_s]
        if not points:
            raise ProviderError(f"csv: {self.source} has no points from now on")
        return points
