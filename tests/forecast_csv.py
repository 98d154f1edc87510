"""Forecast files for scheduler tests: real CISO intensities (EIA-930) laid out as short slots
from a chosen start, so a plan's windows are known before the scheduler makes them."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

EIA_CISO = Path(__file__).parent / "fixtures" / "eia930" / "CISO_NG_avgCI.csv"


def eia_values(first_hour: int, count: int) -> list[float]:
    lines = EIA_CISO.read_text().splitlines()[1 + first_hour : 1 + first_hour + count]
    return [float(line.rsplit(",", 1)[1]) for line in lines]


def shifted_csv(path: Path, values: list[float], start_s: float, slot_s: float) -> Path:
    """``values`` as consecutive slots of ``slot_s`` from ``start_s``."""
    rows = [
        f"{datetime.fromtimestamp(start_s + i * slot_s, UTC).isoformat()},{v}"
        for i, v in enumerate(values)
    ]
    path.write_text("timestamp,avg_CI\n" + "\n".join(rows) + "\n")
    return path
