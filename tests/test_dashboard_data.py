"""The dashboard's data layer: range sums from the rollups equal plain sums over the minute rows,
the rollup triggers follow every write path, and an unreadable store becomes a readable message."""

from __future__ import annotations

import random
import sqlite3
from pathlib import Path

import pytest
from seed import SeedSpec, seed_store

from carbonwatch.dashboard import data
from carbonwatch.dashboard.reader import DataUnavailable, read_snapshot, rollup
from carbonwatch.store import open_store
from carbonwatch.store.migrations import MIGRATIONS

SPEC = SeedSpec(days=2.5, gpus=3, training_jobs=4, calls=300_000, zones=("CISO", "ERCO"))


@pytest.fixture(scope="module")
def seeded(tmp_path_factory: pytest.TempPathFactory):
    return seed_store(tmp_path_factory.mktemp("seeded") / "s.db", SPEC)


def _minute_sums(path: Path, start: int, end: int, zone: str | None = None) -> dict:
    """Plain sums over the minute rows, per phase: what every rollup must equal."""
    with sqlite3.connect(path) as conn:
        rows = conn.execute(
            "SELECT phase, SUM(energy_j), SUM(co2e_g), SUM(cost) FROM energy_minute "
            "WHERE minute_s >= ? AND minute_s < ? AND (? IS NULL OR zone = ?) GROUP BY phase",
            (start, end, zone, zone)).fetchall()
    return {p: (e, g, c) for p, e, g, c in rows}


def test_range_sums_from_rollups_equal_minute_sums_at_any_edges(seeded):
    rng = random.Random(3)
    with read_snapshot(seeded.path) as (conn, schema):
        assert schema.has_rollups and schema.has_zone
        for _ in range(25):
            a = rng.randrange(seeded.start_s - 3600, seeded.end_s, 60)
            b = rng.randrange(a, seeded.end_s + 3600, 60)
            got = {r["phase"]: r for r in rollup(conn, schema, "energy", a, b, ("phase",))}
            want = _minute_sums(seeded.path, a, b)
            assert set(got) == set(want)
            for phase, (e, g, c) in want.items():
                assert got[phase]["energy_j"] == pytest.approx(e, rel=1e-9)
                assert got[phase]["co2e_g"] == pytest.approx(g, rel=1e-9)
                assert got[phase]["cost"] == pytest.approx(c, rel=1e-9)


def test_bucketed_series_add_up_to_the_range_total(seeded):
    with read_snapshot(seeded.path) as (conn, schema):
        for bucket in (300, 3600, 86400):
            rows = rollup(conn, schema, "energy", seeded.start_s + 1234 * 60, seeded.end_s,
                          ("device_id",), bucket, {"zone": "ERCO"})
            assert all(r["t_s"] % bucket == 0 for r in rows)
            total = sum(r["energy_j"] for r in rows)
            want = sum(v[0] for v in _minute_sums(
                seeded.path, seeded.start_s + 1234 * 60, seeded.end_s, "ERCO").values())
            assert total == pytest.approx(want, rel=1e-9)


def test_overview_totals_follow_range_and_zone(seeded):
    for key, seconds in (("all", None), ("24h", 86400), ("6h", 6 * 3600)):
        for zone in (None, "CISO"):
            ov = data.overview(seeded.path, key, zone)
            start = seeded.start_s if seconds is None else seeded.end_s - seconds
            want = _minute_sums(seeded.path, start, seeded.end_s, zone)
            assert ov.window.start_s == start and ov.window.end_s == seeded.end_s
            for phase, (e, g, c) in want.items():
                assert ov.totals[phase]["energy_j"] == pytest.approx(e, rel=1e-9)
                assert ov.totals[phase]["co2e_g"] == pytest.approx(g, rel=1e-9)
                assert ov.totals[phase]["cost"] == pytest.approx(c, rel=1e-9)


def _rollups_match_minutes(conn: sqlite3.Connection) -> None:
    for level, size in (("hour", 3600), ("day", 86400)):
        got = conn.execute(
            f"SELECT {level}_s, device_id, consumer, provenance, SUM(energy_j), SUM(minutes) "  # noqa: S608
            f"FROM energy_{level} GROUP BY 1, 2, 3, 4 HAVING SUM(minutes) != 0 ORDER BY 1, 2, 3, 4"
        ).fetchall()
        want = conn.execute(
            f"SELECT minute_s - minute_s % {size}, device_id, consumer, provenance, "  # noqa: S608
            "SUM(energy_j), COUNT(*) FROM energy_minute GROUP BY 1, 2, 3, 4 ORDER BY 1, 2, 3, 4"
        ).fetchall()
        assert [r[:4] + (r[5],) for r in got] == [r[:4] + (r[5],) for r in want]
        for g, w in zip(got, want, strict=True):
            assert g[4] == pytest.approx(w[4], rel=1e-9, abs=1e-9)


def _row(minute_s: int, **kw: object) -> dict:
    row = dict(minute_s=minute_s, device_id="gpu0", device_class="gpu", consumer="job:a",
               phase="training", model="m", energy_j=10.0, co2e_g=1.0, cost=0.1,
               intensity_g_per_kwh=100.0, intensity_kind="actual", provenance="measured")
    row.update(kw)
    return row


def test_rollup_triggers_follow_inserts_upserts_updates_and_deletes(tmp_path):
    with open_store(tmp_path / "s.db") as store:
        store.add_energy_minutes([_row(m) for m in range(0, 7200 * 20, 60)])
        # The additive ON CONFLICT path, one of which turns a minute 'estimated'.
        store.add_energy_minutes([_row(120), _row(180, provenance="estimated", energy_j=5.0)])
        store.conn.execute("UPDATE energy_minute SET energy_j = 99 WHERE minute_s = 3600")
        store.conn.execute("UPDATE energy_minute SET minute_s = 200040 WHERE minute_s = 60")
        store.conn.execute("DELETE FROM energy_minute WHERE minute_s BETWEEN 100000 AND 110000")
        _rollups_match_minutes(store.conn)


def test_migration_backfills_rollups_of_an_existing_store(tmp_path):
    path = tmp_path / "old.db"
    conn = sqlite3.connect(path, isolation_level=None)
    for number, step in enumerate(MIGRATIONS[:3], start=1):  # a store from before m004
        step(conn)
        conn.execute(f"PRAGMA user_version = {number}")
    conn.executemany(
        "INSERT INTO energy_minute (minute_s, device_id, device_class, consumer, phase, model, "
        "energy_j, co2e_g, cost, intensity_g_per_kwh, intensity_kind, provenance) VALUES "
        "(:minute_s, :device_id, :device_class, :consumer, :phase, :model, :energy_j, :co2e_g, "
        ":cost, :intensity_g_per_kwh, :intensity_kind, :provenance)",
        [_row(m, energy_j=float(m % 7)) for m in range(0, 86400 * 2, 60)])
    conn.close()
    with open_store(path) as store:
        assert store.schema_version == len(MIGRATIONS)
        _rollups_match_minutes(store.conn)


def test_a_store_without_rollups_or_zones_is_read_from_minutes(tmp_path, seeded):
    path = tmp_path / "v1.db"
    conn = sqlite3.connect(path, isolation_level=None)
    MIGRATIONS[0](conn)
    conn.execute("PRAGMA user_version = 1")
    conn.executemany(
        "INSERT INTO energy_minute (minute_s, device_id, device_class, consumer, phase, model, "
        "energy_j, co2e_g, cost, intensity_g_per_kwh, intensity_kind, provenance) VALUES "
        "(:minute_s, :device_id, :device_class, :consumer, :phase, :model, :energy_j, :co2e_g, "
        ":cost, :intensity_g_per_kwh, :intensity_kind, :provenance)",
        [_row(m) for m in range(0, 86400, 60)])
    conn.close()
    ov = data.overview(path, "all", "CISO")  # a zone filter on a zoneless store: all rows
    assert ov.totals["training"]["energy_j"] == pytest.approx(10.0 * 1440)
    assert data.devices(path, "24h", None).devices[0].device_id == "gpu0"


def test_crossover_is_where_inference_passes_training_and_stays_ahead():
    t = [0, 10, 20, 30]
    assert data.crossover(t, [0, 4, 4, 4], [0, 2, 6, 8]).t_s == pytest.approx(15)
    assert data.crossover(t, [0, 4, 4, 12], [0, 2, 6, 8]) is None  # training went back ahead
    assert data.crossover(t, [0, 0, 0, 0], [0, 1, 2, 3]) is None  # no training in the range


def test_unreadable_stores_raise_readable_messages(tmp_path):
    with pytest.raises(DataUnavailable) as missing:
        data.overview(tmp_path / "nope.db", "all", None)
    assert missing.value.kind == "missing" and "carbonwatch run --" in missing.value.hint

    corrupt = tmp_path / "corrupt.db"
    corrupt.write_bytes(b"not a database " * 500)
    with pytest.raises(DataUnavailable) as bad:
        data.store_status(corrupt)
    assert bad.value.kind == "corrupt"

    other = tmp_path / "other.db"
    sqlite3.connect(other).execute("CREATE TABLE t (x)").connection.close()
    with pytest.raises(DataUnavailable) as schema:
        data.jobs(other)
    assert schema.value.kind == "schema"

    empty = tmp_path / "empty.db"
    open_store(empty).close()
    with pytest.raises(DataUnavailable) as nothing:
        data.overview(empty, "all", None)
    assert nothing.value.kind == "empty"
    assert data.jobs(empty) == []


def test_a_locked_store_says_so_quickly(tmp_path):
    path = tmp_path / "s.db"
    open_store(path).close()
    writer = sqlite3.connect(path, isolation_level=None)
    writer.execute("PRAGMA locking_mode = EXCLUSIVE")  # readers are shut out, even in WAL
    writer.execute("BEGIN EXCLUSIVE")
    writer.execute("INSERT INTO meta VALUES ('k', 'v')")
    try:
        with pytest.raises(DataUnavailable) as locked:
            data.store_status(path)
        assert locked.value.kind == "locked" and "next refresh" in locked.value.hint
    finally:
        writer.close()
    assert data.store_status(path).jobs == 0


def test_views_of_a_seeded_store(seeded):
    jobs = data.jobs(seeded.path)
    assert {j["id"] for j in jobs} >= set(seeded.job_ids) | set(seeded.service_ids.values())
    detail = data.job_detail(seeded.path, seeded.job_ids[0])
    mine = sum(s["this job"] for s in detail.shares.values())
    assert mine == pytest.approx(detail.job["energy_j"], rel=1e-9)
    assert data.job_detail(seeded.path, "no-such-job") is None
    models = data.models(seeded.path, "all", None)
    assert {r.model for r in models.rows} == set(SPEC.models)
    assert sum(r.calls for r in models.rows) == pytest.approx(SPEC.calls, rel=0.01)
    grid = data.grid(seeded.path, "all", None)
    assert {z.zone for z in grid.zones} == {"CISO", "ERCO"}
    assert grid.realised_saving_g > 0 and all(z.forecast for z in grid.zones)
    queued = next(d for d in grid.deferred if d["id"] == "def002")
    assert queued["saving_band_fraction"] == pytest.approx(
        30.0 / queued["baseline_intensity_g_per_kwh"]
    )
    from carbonwatch.dashboard.pages.grid import body

    assert f"± {queued['saving_band_fraction']:.0%}" in str(body(grid))
    devices = data.devices(seeded.path, "all", None)
    assert [d.device_id for d in devices.devices] == ["gpu0", "gpu1", "gpu2", "cpu0"]
    assert all(devices.health(d) == "ok" for d in devices.devices)
    assert devices.devices[0].idle_baseline_w == pytest.approx(68.0)
