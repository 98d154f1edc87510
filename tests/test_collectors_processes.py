"""The psutil process scanner on real process trees: a shell starting python workers."""

import os
import resource
import subprocess
import sys
import time

import pytest

from carbonwatch.collectors.processes import (
    ProcessScanner,
    ProcessSnapshot,
    ProcInfo,
    cpu_shares,
    rss_shares,
)
from carbonwatch.model import OTHER

# Burns about `secs` of CPU, printing its pid first so the test knows who it was.
BURN = (
    "import os, sys, time; print(os.getpid(), flush=True); t = time.process_time();"
    "exec('while time.process_time() - t < float(sys.argv[1]): pass')"
)


def _cpu_of_children() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def _scan_until_exit(scanner, proc, every_s=0.05):
    t = 0.0
    while proc.poll() is None:
        scanner.snapshot(t := t + 1.0)
        time.sleep(every_s)
    scanner.snapshot(t + 1.0)
    return t + 1.0


def test_scanner_follows_a_shell_and_its_two_python_workers():
    scanner = ProcessScanner()
    before_s = _cpu_of_children()
    script = f'{sys.executable} -c "$B" 0.4 & {sys.executable} -c "$B" 0.4 & wait'
    shell = subprocess.Popen(
        ["sh", "-c", script], env={**os.environ, "B": BURN}, stdout=subprocess.PIPE, text=True
    )
    scanner.watch(shell.pid)
    _scan_until_exit(scanner, shell)
    workers = {int(line) for line in shell.stdout.read().split()}
    spent_s = _cpu_of_children() - before_s

    assert len(workers) == 2
    assert workers <= scanner.descendants(shell.pid)
    assert scanner.descendants(shell.pid, include_exited=False) == set()
    for pid in workers:
        # Seen while burning. How much of its 0.4 s lands on the worker itself depends on when
        # the last scan before its exit ran (a loaded machine scans late); the rest is charged
        # through the shell that reaped it, and the total below holds either way.
        assert scanner.cpu_seconds(pid) > 0
    tree = {shell.pid} | scanner.descendants(shell.pid)
    charged_s = sum(scanner.cpu_seconds(p) for p in tree)
    # Everything the tree used is charged once: no double counting of reaped workers.
    assert charged_s == pytest.approx(spent_s, abs=0.1 + 0.1 * spent_s)


def test_child_too_short_to_be_seen_is_charged_through_its_parent(tmp_path):
    scanner = ProcessScanner()
    done = tmp_path / "done"
    script = f'sleep 0.3; {sys.executable} -c "$B" 0.3 >/dev/null; touch "$D"; sleep 5'
    shell = subprocess.Popen(
        ["sh", "-c", script], env={**os.environ, "B": BURN, "D": str(done)}, start_new_session=True
    )
    try:
        scanner.watch(shell.pid)
        first = scanner.snapshot(1.0)  # during the first sleep: the worker does not exist yet
        deadline = time.monotonic() + 20
        while not done.exists() and time.monotonic() < deadline:
            time.sleep(0.05)  # no scans while the worker lives: it is never seen
        last = scanner.snapshot(2.0)
    finally:
        os.killpg(shell.pid, 9)
        shell.wait()
    assert done.exists()
    shares = cpu_shares(first, last)
    assert shares.get(shell.pid, 0.0) >= 0.25  # the worker's time, via the shell's reaped counter
    assert scanner.cpu_seconds(shell.pid) >= 0.25


def test_shares_key_watched_pids_and_lump_the_rest_as_other():
    prev = ProcessSnapshot(
        t_s=0.0,
        procs={1: ProcInfo(0, 0.0, 10.0, 100), 2: ProcInfo(1, 0.0, 5.0, 200)},
        watched=frozenset({2}),
    )
    cur = ProcessSnapshot(
        t_s=1.0,
        procs={
            1: ProcInfo(0, 0.0, 10.5, 100),
            2: ProcInfo(1, 0.0, 5.25, 200),
            3: ProcInfo(2, 0.5, 0.125, 300),  # born since prev: all its time is new
            4: ProcInfo(1, 0.9, 0.0, 0, alive=False),
        },
        watched=frozenset({2, 3}),
    )
    assert cpu_shares(prev, cur) == {2: 0.25, 3: 0.125, OTHER: 0.5}
    assert cpu_shares(None, cur) == {}
    assert rss_shares(cur) == {2: 200.0, 3: 300.0, OTHER: 100.0}


def test_busy_time_no_process_accounts_for_is_other():
    prev = ProcessSnapshot(0.0, {1: ProcInfo(0, 0.0, 1.0, 1)}, busy_cpu_s=100.0)
    cur = ProcessSnapshot(1.0, {1: ProcInfo(0, 0.0, 1.5, 1)}, busy_cpu_s=101.25)
    assert cpu_shares(prev, cur) == {1: 0.5, OTHER: 0.75}


def _burn(seconds):
    t = time.process_time()
    while time.process_time() - t < seconds:
        pass


def test_by_default_every_pid_is_its_own_key():
    scanner = ProcessScanner()
    first = scanner.snapshot(0.0)
    _burn(0.2)
    shares = cpu_shares(first, scanner.snapshot(1.0))
    assert shares[os.getpid()] >= 0.15
    assert all(isinstance(k, int) or k == OTHER for k in shares)


def test_watched_mode_keys_only_the_watched_trees():
    scanner = ProcessScanner(key_all_pids=False)
    scanner.watch(os.getppid())  # our parent's tree holds this process
    first = scanner.snapshot(0.0)
    _burn(0.2)
    cur = scanner.snapshot(1.0)
    shares = cpu_shares(first, cur)
    assert os.getpid() in cur.watched and shares[os.getpid()] >= 0.15
    assert set(shares) <= cur.watched | {OTHER}


def test_reused_pid_counts_as_a_new_process():
    prev = ProcessSnapshot(0.0, {7: ProcInfo(1, 100.0, 50.0, 1)}, frozenset({7}))
    cur = ProcessSnapshot(1.0, {7: ProcInfo(1, 200.0, 0.5, 1)}, frozenset({7}))
    assert cpu_shares(prev, cur) == {7: 0.5}


def test_a_tick_scans_once_and_sees_this_process():
    # How cheap the scan is lives in benchmarks/bench_overhead.py, not in a timed assertion.
    scanner = ProcessScanner()
    scanner.snapshot(0.0)
    snap = scanner.snapshot(1.0)
    assert snap.procs and os.getpid() in snap.procs
    assert scanner.snapshot(1.0) is snap  # same tick: shared, not rescanned
