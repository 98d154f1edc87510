"""Flushes the store refused are merged by minute row, and capped: a store that never recovers
costs memory per minute waiting, not per failed flush, and the oldest minutes go first."""

from __future__ import annotations

from pathlib import Path

import pytest

from carbonwatch.daemon.flush import Flush, merge_flushes
from carbonwatch.daemon.metrics import MetricTotals
from carbonwatch.store import Store


def _row(minute_s: int, device: str, consumer: str, energy_j: float, **extra) -> dict:
    return {
        "minute_s": minute_s, "device_id": device, "device_class": "gpu", "consumer": consumer,
        "phase": "other", "model": "", "energy_j": energy_j, "co2e_g": energy_j / 10,
        "cost": energy_j / 100, "intensity_g_per_kwh": 100.0, "intensity_kind": "static",
        "provenance": "measured", **extra,
    }


def _flush(rows: list[dict], *, batch_ids=(), sampled_until_s=None) -> Flush:
    return Flush(
        energy_rows=rows, batch_ids=list(batch_ids), call_rows=[("raw",)], call_minutes=[],
        job_calls={}, between_j={},
        metric_energy=[(("", "", r["consumer"], r["model"], r["phase"], r["device_id"]),
                        r["energy_j"], r["co2e_g"], r["cost"]) for r in rows],
        sampled_until_s=sampled_until_s,
    )


def _minutes(store: Store) -> list[tuple]:
    return store.conn.execute(
        "SELECT minute_s, device_id, consumer, round(energy_j, 9), round(co2e_g, 9),"
        " round(intensity_g_per_kwh, 9), intensity_kind, provenance FROM energy_minute"
        " ORDER BY minute_s, device_id, consumer").fetchall()


def test_failed_flushes_merge_into_one_row_per_minute_device_and_consumer():
    flushes = [
        _flush([_row(60, "gpu0", "other", 10.0), _row(60, "gpu1", "other", 5.0)],
               batch_ids=[1], sampled_until_s=61.0),
        _flush([_row(60, "gpu0", "other", 30.0, intensity_g_per_kwh=200.0,
                     intensity_kind="forecast", provenance="estimated")],
               batch_ids=[2], sampled_until_s=62.0),
        _flush([_row(120, "gpu0", "other", 1.0)]),
    ]
    merged, dropped = merge_flushes(flushes, max_minutes=10)
    assert dropped == 0
    by_key = {(r["minute_s"], r["device_id"]): r for r in merged.energy_rows}
    assert set(by_key) == {(60, "gpu0"), (60, "gpu1"), (120, "gpu0")}
    gpu0 = by_key[(60, "gpu0")]
    assert gpu0["energy_j"] == 40.0
    assert gpu0["co2e_g"] == pytest.approx(4.0)
    assert gpu0["intensity_g_per_kwh"] == pytest.approx(175.0)  # energy-weighted
    assert (gpu0["intensity_kind"], gpu0["provenance"]) == ("mixed", "estimated")
    assert sum(e for _, e, _, _ in merged.metric_energy) == 46.0
    assert len(merged.metric_energy) == 3
    assert merged.batch_ids == [1, 2]
    assert merged.sampled_until_s == 62.0
    assert merged.call_rows == []  # the raw log is written apart, when a flush is made


def test_a_merged_flush_stores_what_the_flushes_would_have(tmp_path: Path):
    flushes = [
        _flush([_row(60, "gpu0", "other", 10.0), _row(60, "gpu0", "idle", 2.0)]),
        _flush([_row(60, "gpu0", "other", 30.0, intensity_g_per_kwh=300.0)]),
        _flush([_row(120, "gpu0", "other", 0.0, intensity_kind="actual")]),
    ]
    with Store(tmp_path / "each.db") as each, Store(tmp_path / "merged.db") as one:
        for flush in flushes:
            with each.transaction():
                flush.write(each, "sampled_until_s")
        with one.transaction():
            merge_flushes(flushes, max_minutes=10)[0].write(one, "sampled_until_s")
        assert _minutes(one) == _minutes(each)


def test_past_the_cap_the_oldest_minutes_are_dropped_and_counted():
    flushes = [_flush([_row(60 * m, "gpu0", "other", 1.0), _row(60 * m, "gpu0", "idle", 1.0)])
               for m in range(1, 6)]
    merged, dropped = merge_flushes(flushes, max_minutes=3)
    assert dropped == 4  # minutes 60 and 120, two rows each
    assert sorted({r["minute_s"] for r in merged.energy_rows}) == [180, 240, 300]
    # The counters never count what the store will not hold.
    assert sum(e for _, e, _, _ in merged.metric_energy) == 6.0

    # Merging again (the next failure) keeps the bound.
    again, dropped = merge_flushes([merged, _flush([_row(360, "gpu0", "other", 1.0)])], 3)
    assert dropped == 2
    assert sorted({r["minute_s"] for r in again.energy_rows}) == [240, 300, 360]


def test_a_merged_flush_publishes_the_calls_of_every_minute():
    def calls(minute_s: int, n: int) -> dict:
        return {"minute_s": minute_s, "model": "m", "calls": n, "busy_s": 1.0,
                "energy_j": 1.0, "co2e_g": 0.1, "cost": 0.0}

    flushes = [_flush([]), _flush([]), _flush([])]
    flushes[0].call_minutes = [calls(60, 2)]
    flushes[1].call_minutes = [calls(60, 3)]
    flushes[2].call_minutes = [calls(120, 4)]
    merged, _ = merge_flushes(flushes, max_minutes=10)
    assert sorted((r["minute_s"], r["calls"]) for r in merged.call_minutes) == [(60, 5), (120, 4)]
    totals = MetricTotals()
    merged.published(totals)
    assert totals.snapshot()[1] == {"m": 9}
