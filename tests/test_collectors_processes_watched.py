"""The watched-only scan (the daemon's): a real process tree started by the test is read every
scan and charged its CPU; the rest of the machine is OTHER, taken from /proc/stat's busy time; a
process that was not watched is not re-read each scan, and one that exits is noticed anyway."""

import subprocess
import sys
import time

import pytest

from carbonwatch.collectors.processes import ProcessScanner, cpu_shares
from carbonwatch.collectors.procfs import ProcfsIterator
from carbonwatch.model import OTHER

pytestmark = pytest.mark.skipif(not ProcfsIterator.available(), reason="needs Linux /proc")

# A parent that starts a child; both burn CPU until a file appears, then exit.
TREE = r"""
import os, subprocess, sys
stop = sys.argv[1]
def burn():
    while not os.path.exists(stop):
        sum(i * i for i in range(20000))
if len(sys.argv) > 2:
    burn()
else:
    child = subprocess.Popen([sys.executable, __file__, stop, "child"])
    print(child.pid, flush=True)
    burn()
    child.wait()
"""


class CountingIterator(ProcfsIterator):
    """The real /proc reader, noting which pids it read (to see what the light scan skips)."""

    def __init__(self) -> None:
        super().__init__()
        self.reads: list[int] = []

    def read(self, pid):  # type: ignore[override]
        self.reads.append(pid)
        return super().read(pid)


def _busy_until(cond, limit_s=20.0):
    deadline = time.monotonic() + limit_s
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("condition never held")
        time.sleep(0.05)


def test_watched_tree_is_charged_and_the_rest_is_other(tmp_path):
    script = tmp_path / "tree.py"
    script.write_text(TREE)
    stop = tmp_path / "stop"
    proc = subprocess.Popen([sys.executable, str(script), str(stop)], stdout=subprocess.PIPE,
                            text=True)
    try:
        child_pid = int(proc.stdout.readline())
        reader = CountingIterator()
        scanner = ProcessScanner(iter_processes=reader, watched_only=True)
        scanner.watch(proc.pid)
        first = scanner.snapshot(1.0)
        assert first.rest_from_busy and proc.pid in first.watched
        reader.reads.clear()
        cpu0 = {p: first.procs[p].cpu_s for p in (proc.pid, child_pid)}
        _busy_until(lambda: sum(
            ProcfsIterator().read(p).info["cpu_times"].user for p in (proc.pid, child_pid)
        ) > sum(cpu0.values()) + 0.3)
        second = scanner.snapshot(2.0)
        # The child, started before the scanner watched its parent, joined the tree.
        assert {proc.pid, child_pid} <= second.watched
        # Only the tree and pids new since the first scan were read, none of the rest.
        others = [p for p, i in first.procs.items() if i.alive and p not in first.watched]
        assert len(others) > 20  # a machine with a few processes at least
        assert len(set(reader.reads) - second.watched) < len(others) // 2
        shares = cpu_shares(first, second)
        tree_s = shares.get(proc.pid, 0.0) + shares.get(child_pid, 0.0)
        # The truth the scanner did not produce: psutil-independent totals from the kernel, read
        # after the scan, bound what the tree can have been charged.
        after = {p: ProcfsIterator().read(p).info["cpu_times"] for p in (proc.pid, child_pid)}
        used_s = sum(t.user + t.system - cpu0[p] for p, t in after.items())
        assert 0.3 <= tree_s <= used_s + 0.02
        assert OTHER not in shares or shares[OTHER] >= 0
        assert set(shares) <= {proc.pid, child_pid, OTHER}
        assert scanner.cpu_seconds(proc.pid) > 0 and scanner.cpu_seconds(child_pid) > 0

        stop.write_text("")
        proc.wait(30)
        third = scanner.snapshot(3.0)
        assert not third.procs[proc.pid].alive and not third.procs[child_pid].alive
        assert scanner.descendants(proc.pid) == {child_pid}
    finally:
        stop.write_text("")
        proc.wait(30)


def test_busy_time_not_in_the_tree_is_other(tmp_path):
    """A process burning CPU outside the watched tree shows up as OTHER, from /proc/stat."""
    script = tmp_path / "tree.py"
    script.write_text(TREE)
    stop = tmp_path / "stop"
    sleeper = subprocess.Popen(["sleep", "60"])  # the watched tree: idle throughout
    scanner = ProcessScanner(iter_processes=ProcfsIterator(), watched_only=True)
    scanner.watch(sleeper.pid)
    first = scanner.snapshot(1.0)
    burner = subprocess.Popen([sys.executable, str(script), str(stop), "child"])

    def burned() -> bool:
        entry = ProcfsIterator().read(burner.pid)
        return entry is not None and entry.info["cpu_times"].user > 0.3

    try:
        _busy_until(burned)
        second = scanner.snapshot(2.0)
    finally:
        stop.write_text("")
        burner.wait(30)
        sleeper.kill()
        sleeper.wait(30)
    shares = cpu_shares(first, second)
    assert burner.pid not in shares and sleeper.pid not in shares
    assert shares[OTHER] >= 0.3


def test_light_mode_needs_an_iterator_that_reads_one_pid():
    import psutil

    scanner = ProcessScanner(iter_processes=psutil.process_iter, watched_only=True)
    assert not scanner.snapshot(1.0).rest_from_busy  # falls back to the full scan


def test_exited_processes_are_remembered_for_the_ttl_then_forgotten_in_order():
    sleepers = [subprocess.Popen(["sleep", "60"]) for _ in range(2)]
    first, second = (s.pid for s in sleepers)
    try:
        scanner = ProcessScanner(iter_processes=ProcfsIterator(), watched_only=True,
                                 exited_ttl_s=5.0)
        for pid in (first, second):
            scanner.watch(pid)
        scanner.snapshot(1.0)
        for t, proc in ((2.0, sleepers[0]), (4.0, sleepers[1])):
            proc.kill()
            proc.wait()
            snap = scanner.snapshot(t)  # the exit is noticed here
            assert not snap.procs[proc.pid].alive
        assert {first, second} <= set(scanner.snapshot(7.0).procs)  # 5 s after the first exit
        snap = scanner.snapshot(7.5)
        assert first not in snap.procs and not snap.procs[second].alive
        assert second not in scanner.snapshot(9.5).procs
    finally:
        for s in sleepers:
            s.kill()
            s.wait()
