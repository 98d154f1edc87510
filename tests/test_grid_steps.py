"""Series as they come: mixed resolution, holes, unsorted rows, repeated timestamps, local
time across DST. Each case is built from a known step function (the truth), written out as a
messy CSV, read back, and planned; the plans are checked against a brute-force oracle on the
truth (every whole-minute start, every minute) and never cover a hole."""

from __future__ import annotations

import asyncio
import json
import random
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from aiohttp import web
from click.testing import CliRunner

from carbonwatch.errors import InputError
from carbonwatch.grid.csvseries import header_name, read_intensity_csv
from carbonwatch.grid.steps import describe_gaps, local_steps
from carbonwatch.scheduler.planner import plan_contiguous, plan_interruptible

MIN_S = 60.0
Truth = list[tuple[float, float, float]]  # (start_s, end_s, g/kWh), sorted, non-overlapping


def utc(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()


def steps(t0_s: float, step_s: float, n: int, rng: random.Random) -> Truth:
    return [(t0_s + i * step_s, t0_s + (i + 1) * step_s, rng.uniform(20, 600)) for i in range(n)]


def mixed(rng: random.Random) -> Truth:
    """A day of 30-minute points, then a day of 15-minute ones (the grid operator's file)."""
    t0 = utc("2026-03-24T00:00:00")
    first = steps(t0, 1800, 48, rng)
    return first + steps(first[-1][1], 900, 96, rng)


def gapped(rng: random.Random) -> Truth:
    """15-minute points with a hole 02:00-04:00 on 2026-03-25 and one missing point later."""
    points = steps(utc("2026-03-24T12:00:00"), 900, 96, rng)
    hole = (utc("2026-03-25T02:00:00"), utc("2026-03-25T04:00:00"))
    missing = utc("2026-03-25T07:15:00")
    return [p for p in points if not (hole[0] <= p[0] < hole[1]) and p[0] != missing]


def to_csv(truth: Truth, rng: random.Random, *, tz: str | None = None, dupes: bool = False) -> str:
    """The truth as a published file: naive times (UTC, or local in ``tz``), shuffled rows, a
    header with units; with ``dupes``, each point also appears as a worse (forecast) row and
    an earlier revision of the same actual."""
    zone = ZoneInfo(tz) if tz else UTC
    rows = []
    for start_s, _, value in truth:
        when = datetime.fromtimestamp(start_s, UTC).astimezone(zone).replace(tzinfo=None)
        rows.append((start_s, when.isoformat(sep=" "), f"{value!r}", "actual"))
        if dupes:
            rows.append((start_s, when.isoformat(sep=" "), f"{value * 3 + 1!r}", "forecast"))
    if tz:
        rows.sort()  # local times repeat in the hour back from DST: file order tells them apart
    else:
        rng.shuffle(rows)
    if dupes:  # an earlier (superseded) actual of every 5th point, before the final one
        rows = [(s, w, f"{float(v) + 50!r}", k) for s, w, v, k in rows[::5] if k == "actual"] + rows
    header = (
        "Time,Carbon Intensity (gCO2eq/kWh),kind" if dupes else "Time,Carbon Intensity (gCO2eq/kWh)"
    )
    body = [f"{w},{v},{k}" if dupes else f"{w},{v}" for _, w, v, k in rows]
    return "\n".join([header, *body]) + "\n"


def value_at(truth: Truth, t_s: float) -> float | None:
    for start_s, end_s, value in truth:
        if start_s <= t_s < end_s:
            return value
    return None


def oracle_contiguous(truth: Truth, duration_s: float, release_s: float, deadline_s: float):
    """The earliest whole-minute start with the lowest mean; None when no start is covered."""
    n = int(duration_s // MIN_S)
    minutes = [
        value_at(truth, release_s + k * MIN_S)
        for k in range(int((deadline_s - release_s) // MIN_S))
    ]
    best = None
    for k in range(len(minutes) - n + 1):
        window = minutes[k : k + n]
        if any(v is None for v in window):
            continue
        mean = sum(window) / n
        if best is None or mean < best[0] - 1e-9 * best[0]:
            best = (mean, release_s + k * MIN_S)
    return best


def oracle_interruptible(truth: Truth, duration_s: float, release_s: float, deadline_s: float):
    n = int(duration_s // MIN_S)
    values = [
        value_at(truth, release_s + k * MIN_S)
        for k in range(int((deadline_s - release_s) // MIN_S))
    ]
    known = sorted(v for v in values if v is not None)
    return None if len(known) < n else sum(known[:n]) / n


def covers(truth: Truth, start_s: float, end_s: float) -> bool:
    return all(value_at(truth, t) is not None for t in _minutes(start_s, end_s))


def _minutes(start_s: float, end_s: float) -> list[float]:
    return [start_s + k * MIN_S for k in range(int(round((end_s - start_s) / MIN_S)))]


CASES = {
    "mixed": lambda rng: (mixed(rng), to_csv(mixed(random.Random(1)), rng), None),
    "gapped": lambda rng: (gapped(rng), to_csv(gapped(random.Random(1)), rng), None),
    "unsorted+duplicated": lambda rng: (
        mixed(rng),
        to_csv(mixed(random.Random(1)), rng, dupes=True),
        None,
    ),
    "dst-local-spring": lambda rng: (
        (t := steps(utc("2026-03-28T12:00:00"), 1800, 72, random.Random(1))),
        to_csv(t, rng, tz="Europe/London"),
        "Europe/London",
    ),
    "dst-local-autumn": lambda rng: (
        (t := steps(utc("2026-10-24T12:00:00"), 1800, 72, random.Random(1))),
        to_csv(t, rng, tz="Europe/London"),
        "Europe/London",
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_the_read_series_is_the_truth(case: str) -> None:
    truth, text, tz = CASES[case](random.Random(1))
    points = read_intensity_csv(text, tz=tz)
    assert [(p.start_s, p.end_s) for p in points] == [(s, e) for s, e, _ in truth]
    assert [p.intensity_g_per_kwh for p in points] == pytest.approx([v for _, _, v in truth])


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("seed", range(6))
def test_plans_equal_the_oracle_and_never_cover_a_hole(case: str, seed: int) -> None:
    truth, text, tz = CASES[case](random.Random(1))
    points = read_intensity_csv(text, tz=tz)
    rng = random.Random(seed)
    lo, hi = truth[0][0], truth[-1][1]
    release_s = lo + rng.randrange(0, int((hi - lo) * 0.6 // MIN_S)) * MIN_S
    duration_s = rng.randrange(15, 300) * MIN_S
    deadline_s = min(hi + 3600, release_s + duration_s + rng.randrange(60, 900) * MIN_S)
    plan = plan_contiguous(
        points, duration_s=duration_s, release_s=release_s, deadline_s=deadline_s
    )
    best = oracle_contiguous(truth, duration_s, release_s, deadline_s)
    if best is None:
        assert plan.basis == "no_forecast"
    else:
        assert plan.basis == "forecast"
        assert plan.start_s == best[1]
        assert plan.mean_intensity_g_per_kwh == pytest.approx(best[0], rel=1e-9)
        assert covers(truth, plan.start_s, plan.end_s)
    split = plan_interruptible(
        points, duration_s=duration_s, release_s=release_s, deadline_s=deadline_s
    )
    cheapest = oracle_interruptible(truth, duration_s, release_s, deadline_s)
    if cheapest is None:
        assert split.basis == "no_forecast"
    else:
        assert split.mean_intensity_g_per_kwh == pytest.approx(cheapest, rel=1e-9)
        assert all(covers(truth, s, e) for s, e in split.windows)


def test_a_fallback_names_the_hole(tmp_path: Path) -> None:
    from carbonwatch.cli.grid import plan_cmd

    csv = tmp_path / "gb.csv"
    csv.write_text(to_csv(gapped(random.Random(1)), random.Random(2)))
    env = {
        "XDG_CONFIG_HOME": str(tmp_path),
        "CARBONWATCH_DB": str(tmp_path / "cw.db"),
        "CARBONWATCH_CONFIG": "",
    }
    args = [
        "--duration",
        "3h",
        "--start",
        "2026-03-25T01:00:00Z",
        "--deadline",
        "2026-03-25T05:00:00Z",
        "--forecast",
        str(csv),
    ]
    result = CliRunner().invoke(plan_cmd, args, env=env, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "no forecast covers the job (no data 02:00-04:00 on 2026-03-25)" in result.output
    out = json.loads(CliRunner().invoke(plan_cmd, [*args, "--json"], env=env).stdout)
    assert out["basis"] == "no_forecast"
    assert out["reason"] == "no data 02:00-04:00 on 2026-03-25"


def test_local_steps_follow_the_resolution_and_keep_holes() -> None:
    starts = [0, 1800, 3600, 5400, 7200, 8100, 9000, 9900, 12600, 13500, 14400]
    assert local_steps(starts, 3600) == [1800] * 4 + [900] * 7
    assert local_steps([5.0], 300) == [300]
    day = utc("2026-03-25T00:00:00")
    assert describe_gaps([(day, day + 7200)], day, day + 86400 + 3600) == [
        "no data 2026-03-25 02:00 - 2026-03-26 01:00"
    ]
    assert describe_gaps([], day + 3600, day + 86400) == ["no data 01:00-24:00 on 2026-03-25"]


@pytest.mark.parametrize(
    ("cell", "name"),
    [
        ("Carbon Intensity (gCO2eq/kWh)", "carbon_intensity"),
        ("carbonIntensity", "carbon_intensity"),
        ("avg_CI", "avg_ci"),
        ("Datetime (UTC)", "datetime"),
        ("period_start", "period_start"),
        ("MOER [lbs/MWh]", "moer"),
    ],
)
def test_header_variants(cell: str, name: str) -> None:
    assert header_name(cell) == name


@pytest.mark.parametrize(
    "header",
    [
        "Time,Carbon Intensity",
        "datetime,carbonIntensity",
        "timestamp,avg_CI",
        "period_start,moer",
        "Datetime (UTC),carbon_intensity (gCO2eq/kWh)",
    ],
)
def test_headers_as_published(header: str) -> None:
    points = read_intensity_csv(f"{header}\n2026-01-01 00:00,10\n2026-01-01 00:30,20\n")
    assert [(p.start_s, p.end_s) for p in points] == [
        (utc("2026-01-01T00:00:00"), utc("2026-01-01T00:30:00")),
        (utc("2026-01-01T00:30:00"), utc("2026-01-01T01:00:00")),
    ]


def test_unknown_time_zone_is_a_clear_error() -> None:
    with pytest.raises(InputError, match="unknown time zone 'Mars/Olympus'"):
        read_intensity_csv("time,ci\n2026-01-01 00:00,1\n", tz="Mars/Olympus")


@pytest.fixture
def uk_server() -> Iterator[str]:
    """The GB Carbon Intensity API's national endpoints, in a thread."""
    now = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)

    def period(i: int) -> dict[str, Any]:
        start = datetime.fromtimestamp(now.timestamp() + i * 1800, UTC)
        end = datetime.fromtimestamp(now.timestamp() + (i + 1) * 1800, UTC)
        return {
            "from": start.strftime("%Y-%m-%dT%H:%MZ"),
            "to": end.strftime("%Y-%m-%dT%H:%MZ"),
            "intensity": {"forecast": 100 + i, "actual": None, "index": "low"},
        }

    async def latest(request: web.Request) -> web.Response:
        return web.json_response({"data": [period(0)]})

    async def forecast(request: web.Request) -> web.Response:
        return web.json_response({"data": [period(i) for i in range(4)]})

    loop = asyncio.new_event_loop()
    app = web.Application()
    app.router.add_get("/intensity", latest)
    app.router.add_get("/intensity/{start}/fw48h", forecast)
    runner = web.AppRunner(app, access_log=None)
    loop.run_until_complete(runner.setup())
    site = web.TCPSite(runner, "127.0.0.1", 0)
    loop.run_until_complete(site.start())
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    loop.call_soon_threadsafe(loop.stop)
    thread.join(5)
    loop.run_until_complete(runner.cleanup())
    loop.close()


def test_ukgrid_without_a_zone_is_national_gb(tmp_path: Path, uk_server: str) -> None:
    from carbonwatch.cli.grid import intensity_cmd

    env = {
        "XDG_CONFIG_HOME": str(tmp_path),
        "CARBONWATCH_DB": str(tmp_path / "cw.db"),
        "CARBONWATCH_CONFIG": "",
        "CARBONWATCH_ZONE": "",
    }
    args = ["--provider", "ukgrid", "--provider-url", uk_server, "--forecast", "--json"]
    result = CliRunner().invoke(intensity_cmd, args, env=env, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert out["via"] == "provider"
    assert [p["intensity_g_per_kwh"] for p in out["points"]] == [100, 101, 102, 103]
    assert {p["provenance"]["zone"] for p in out["points"]} == {"GB"}
