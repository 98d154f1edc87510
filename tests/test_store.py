"""The SQLite store: WAL, migrations, additive rollups, read-only readers."""

import sqlite3

import pytest

from carbonwatch.errors import StoreError
from carbonwatch.store import open_store
from carbonwatch.store.migrations import MIGRATIONS


def _row(**kw):
    row = dict(
        minute_s=60,
        device_id="gpu0",
        device_class="gpu",
        consumer="job:a",
        phase="training",
        model="m",
        energy_j=10.0,
        co2e_g=1.0,
        cost=0.1,
        intensity_g_per_kwh=100.0,
        intensity_kind="static",
        provenance="measured",
    )
    row.update(kw)
    return row


def test_new_store_is_wal_and_migrated(tmp_path):
    with open_store(tmp_path / "s.db") as store:
        assert store.schema_version == len(MIGRATIONS)
        assert store.conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    with open_store(tmp_path / "s.db") as store:  # reopening runs no migration twice
        assert store.schema_version == len(MIGRATIONS)


def test_minute_rollups_add_up_and_mark_estimates(tmp_path):
    with open_store(tmp_path / "s.db") as store:
        store.add_energy_minutes(
            [_row(), _row(energy_j=30.0, intensity_g_per_kwh=200.0, provenance="estimated")]
        )
        (row,) = store.db.query("SELECT * FROM energy_minute")
    assert row["energy_j"] == 40.0
    assert row["intensity_g_per_kwh"] == pytest.approx(175.0)
    assert row["provenance"] == "estimated"


def test_names_with_quotes_and_semicolons_are_stored_verbatim(tmp_path):
    name = "x'); DROP TABLE jobs; --"
    with open_store(tmp_path / "s.db") as store:
        job_id = store.insert_job(
            name=name, kind="training", source="run", status="running", started_s=1.0
        )
        assert store.job(job_id)["name"] == name


def test_reader_of_missing_or_corrupt_file_gets_a_clear_error(tmp_path):
    with pytest.raises(StoreError, match="does not exist"):
        open_store(tmp_path / "missing.db", read_only=True)
    bad = tmp_path / "bad.db"
    bad.write_bytes(b"this is not a database at all" * 100)
    with pytest.raises(StoreError, match="cannot open store"):
        open_store(bad)


def test_reader_sees_writer_commits(tmp_path):
    path = tmp_path / "s.db"
    with open_store(path) as writer:
        writer.insert_job(
            id="j1", name="a", kind="other", source="run", status="running", started_s=1.0
        )
        with open_store(path, read_only=True) as reader:
            assert [j["id"] for j in reader.jobs()] == ["j1"]
            with pytest.raises(sqlite3.OperationalError):
                reader.conn.execute("DELETE FROM jobs")


def test_a_batch_of_rollups_is_atomic(tmp_path):
    with open_store(tmp_path / "s.db") as store:
        with pytest.raises(sqlite3.IntegrityError):
            store.add_energy_minutes([_row(), _row(minute_s=120), _row(consumer=None)])
        assert list(store.db.query("SELECT * FROM energy_minute")) == []


def test_paths_with_uri_characters_open_read_only(tmp_path):
    path = tmp_path / "odd?name#1.db"
    open_store(path).close()
    with open_store(path, read_only=True) as reader:
        assert reader.jobs() == []


def test_a_new_store_is_readable_by_its_owner_only(tmp_path):
    open_store(tmp_path / "s.db").close()
    assert (tmp_path / "s.db").stat().st_mode & 0o777 == 0o600
