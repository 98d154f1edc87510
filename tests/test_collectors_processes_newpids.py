"""The light scan's cheap paths on real processes: new pids found from the kernel's pid counter
(threads are not processes), OTHER's memory from /proc/meminfo (a running sum in a full scan),
and the daemon's job owners taken from the scanner's trees instead of a pass over /proc."""

import dataclasses
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from carbonwatch.collectors.processes import MAX_PID_STEP, ProcessScanner, rss_shares
from carbonwatch.collectors.procfs import ProcfsIterator
from carbonwatch.daemon.live_jobs import LiveJob, LiveJobs
from carbonwatch.daemon.state import DaemonState
from carbonwatch.model import OTHER, job_consumer
from carbonwatch.pricing import Pricing

pytestmark = pytest.mark.skipif(not ProcfsIterator.available(), reason="needs Linux /proc")

# Waits for a line on stdin, then starts 8 idle threads and one child, prints the threads' ids
# and the child's pid, and waits for stdin to close.
PARENT = r"""
import subprocess, sys, threading
sys.stdin.readline()
stop = threading.Event()
threads = [threading.Thread(target=stop.wait) for _ in range(8)]
for t in threads:
    t.start()
child = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"],
                         stdin=subprocess.PIPE)
print(" ".join(str(t.native_id) for t in threads), child.pid, flush=True)
sys.stdin.read()
stop.set()
child.stdin.close()
child.wait()
"""


class CountingIterator(ProcfsIterator):
    def __init__(self) -> None:
        super().__init__()
        self.listings = 0

    def pids(self) -> list[int]:
        self.listings += 1
        return super().pids()


def test_a_child_born_after_the_first_scan_joins_its_tree_and_threads_are_not_processes():
    parent = subprocess.Popen([sys.executable, "-c", PARENT], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        reader = CountingIterator()
        scanner = ProcessScanner(iter_processes=reader, watched_only=True)
        scanner.watch(parent.pid)
        scanner.snapshot(1.0)
        listings, last_pid = reader.listings, reader.last_pid()
        parent.stdin.write("go\n")
        parent.stdin.flush()
        *tids, child = (int(x) for x in parent.stdout.readline().split())
        step = reader.last_pid() - last_pid
        second = scanner.snapshot(2.0)
        assert second.watched == {parent.pid, child}
        assert scanner.tree(parent.pid) == {parent.pid, child}
        assert scanner.in_tree(parent.pid, child) and not scanner.in_tree(child, parent.pid)
        assert not set(tids) & set(second.procs)  # a thread's /proc/<tid> opens, yet is skipped
        if 0 < step <= MAX_PID_STEP:  # else the machine was busy and /proc was listed: allowed
            assert reader.listings == listings
    finally:
        parent.stdin.close()
        parent.wait(30)


def test_full_scan_others_memory_running_sum_equals_the_sum_over_every_process():
    sleepers = [subprocess.Popen(["sleep", "30"]) for _ in range(3)]
    try:
        scanner = ProcessScanner(iter_processes=ProcfsIterator(), key_all_pids=False)
        scanner.watch(sleepers[0].pid)
        for t in range(1, 6):
            if t == 3:
                sleepers[1].kill()
                sleepers[1].wait()
            snap = scanner.snapshot(float(t))
            assert snap.other_rss_bytes is not None
            full = rss_shares(dataclasses.replace(snap, other_rss_bytes=None))
            assert rss_shares(snap) == full
            assert full[OTHER] > 0
    finally:
        for s in sleepers:
            s.kill()
            s.wait()


def _meminfo_used_bytes() -> int:
    text = Path("/proc/meminfo").read_text()
    fields = dict(line.split(":", 1) for line in text.splitlines())
    kib = {k: int(v.split()[0]) for k, v in fields.items() if k in ("MemTotal", "MemAvailable")}
    return (kib["MemTotal"] - kib["MemAvailable"]) * 1024


def test_light_scan_others_memory_is_used_memory_less_the_watched():
    """The light scan reads no unwatched pid for its memory: OTHER is every used byte (MemTotal -
    MemAvailable, read here by the test) that the watched pids do not hold resident."""
    sleeper = subprocess.Popen(["sleep", "30"])
    try:
        deadline = time.monotonic() + 10
        while Path(f"/proc/{sleeper.pid}/comm").read_text().strip() != "sleep":  # exec'd
            assert time.monotonic() < deadline
            time.sleep(0.01)
        scanner = ProcessScanner(iter_processes=ProcfsIterator(), watched_only=True)
        scanner.watch(sleeper.pid)
        for t in range(1, 4):
            before = _meminfo_used_bytes()
            snap = scanner.snapshot(float(t))
            after = _meminfo_used_bytes()
            shares = rss_shares(snap)
            assert shares[sleeper.pid] == snap.procs[sleeper.pid].rss_bytes > 0
            # Other helpers' processes come and go between the reads: bound, not equal.
            low, high = sorted((before, after))
            slack = 64 * 1024**2
            assert low - slack <= shares[OTHER] + shares[sleeper.pid] <= high + slack
    finally:
        sleeper.kill()
        sleeper.wait()


class FixedMemory(ProcfsIterator):
    """The real /proc reader, but a machine with the given used memory (the split's arithmetic)."""

    def __init__(self, used_bytes: int | None) -> None:
        super().__init__()
        self.used_bytes = used_bytes

    def memory_bytes(self) -> tuple[int, int] | None:  # type: ignore[override]
        return None if self.used_bytes is None else (2 * self.used_bytes, self.used_bytes)


def test_light_scan_other_is_clamped_at_zero_and_falls_back_without_meminfo():
    me = os.getpid()
    reader = FixedMemory(10**12)
    scanner = ProcessScanner(iter_processes=reader, watched_only=True)
    scanner.watch(me)
    snap = scanner.snapshot(1.0)
    mine = snap.procs[me].rss_bytes
    assert rss_shares(snap) == {me: mine, OTHER: 10**12 - mine}
    reader.used_bytes = mine // 2  # RSS counts shared and file pages: it may exceed "used"
    snap = scanner.snapshot(2.0)
    assert rss_shares(snap) == {me: snap.procs[me].rss_bytes}
    reader.used_bytes = None  # no /proc/meminfo: the unwatched pids' memory as last read
    snap = scanner.snapshot(3.0)
    assert snap.other_rss_bytes is None
    others = sum(i.rss_bytes for p, i in snap.procs.items() if i.alive and p != me)
    assert rss_shares(snap)[OTHER] == others > 0


def test_daemon_owners_come_from_the_scanners_trees():
    parent = subprocess.Popen([sys.executable, "-c", PARENT], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        scanner = ProcessScanner(iter_processes=ProcfsIterator(), watched_only=True)
        live = LiveJobs(track_trees=True)
        job = LiveJob(id="j1", name="train", kind="training", model=None, pids=set(),
                      started_s=0.0, source="test")
        live.add(job)
        live.add_pids(job, {parent.pid})
        state = DaemonState(pricing=Pricing(), live_jobs=live, scanner=scanner)
        owners = state.owners()  # watches the root
        scanner.snapshot(1.0)
        parent.stdin.write("go\n")
        parent.stdin.flush()
        *_, child = (int(x) for x in parent.stdout.readline().split())
        owners = state.owners()
        assert child not in owners  # not scanned yet ...
        scanner.snapshot(2.0)  # ... this tick's scan, after owners() and before attribution
        assert owners.get(child, OTHER) == job_consumer("j1")
        assert owners.get(parent.pid) == job_consumer("j1")
        assert owners.get(1, OTHER) == OTHER
        assert state.owners()[child] == job_consumer("j1")
        assert child in job.all_pids()  # the job's tree, for vanished() and its report
    finally:
        parent.stdin.close()
        parent.wait(30)


def test_a_quiet_scan_reads_only_the_watched_and_new_pids_and_listing_finds_exits():
    """No unwatched pid is re-read (their CPU and memory are OTHER's, from /proc/stat and
    /proc/meminfo); one that exits is noticed when /proc is next listed."""

    class Recording(ProcfsIterator):
        def __init__(self) -> None:
            super().__init__()
            self.reads: list[int] = []
            self.last_pids: list[int | None] = []
            self.listings = 0

        def read(self, pid):  # type: ignore[override]
            self.reads.append(pid)
            return super().read(pid)

        def last_pid(self):  # type: ignore[override]
            self.last_pids.append(super().last_pid())
            return self.last_pids[-1]

        def pids(self) -> list[int]:
            self.listings += 1
            return super().pids()

    sleepers = [subprocess.Popen(["sleep", "30"]) for _ in range(2)]
    try:
        reader = Recording()
        scanner = ProcessScanner(iter_processes=reader, watched_only=True, list_every_scans=3)
        scanner.watch(sleepers[0].pid)
        scanner.snapshot(1.0)  # the first scan lists /proc
        assert reader.listings == 1 and scanner.snapshot(1.0).procs[sleepers[1].pid].alive
        reader.reads.clear()
        sleepers[1].kill()
        sleepers[1].wait()
        snap = scanner.snapshot(2.0)
        first, second = reader.last_pids[-2:]
        if reader.listings == 1:  # else the machine was busy and /proc was listed: allowed
            new = set(range(first + 1, second + 1))  # type: ignore[operator]
            assert set(reader.reads) <= {sleepers[0].pid} | new
            assert snap.procs[sleepers[1].pid].alive  # not re-read: its exit not yet seen
        scanner.snapshot(3.0)
        snap = scanner.snapshot(4.0)  # the fourth scan lists /proc again
        assert reader.listings >= 2
        assert not snap.procs[sleepers[1].pid].alive
        assert snap.procs[sleepers[0].pid].alive
    finally:
        for s in sleepers:
            s.kill()
            s.wait()
