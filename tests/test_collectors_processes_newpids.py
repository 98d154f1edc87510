"""The light scan's cheap paths on real processes: new pids found from the kernel's pid counter
(threads are not processes), OTHER's memory kept as a running sum, and the daemon's job owners
taken from the scanner's trees instead of a pass over /proc."""

import dataclasses
import subprocess
import sys

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


def test_others_memory_running_sum_equals_the_sum_over_every_process():
    sleepers = [subprocess.Popen(["sleep", "30"]) for _ in range(3)]
    try:
        scanner = ProcessScanner(iter_processes=ProcfsIterator(), watched_only=True,
                                 refresh_scans=2)
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


def test_kernel_threads_are_not_re_read_for_memory():
    """They have none (no mm) and their CPU is OTHER's, from /proc/stat."""

    class RssCounting(ProcfsIterator):
        def __init__(self) -> None:
            super().__init__()
            self.rss_reads: list[int] = []

        def read_rss(self, pid):  # type: ignore[override]
            self.rss_reads.append(pid)
            return super().read_rss(pid)

    reader = RssCounting()
    scanner = ProcessScanner(iter_processes=reader, watched_only=True, refresh_scans=1)
    first = scanner.snapshot(1.0)
    kernel = {p for p, i in first.procs.items() if 2 in (p, i.ppid) and i.rss_bytes == 0}
    if not kernel:
        pytest.skip("no kernel threads visible here (a pid namespace)")
    scanner.snapshot(2.0)
    assert reader.rss_reads  # the rest of the machine was re-read for its memory ...
    assert not kernel & set(reader.rss_reads)  # ... but not the kernel's threads
