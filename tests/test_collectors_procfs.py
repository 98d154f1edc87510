"""The fast /proc reader agrees with psutil and survives odd command names."""

import os

import psutil
import pytest

from carbonwatch.collectors.processes import ProcessScanner
from carbonwatch.collectors.procfs import ProcfsIterator

pytestmark = pytest.mark.skipif(not ProcfsIterator.available(), reason="needs Linux /proc")


def _fake_proc(root, pid, comm, ppid, utime, stime, cutime, cstime, start, rss_pages):
    (root / "stat").write_text("cpu  1 2 3 4\nbtime 1700000000\n")
    d = root / str(pid)
    d.mkdir()
    # Fields after comm: state ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt
    # utime stime cutime cstime priority nice threads itrealvalue starttime vsize rss ...
    rest = (f"S {ppid} 1 1 0 -1 0 0 0 0 0 {utime} {stime} {cutime} {cstime} 20 0 1 0 {start} 0 "
            f"{rss_pages} 0")
    (d / "stat").write_text(f"{pid} ({comm}) {rest}\n")


def test_fake_proc_with_spaces_and_parens_in_the_name(tmp_path):
    ticks, page = os.sysconf("SC_CLK_TCK"), os.sysconf("SC_PAGE_SIZE")
    _fake_proc(tmp_path, 42, "my (weird) name", 7, 3 * ticks, ticks, 2 * ticks, 0, 5 * ticks, 10)
    (tmp_path / "self").mkdir()
    (tmp_path / "self" / "stat").write_text("")
    (tmp_path / "notapid").mkdir()
    (entry,) = list(ProcfsIterator(tmp_path)())
    info = entry.info
    assert (info["pid"], info["ppid"]) == (42, 7)
    assert (info["cpu_times"].user, info["cpu_times"].system) == (3.0, 1.0)
    assert info["cpu_times"].children_user == 2.0
    assert info["create_time"] == pytest.approx(1700000005.0)
    assert info["memory_info"].rss == 10 * page


def test_agrees_with_psutil_on_this_process():
    me = {e.info["pid"]: e.info for e in ProcfsIterator()()}[os.getpid()]
    proc = psutil.Process()
    assert me["ppid"] == proc.ppid()
    assert me["create_time"] == pytest.approx(proc.create_time(), abs=0.05)
    assert me["cpu_times"].user == pytest.approx(proc.cpu_times().user, abs=0.1)
    assert me["memory_info"].rss == pytest.approx(proc.memory_info().rss, rel=0.2)


def test_scanner_on_procfs_charges_cpu_time_to_a_busy_process():
    scanner = ProcessScanner(iter_processes=ProcfsIterator())
    first = scanner.snapshot(1.0)
    sum(i * i for i in range(3_000_000))  # burn some CPU in this process
    second = scanner.snapshot(2.0)
    me = os.getpid()
    assert second.procs[me].cpu_s > first.procs[me].cpu_s
