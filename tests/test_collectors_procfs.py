"""The fast /proc reader agrees with psutil (processes, the machine's CPU times and memory) and
survives odd command names."""

import os
import subprocess
import time

import psutil
import pytest

from carbonwatch.collectors import procfs
from carbonwatch.collectors.processes import ProcessScanner
from carbonwatch.collectors.procfs import (
    ProcFile,
    ProcfsIterator,
    busy_cpu_seconds,
    parse_meminfo,
    total_cpu_seconds,
)

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


def test_machine_cpu_times_are_psutils_fields_from_proc_stat(tmp_path):
    ticks = os.sysconf("SC_CLK_TCK")
    line = " ".join(str(n * ticks) for n in (10, 2, 3, 400, 5, 6, 7, 8, 1, 0))
    (tmp_path / "stat").write_text(f"cpu  {line}\ncpu0 1 2 3 4\nbtime 1700000000\n")
    fake = ProcfsIterator(tmp_path).cpu_times()
    assert tuple(fake) == (10.0, 2.0, 3.0, 400.0, 5.0, 6.0, 7.0, 8.0, 1.0, 0.0)
    assert busy_cpu_seconds(fake) == 10 + 2 + 3 + 6 + 7  # guest is inside user already
    assert total_cpu_seconds(fake) == 442 - 1
    (tmp_path / "stat").write_text("btime 1700000000\n")
    with pytest.raises(OSError, match="no cpu line"):
        ProcfsIterator(tmp_path).cpu_times()
    # The real machine, against psutil's parser: the same fields, read moments apart.
    theirs, ours = psutil.cpu_times(), ProcfsIterator().cpu_times()
    assert ours._fields[: len(theirs._fields)] == theirs._fields
    assert ours[: len(theirs)] == pytest.approx(tuple(theirs), abs=0.5)


def test_a_kept_open_proc_file_reads_fresh_figures():
    """pread at offset 0 regenerates a /proc file: this process's CPU time, burned between two
    reads of one open file, shows in the second (the kernel's clock is the truth)."""
    ticks = os.sysconf("SC_CLK_TCK")
    stat = ProcFile(f"/proc/{os.getpid()}/stat")

    def user_s() -> float:
        raw = stat.read()
        assert raw is not None
        return int(raw[raw.rfind(b")") + 2 :].split()[11]) / ticks

    before, cpu0 = user_s(), time.process_time()
    while time.process_time() < cpu0 + 0.3:
        sum(i * i for i in range(10_000))
    assert user_s() >= before + 0.2
    assert ProcFile("/proc/no-such-file").read() is None


def test_meminfo_gives_psutils_total_and_used():
    raw = b"MemTotal:       16000 kB\nMemFree:        1000 kB\nMemAvailable:   4000 kB\n"
    assert parse_meminfo(raw) == (16000 * 1024, 12000 * 1024)
    assert parse_meminfo(b"MemTotal: 16000 kB\nMemFree: 1000 kB\n") is None  # before Linux 3.14
    assert parse_meminfo(b"MemTotal: 16000 kB\nMemAvailable: 0 kB\n") is None  # psutil estimates
    total, used = ProcfsIterator().memory_bytes()  # type: ignore[misc]
    vm = psutil.virtual_memory()
    assert total == vm.total
    assert used == pytest.approx(vm.total - vm.available, abs=64 * 1024**2)  # moments apart


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_kept_stat_files_follow_the_watched_and_are_closed_when_not_watched(monkeypatch):
    sleepers = [subprocess.Popen(["sleep", "30"]) for _ in range(3)]
    try:
        baseline = _open_fds()
        scanner = ProcessScanner(iter_processes=ProcfsIterator(), watched_only=True)
        scanner.watch(sleepers[0].pid)
        scanner.watch(sleepers[1].pid)
        scanner.snapshot(1.0)
        scanner.snapshot(2.0)  # the watched read through kept files from here on
        opened = _open_fds() - baseline  # /proc/stat, loadavg, meminfo, and the two stat files
        scanner.unwatch(sleepers[1].pid)
        scanner.snapshot(3.0)
        assert _open_fds() - baseline == opened - 1
        sleepers[0].kill()
        sleepers[0].wait()
        snap = scanner.snapshot(4.0)  # its file fails to read (ESRCH): an exit, and closed
        assert not snap.procs[sleepers[0].pid].alive
        assert _open_fds() - baseline == opened - 2
        monkeypatch.setattr(procfs, "MAX_KEPT", 0)  # beyond the cap: read as any other pid
        scanner.watch(sleepers[2].pid)
        scanner.snapshot(5.0)
        snap = scanner.snapshot(6.0)
        assert snap.procs[sleepers[2].pid].alive and sleepers[2].pid in snap.watched
        assert _open_fds() - baseline == opened - 2
    finally:
        for s in sleepers:
            s.kill()
            s.wait()


def test_a_kept_file_whose_process_has_gone_is_reopened_for_a_reused_pid(tmp_path):
    """The kernel fails reads of a kept /proc/<pid>/stat once its process has gone (here: the
    fake file emptied), even if the pid was handed out again: the new process is read afresh."""
    ticks = os.sysconf("SC_CLK_TCK")
    _fake_proc(tmp_path, 42, "old", 7, ticks, 0, 0, 0, 5 * ticks, 10)
    (tmp_path / "self").mkdir()
    reader = ProcfsIterator(tmp_path)
    first = reader.read_kept(42)
    assert first is not None and first.info["create_time"] == pytest.approx(1700000005.0)
    stat = tmp_path / "42" / "stat"
    stat.write_text("")  # the open file now reads nothing: its process has gone
    new = tmp_path / "new-stat"
    new.write_text(f"42 (new) S 1 1 1 0 -1 0 0 0 0 0 {2 * ticks} 0 0 0 20 0 1 0 {9 * ticks} 0 10\n")
    os.replace(new, stat)  # ... and pid 42 was handed out again
    second = reader.read_kept(42)
    assert second is not None and second.info["create_time"] == pytest.approx(1700000009.0)
    assert second.info["cpu_times"].user == 2.0
    assert reader.read_kept(42).info["create_time"] == second.info["create_time"]  # kept
    stat.write_text("")  # gone for good, its pid not reused
    stat.unlink()
    assert reader.read_kept(42) is None


def test_kept_files_stay_under_an_eighth_of_the_file_limit():
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    # A low limit the constructor can still open its files under (the run may already hold a few
    # dozen): room for limit // 8 kept files.
    limit = max(16, 8 * ((_open_fds() + 16) // 8))
    room = limit // 8
    resource.setrlimit(resource.RLIMIT_NOFILE, (limit, hard))
    try:
        reader = ProcfsIterator()
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    baseline = _open_fds()
    pids = [os.getpid(), os.getppid(), 1]
    pids += [p for p in reader.pids() if p not in pids][: room + 5]
    entries = [reader.read_kept(p) for p in pids]
    assert sum(e is not None for e in entries) > room  # more were read than could be kept
    assert _open_fds() - baseline == room
