"""`carbonwatch report`: jobs and totals, CSV, filters, the per-model statement, bad input."""

import csv
import io
import json
import subprocess
import sys

import pytest
from seed import SeedSpec, seed_store


@pytest.fixture(scope="module")
def seeded(tmp_path_factory):
    path = tmp_path_factory.mktemp("report") / "seeded.db"
    seed_store(path, SeedSpec())
    return path


def _report(db, *args):
    return subprocess.run(
        [sys.executable, "-m", "carbonwatch", "report", "--db", str(db), *args],
        capture_output=True, text=True, timeout=60,
    )


def test_json_totals_equal_the_sum_of_jobs(seeded):
    out = _report(seeded, "--json")
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert data["totals"]["jobs"] == len(data["jobs"]) > 0
    assert data["totals"]["energy_j"] == pytest.approx(sum(j["energy_j"] for j in data["jobs"]))
    assert data["totals"]["co2e_g"] == pytest.approx(sum(j["co2e_g"] for j in data["jobs"]))


def test_csv_and_job_filter(seeded):
    rows = list(csv.DictReader(io.StringIO(_report(seeded, "--csv").stdout)))
    assert rows and {"id", "energy_j", "co2e_g", "cost"} <= set(rows[0])
    one = json.loads(_report(seeded, "--json", "--job", rows[0]["id"]).stdout)
    assert [j["id"] for j in one["jobs"]] == [rows[0]["id"]]


def test_since_in_the_future_lists_nothing(seeded):
    data = json.loads(_report(seeded, "--json", "--since", "+1h").stdout)
    assert data["jobs"] == [] and data["totals"]["energy_j"] == 0


def test_model_statement_in_markdown_and_json(seeded):
    md = _report(seeded, "--model", "resnet50")
    assert md.returncode == 0 and "## Energy and emissions: resnet50" in md.stdout
    assert "Methodology" in md.stdout and "Provenance" in md.stdout
    data = json.loads(_report(seeded, "--model", "resnet50", "--format", "json").stdout)
    assert data["model"] == "resnet50"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--job", "nope"], "no job with id 'nope'"),
        (["--model", "nope"], "nope"),
        (["--since", "yesterday-ish"], "cannot parse time"),
    ],
)
def test_bad_input_is_a_clear_error(seeded, args, message):
    out = _report(seeded, *args)
    assert out.returncode == 2 and message in out.stderr and "Traceback" not in out.stderr


def test_missing_store_is_a_clear_error(tmp_path):
    out = _report(tmp_path / "none.db")
    assert out.returncode == 2 and "does not exist" in out.stderr
