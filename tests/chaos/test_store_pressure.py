"""The store under pressure: the disk full, the database locked by another process, a corrupt
page (at start and while running)."""

from __future__ import annotations

import contextlib
import os
import shutil
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from .harness import (
    INFER_PID,
    MODEL,
    TRACE,
    ChaosDaemon,
    Streamer,
    batches_of,
    fixture_calls,
    replay_args,
)
from .steady import Acks, check, probe_health

FAMILY = "store under pressure"


@contextlib.contextmanager
def small_filesystem(path: Path, size: str) -> Iterator[bool]:
    """A tmpfs of ``size`` mounted at ``path`` (needs root and mount; CHAOS_NO_MOUNT=1 says
    no); yields whether it is."""
    path.mkdir()
    mounted = False
    if not os.environ.get("CHAOS_NO_MOUNT") and shutil.which("mount"):
        mount = ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)]
        mounted = subprocess.run(mount, capture_output=True).returncode == 0
    try:
        yield mounted
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(path)], capture_output=True)


def _fill(path: Path, leave_bytes: int) -> Path:
    """Fill the filesystem holding ``path`` but for ``leave_bytes``."""
    filler = path / "filler"
    free = shutil.disk_usage(path).free
    with filler.open("wb") as f:
        f.write(b"\0" * max(0, free - leave_bytes))
    return filler


def _calls(pid: int | None = INFER_PID) -> list[list[dict]]:
    calls = fixture_calls(INFER_PID, MODEL)
    if pid is None:  # unattributed: no job row is touched when they settle
        calls = [{k: v for k, v in c.items() if k != "pid"} for c in calls]
    return batches_of(calls, 25)


def test_disk_full(tmp_path, experiment):
    """When the disk holding the store fills up mid-run, the daemon keeps answering /healthz,
    refuses new call batches with 503 naming the full disk (never a 500), loses nothing it had
    acknowledged, and once space is freed it writes everything it measured meanwhile: the
    stored energy equals the trace's counter exactly and every batch is settled."""
    fs = tmp_path / "small"
    with small_filesystem(fs, "8m") as mounted:
        acks = Acks()
        daemon = ChaosDaemon(tmp_path, *replay_args(speed=5), db=fs / "cw.db")
        if not mounted:
            # No mount here: the daemon's file-size limit (RLIMIT_FSIZE) plays the full disk.
            experiment.figure("full disk", "RLIMIT_FSIZE on the daemon (no tmpfs mount)")
        else:
            experiment.figure("full disk", "tmpfs of 8 MiB, filled")
        daemon.start()
        healthz_ms: list[float] = []
        with Streamer(daemon, acks, _calls(), pause_s=0.02) as client:
            time.sleep(1.0)
            before = len(acks.batches)
            if mounted:
                filler = _fill(fs, 16 * 1024)
            else:
                limit = sum(p.stat().st_size for p in fs.iterdir()) + 16 * 1024
                psutil.Process(daemon.pid).rlimit(psutil.RLIMIT_FSIZE, (limit, -1))
            t_end = time.monotonic() + 3.0
            while time.monotonic() < t_end:
                t0 = time.monotonic()
                status, _ = probe_health(daemon)
                healthz_ms.append((time.monotonic() - t0) * 1000)
                assert status == 200
                time.sleep(0.1)
            during = len(acks.batches) - before
            refused = dict(acks.refused)
            if mounted:
                filler.unlink()
            else:
                psutil.Process(daemon.pid).rlimit(psutil.RLIMIT_FSIZE, (-1, -1))
            client.finish(timeout_s=30)
        daemon.wait_for(daemon.replay_finished, timeout_s=30)
        health = probe_health(daemon)
        assert daemon.stop() == 0
        experiment.figure("batches acknowledged before / while full", f"{before} / {during}")
        experiment.figure("refusals while full", refused)
        experiment.figure("max /healthz latency while full (ms)", round(max(healthz_ms), 1))
        experiment.observe(f"while full: {sum(refused.values())} batches refused "
                           f"({client.messages.get(503, 'none')}); after freeing space all "
                           f"{len(client.batches)} batches were delivered")
        assert refused and set(refused) == {503}, (refused, client.messages)
        assert "full" in client.messages[503] or "disk" in client.messages[503]
        log = "".join(daemon.stderr)
        assert "Traceback" not in log, log
        _flush_figures(experiment, log)
        check(experiment, daemon.db, acks, health=health, interval_log=daemon.interval_log,
              trace=TRACE, counter_devices=["gpu0"])


def _flush_figures(experiment, log: str) -> None:
    experiment.figure("flushes that failed, kept and rewritten",
                      log.count("flush not written"))


LOCKER = (
    "import sqlite3, sys, time\n"
    "c = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=10)\n"
    "c.execute('BEGIN EXCLUSIVE')\n"
    "print('locked', flush=True)\n"
    "time.sleep(float(sys.argv[2]))\n"
    "c.execute('ROLLBACK')\n"
)


def test_database_locked_by_another_process(tmp_path, experiment):
    """While another process holds the database in an exclusive transaction for 10.5 s (twice the
    store's 5 s busy timeout), the daemon keeps answering /healthz and reads, answers call
    batches either 200 or 503 naming the lock (never a 500), loses nothing it acknowledged, and
    writes everything it measured once the lock is gone: the stored energy equals the trace's
    counter exactly and every batch is settled."""
    acks = Acks()
    daemon = ChaosDaemon(tmp_path, *replay_args(speed=3)).start()
    hold_s = 10.5  # two busy timeouts: the first write waiting fails, and the one after it
    healthz_ms: list[float] = []
    read_status: set[int] = set()
    with Streamer(daemon, acks, _calls(), pause_s=0.02) as client:
        time.sleep(1.0)
        locker = subprocess.Popen([sys.executable, "-c", LOCKER, str(daemon.db), str(hold_s)],
                                  stdout=subprocess.PIPE, text=True)
        assert locker.stdout is not None and locker.stdout.readline().strip() == "locked"
        t_lock = time.monotonic()
        before = len(acks.batches)
        while locker.poll() is None:
            t0 = time.monotonic()
            status, _ = probe_health(daemon)
            healthz_ms.append((time.monotonic() - t0) * 1000)
            assert status == 200
            read_status.add(daemon.request("GET", "/v1/jobs")[0])
            time.sleep(0.1)
        held_s = time.monotonic() - t_lock
        during = len(acks.batches) - before
        refused = dict(acks.refused)
        client.finish(timeout_s=30)
    daemon.wait_for(daemon.replay_finished, timeout_s=30)
    health = probe_health(daemon)
    assert daemon.stop() == 0
    experiment.figure("lock held (s)", round(held_s, 1))
    experiment.figure("batches acknowledged while locked", during)
    experiment.figure("refusals while locked", refused)
    experiment.figure("max /healthz latency while locked (ms)", round(max(healthz_ms), 1))
    experiment.figure("max call-batch latency (s)", round(max(client.latencies_s), 2))
    experiment.observe(f"reads answered {sorted(read_status)} during the lock; batches "
                       f"refused: {refused} ({client.messages.get(503, 'none')})")
    _flush_figures(experiment, "".join(daemon.stderr))
    assert set(refused) <= {503}, (refused, client.messages)
    assert all("locked" in m for m in client.messages.values()), client.messages
    assert read_status == {200}
    assert max(healthz_ms) < 1000
    check(experiment, daemon.db, acks, health=health, interval_log=daemon.interval_log,
          trace=TRACE, counter_devices=["gpu0"])


def _checkpoint(db: Path) -> tuple[int, int]:
    """Move every page out of the WAL into the file (retrying while the daemon is busy), so
    that a page corrupted in the file is the one readers get; (page size, jobs' root page)."""
    with sqlite3.connect(db, timeout=10) as conn:
        deadline = time.monotonic() + 10
        while conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0] != 0:
            assert time.monotonic() < deadline, "could not checkpoint the WAL"
            time.sleep(0.05)
        page_size = conn.execute("PRAGMA page_size").fetchone()[0]
        roots = [r for (r,) in conn.execute(
            "SELECT rootpage FROM sqlite_master WHERE tbl_name = 'jobs' AND rootpage > 0")]
    return page_size, roots


def _corrupt(db: Path, pages: list[int], page_size: int) -> None:
    with db.open("r+b") as f:
        for page in pages:
            f.seek((page - 1) * page_size)
            f.write(bytes((i * 37 + 11) % 256 for i in range(page_size)))


def _store_with_data(tmp_path: Path, name: str) -> tuple[Path, Acks]:
    acks = Acks()
    with ChaosDaemon(tmp_path / name, *replay_args(speed=20),
                     db=tmp_path / name / "cw.db") as daemon:
        status, job = daemon.request("POST", "/v1/jobs", {"name": "t", "kind": "training",
                                                          "pid": 416})
        acks.jobs.add(job["id"])
        acks.batch(*daemon.request("POST", "/v1/calls", {"calls": _calls()[0]}))
        daemon.wait_for(daemon.replay_finished)
    return daemon.db, acks


def test_start_on_a_corrupt_store(tmp_path, experiment):
    """Started on a store whose header, or one of whose table pages, is garbage, the daemon
    exits with status 2 and one clear line naming the store and the corruption, never a
    traceback, and leaves the file as it was (evidence for recovery); started on an intact
    copy it serves everything acknowledged before."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    outcomes = {}
    for case in ("header", "table page"):
        db, acks = _store_with_data(tmp_path, "a" if case == "header" else "b")
        page_size, roots = _checkpoint(db)
        intact = db.with_name("intact.db")
        shutil.copy(db, intact)
        _corrupt(db, [1] if case == "header" else roots, page_size)
        damaged = db.read_bytes()
        (tmp_path / "run").mkdir(exist_ok=True)
        out = ChaosDaemon(tmp_path / "run", *replay_args(speed=20), db=db).run_to_exit()
        message = out.stderr.strip().splitlines()[-1] if out.stderr.strip() else ""
        outcomes[case] = (out.returncode, message)
        experiment.observe(f"{case} corrupt: exit {out.returncode}, {message!r}")
        assert out.returncode == 2, out.stderr
        assert "Traceback" not in out.stderr, out.stderr
        assert str(db) in message and ("malformed" in message or "not a database" in message)
        assert db.read_bytes() == damaged
    experiment.figure("corruptions refused cleanly", f"{len(outcomes)}/2")
    # The intact copy of the last store still serves what was acknowledged.
    with ChaosDaemon(tmp_path / "run", *replay_args(speed=20), db=intact) as daemon:
        health = probe_health(daemon)
    check(experiment, intact, acks, health=health, settled=True)


def test_corrupt_page_while_running(tmp_path, experiment):
    """When a page of the jobs table goes bad under a running daemon, requests that read it get
    a 503 naming the corruption (never a 500 or a traceback), /healthz keeps answering, and the
    rest goes on: call batches are acknowledged and stored, and the energy (which touches no
    job row) is still written and equals the trace's counter."""
    acks = Acks()
    daemon = ChaosDaemon(tmp_path, *replay_args(speed=5)).start()
    with Streamer(daemon, acks, _calls(pid=None)[:40], pause_s=0.05) as client:
        time.sleep(0.5)
        page_size, roots = _checkpoint(daemon.db)
        _corrupt(daemon.db, roots, page_size)
        statuses = {}
        for _ in range(5):
            status, body = daemon.request("GET", "/v1/jobs")
            statuses.setdefault(status, body)
            time.sleep(0.1)
        client.finish(timeout_s=30)
    daemon.wait_for(daemon.replay_finished, timeout_s=30)
    health = probe_health(daemon)
    assert daemon.stop() == 0
    experiment.observe(f"GET /v1/jobs after the corruption: {statuses}")
    experiment.figure("GET /v1/jobs statuses", sorted(statuses))
    assert 500 not in statuses and set(statuses) <= {503}, statuses
    assert all("malformed" in str(b) for b in statuses.values())
    assert "Traceback" not in "".join(daemon.stderr)
    check(experiment, daemon.db, acks, health=health, interval_log=daemon.interval_log,
          trace=TRACE, counter_devices=["gpu0"], unreadable=["jobs"])


pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
