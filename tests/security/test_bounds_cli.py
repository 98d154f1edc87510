"""The CLI ends in one clear line and exit 2, never a traceback: deadlines and starts more than
a year ahead, and a store whose pages are damaged (met by a read, after it opened)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from daemon_helpers import DaemonProcess

FORECAST = "timestamp,intensity\n2026-12-03T00:00:00Z,100\n2026-12-04T00:00:00Z,200\n"


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CARBONWATCH_")}
    return subprocess.run([sys.executable, "-m", "carbonwatch", *args],  # noqa: S603
                          capture_output=True, text=True, timeout=60, env=env, cwd=cwd)


@pytest.mark.parametrize(("args", "named"), [
    (["--duration", "1h", "--deadline", "+99999999d", "--zone", "DE"], "--deadline"),
    (["--duration", "1h", "--deadline", "9999-12-31T00:00:00Z", "--zone", "DE"], "--deadline"),
    (["--duration", "99999999d", "--deadline", "+1h", "--zone", "DE"], "--duration"),
    (["--duration", "1h", "--deadline", "+2h", "--start", "+99999999d", "--zone", "DE"],
     "--start"),
    (["--duration", "1h", "--deadline", "+2h", "--start", "9999-01-01T00:00:00Z", "--zone",
      "DE"], "--start"),
    (["--duration", "1h", "--deadline", "+99999999d", "--forecast", "f.csv"], "--deadline"),
])
def test_plan_far_ahead_is_a_clear_error(tmp_path, args, named):
    (tmp_path / "f.csv").write_text(FORECAST)
    done = _cli("plan", "--db", str(tmp_path / "cw.db"), *args, cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    assert named in done.stderr and ("year" in done.stderr or "2286" in done.stderr)


def test_report_on_a_damaged_store_is_a_clear_error(tmp_path):
    db = tmp_path / "cw.db"
    daemon = DaemonProcess(db, "--backend", "none").start()
    assert daemon.request("POST", "/v1/jobs", {"name": "j", "kind": "training"})[0] == 201
    assert daemon.stop() == 0
    data = bytearray(db.read_bytes())
    page = 4096
    for start in range(2 * page, len(data), page):  # the tables' pages; the schema stays
        data[start + 8:start + 808] = b"\xde\xad\xbe\xef" * 200
    db.write_bytes(bytes(data))
    done = _cli("report", "--db", str(db), cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    assert "malformed" in done.stderr and "restore a backup" in done.stderr
