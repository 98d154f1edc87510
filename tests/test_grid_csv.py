"""The CSV reader on the real EIA-930 traces (empty first header cell, empty cells) and on
hand-made files."""

from __future__ import annotations

from pathlib import Path

import pytest

from carbonwatch.errors import InputError
from carbonwatch.grid.csvseries import read_intensity_csv
from carbonwatch.times import parse_feed_time_s

EIA = Path(__file__).parent / "fixtures" / "eia930"
REGIONS = ("AZPS", "BPAT", "CISO", "ERCO", "MISO", "NYIS", "PJM", "SOCO", "WAAT")
GAPS = {"CISO": 3, "MISO": 3, "PJM": 23}


@pytest.mark.parametrize("region", REGIONS)
def test_eia930_files_parse_with_gaps_kept_as_gaps(region: str) -> None:
    points = read_intensity_csv((EIA / f"{region}_NG_avgCI.csv").read_text(), zone=region)
    assert len(points) == 8760 - GAPS.get(region, 0)
    assert points[0].start_s == parse_feed_time_s("2022-01-01T00:00:00Z", "t")
    assert all(p.end_s - p.start_s == 3600 for p in points)
    assert all(0 <= p.intensity_g_per_kwh < 2000 for p in points)
    assert all(a.end_s <= b.start_s for a, b in zip(points, points[1:], strict=False))


def test_waat_empty_first_header_cell_is_the_timestamp() -> None:
    points = read_intensity_csv((EIA / "WAAT_NG_avgCI.csv").read_text())
    assert points[0].intensity_g_per_kwh == pytest.approx(57.885814636943586)


@pytest.mark.parametrize(
    ("text", "values"),
    [
        ("time,carbon_intensity\n2026-01-01T00:00Z,10\n2026-01-01T00:30Z,20\n", [10, 20]),
        ("period_start,region,moer_lbs_per_mwh\n2026-01-01T00:00,X,1000\n", [453.592]),
        (
            "when,intensity_g_per_kwh\n2026-01-01 00:00:00+00:00,5\n"
            "2026-01-01 01:00:00+00:00,nan\n",
            [5],
        ),
        ("\ufefftimestamp,value\n2026-01-01T00:00:00Z,7\n", [7]),
    ],
)
def test_columns_are_detected(text: str, values: list[float]) -> None:
    got = [p.intensity_g_per_kwh for p in read_intensity_csv(text)]
    assert got == pytest.approx(values)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("timestamp,avg_CI\n", "no data rows"),
        ("a,b\nx,y\n", "no timestamp column"),
        ("timestamp,WND\n2026-01-01T00:00Z,3\n", "no intensity column"),
        ("timestamp,avg_CI\n2026-01-01T00:00Z,-1\n", "line 2"),
        ("timestamp,avg_CI\n2026-01-01T00:00Z,abc\n", "not a number"),
        ("timestamp,avg_CI\n2026-01-01T00:00Z,inf\n", "not finite"),
        ("timestamp,avg_CI\nlater,5\n", "no timestamp column"),
        ("timestamp,avg_CI\n2026-01-01T00:00Z,5\nlater,6\n", "line 3: cannot parse time"),
        ("timestamp,avg_CI\n2026-01-01T00:00Z,\n", "no usable"),
    ],
)
def test_bad_files_name_the_problem(text: str, message: str) -> None:
    with pytest.raises(InputError, match=message):
        read_intensity_csv(text)
