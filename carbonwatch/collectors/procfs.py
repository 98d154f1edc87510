"""A fast process listing for the 1 Hz scan: one read of ``/proc/<pid>/stat`` per process.

psutil's ``process_iter(attrs=[...])`` reads several files and builds objects per process; at
~300 processes and 1 Hz that alone costs a few % of a core. Everything the scanner needs (ppid,
CPU times including reaped children, start time, RSS) is in the one ``stat`` line, so this reads
just that. It is a drop-in for ``ProcessScanner(iter_processes=...)``; the proc root is a parameter
so tests can build a fake ``/proc`` tree. Off Linux, use psutil's iterator (the default)."""

from __future__ import annotations

import os
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple


class CpuTimes(NamedTuple):
    """Shaped like psutil's ``pcputimes`` (named tuples are cheap to build: ~350 of them a scan)."""

    user: float
    system: float
    children_user: float
    children_system: float


class MemoryInfo(NamedTuple):
    rss: int


class MachineCpuTimes(NamedTuple):
    """``/proc/stat``'s first line in seconds, shaped like psutil's ``cpu_times()`` on Linux (the
    same fields, the same ticks / CLK_TCK): psutil parses it through a buffered file each call."""

    user: float
    nice: float
    system: float
    idle: float
    iowait: float = 0.0
    irq: float = 0.0
    softirq: float = 0.0
    steal: float = 0.0
    guest: float = 0.0
    guest_nice: float = 0.0


def busy_cpu_seconds(times: Any) -> float:
    """Busy CPU seconds in a ``psutil.cpu_times()`` result: everything but idle, iowait and steal.
    Guest time is subtracted because Linux already counts it inside user and nice."""
    extra = ("idle", "iowait", "steal", "guest", "guest_nice")
    return sum(times) - sum(getattr(times, name, 0.0) for name in extra)


def total_cpu_seconds(times: Any) -> float:
    """All CPU seconds in a ``psutil.cpu_times()`` result; guest time, already inside user and
    nice on Linux, counted once."""
    return sum(times) - getattr(times, "guest", 0.0) - getattr(times, "guest_nice", 0.0)


class ProcFile:
    """A /proc file kept open and re-read with ``pread`` at offset 0: one system call a read
    instead of open, read and close (each dear on a VM). The kernel regenerates a seq_file read
    from offset 0, so every read is fresh. Opened at the first read; closed with the object."""

    def __init__(self, path: str, size: int = 4096) -> None:
        self.path = path
        self._size = size
        self._fd: int | None = None

    def read(self) -> bytes | None:
        """The file's first ``size`` bytes now; None if it cannot be opened or read."""
        if self._fd is None:
            try:
                self._fd = os.open(self.path, os.O_RDONLY)
            except OSError:
                return None
            weakref.finalize(self, os.close, self._fd)
        try:
            return os.pread(self._fd, self._size, 0)
        except OSError:
            return None


def parse_meminfo(raw: bytes) -> tuple[int, int] | None:
    """(total_bytes, used_bytes) from /proc/meminfo, used = MemTotal - MemAvailable, as psutil's
    ``virtual_memory()`` has them (kB * 1024, available clamped to 0..total); None without a
    usable MemAvailable (before Linux 3.14, or 0: psutil then estimates, see ram.py)."""
    total = available = None
    for line in raw.split(b"\n", 8)[:8]:  # MemTotal is the first line, MemAvailable the third
        if line.startswith(b"MemTotal:"):
            total = int(line.split()[1]) * 1024
        elif line.startswith(b"MemAvailable:"):
            available = int(line.split()[1]) * 1024
    if total is None or not available:
        return None
    return total, total - min(max(available, 0), total)


class ProcEntry:
    """Shaped like psutil's ``Process`` as seen through ``process_iter(attrs=...)``: ``.info``."""

    __slots__ = ("info",)

    def __init__(self, info: dict[str, Any]) -> None:
        self.info = info


def _boot_time_s(root: Path) -> float:
    for line in (root / "stat").read_text().splitlines():
        if line.startswith("btime "):
            return float(line.split()[1])
    raise OSError(f"no btime in {root / 'stat'}")


# Kept-open stat files at most (see ProcfsIterator.read_kept), and never more than an eighth of
# the process's file limit: the daemon's clients and its store need the rest.
MAX_KEPT = 256


def _close_all(fds: dict[int, int]) -> None:
    for fd in fds.values():
        os.close(fd)
    fds.clear()


class ProcfsIterator:
    """Callable like ``psutil.process_iter(attrs=..., ad_value=...)``; yields ProcEntry."""

    def __init__(self, proc_root: str | Path = "/proc") -> None:
        self.root = Path(proc_root)
        self._root_s = str(self.root)
        self._ticks = os.sysconf("SC_CLK_TCK")
        self._page = os.sysconf("SC_PAGE_SIZE")
        self._boot_s = _boot_time_s(self.root)
        self._stat = ProcFile(f"{self._root_s}/stat")
        self._loadavg = ProcFile(f"{self._root_s}/loadavg", 256)
        self._meminfo = ProcFile(f"{self._root_s}/meminfo")
        self._kept: dict[int, int] = {}  # pid -> its stat file, open (see read_kept)
        import resource  # Unix only, like /proc: this module is imported everywhere

        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        self._fd_room = MAX_KEPT if soft == resource.RLIM_INFINITY else soft // 8
        weakref.finalize(self, _close_all, self._kept)

    @staticmethod
    def available(proc_root: str | Path = "/proc") -> bool:
        return (Path(proc_root) / "self" / "stat").exists() and (Path(proc_root) / "stat").exists()

    def __call__(self, attrs: Any = None, ad_value: Any = None) -> Iterator[ProcEntry]:
        for pid in self.pids():
            entry = self.read(pid)
            if entry is not None:
                yield entry

    def last_pid(self) -> int | None:
        """The pid the kernel handed out last (``/proc/loadavg``'s fifth field): while it stays the
        same no process was created, so a scan need not list /proc to find new ones."""
        raw = self._loadavg.read()
        try:
            return int(raw.split()[4]) if raw is not None else None
        except (IndexError, ValueError):
            return None

    def cpu_times(self) -> MachineCpuTimes:
        """The machine's cumulative CPU times (``/proc/stat``'s ``cpu`` line), as psutil's;
        OSError if it cannot be read (as psutil raises)."""
        raw = self._stat.read()
        fields = raw[: raw.find(b"\n")].split() if raw is not None else []
        if len(fields) < 5 or fields[0] != b"cpu":
            raise OSError(f"no cpu line in {self._stat.path}")
        ticks = self._ticks
        return MachineCpuTimes(*(int(x) / ticks for x in fields[1:11]))

    def memory_bytes(self) -> tuple[int, int] | None:
        """(total_bytes, used_bytes) of the machine's memory now (see parse_meminfo)."""
        raw = self._meminfo.read()
        return parse_meminfo(raw) if raw is not None else None

    def pids(self) -> list[int]:
        """Every pid in the proc root (one ``listdir``, no per-process read)."""
        return [int(name) for name in os.listdir(self._root_s) if name.isdigit()]

    def _read(self, path: str, size: int) -> bytes | None:
        # os.open/os.read: about half the cost of a buffered open() for a one-line file.
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError:  # exited between listdir and open, or not readable
            return None
        try:
            return os.read(fd, size)
        except OSError:
            return None
        finally:
            os.close(fd)

    def read_kept(self, pid: int) -> ProcEntry | None:
        """``read``, through the pid's stat file kept open from one call to the next (for the
        pids read every second: ``pread`` alone costs ~40 % of open, read and close on a VM).
        The open file belongs to the process it was opened on: once that has gone, reads fail
        (ESRCH) even if its pid was handed out again, so the file is closed and the pid opened
        afresh (the new process, if any). At most MAX_KEPT files; ``keep_only`` prunes."""
        fd = self._kept.pop(pid, None)
        if fd is not None:
            try:
                raw = os.pread(fd, 4096, 0)
            except OSError:
                raw = b""
            if raw:
                self._kept[pid] = fd
                return self._parse(pid, raw)
            os.close(fd)
        if len(self._kept) >= min(MAX_KEPT, self._fd_room):
            return self.read(pid)
        try:
            fd = os.open(f"{self._root_s}/{pid}/stat", os.O_RDONLY)
        except OSError:
            return None
        try:
            entry = self._parse(pid, os.pread(fd, 4096, 0))
        except OSError:
            entry = None
        if entry is None:
            os.close(fd)
        else:
            self._kept[pid] = fd
        return entry

    def keep_only(self, pids: set[int]) -> None:
        """Close the kept files of pids not in ``pids`` (no longer watched)."""
        if not self._kept.keys() <= pids:
            for pid in [p for p in self._kept if p not in pids]:
                os.close(self._kept.pop(pid))

    def read(self, pid: int) -> ProcEntry | None:
        """One process's stat line as a ProcEntry; None if it is gone or unreadable."""
        raw = self._read(f"{self._root_s}/{pid}/stat", 4096)
        return None if raw is None else self._parse(pid, raw)

    def _parse(self, pid: int, raw: bytes) -> ProcEntry | None:
        # The command name (field 2) may hold spaces and parentheses: split after the last ')'.
        fields = raw[raw.rfind(b")") + 2 :].split()
        if len(fields) < 22:
            return None
        if len(fields) > 35 and fields[35] == b"-1":
            # exit_signal -1: a thread, not a process. Listing /proc never shows one, but its
            # /proc/<tid> opens: the scan reads pids handed out since the last scan, tids included.
            return None
        ticks = self._ticks
        return ProcEntry(
            {
                "pid": pid,
                "ppid": int(fields[1]),
                "cpu_times": CpuTimes(
                    int(fields[11]) / ticks,
                    int(fields[12]) / ticks,
                    int(fields[13]) / ticks,
                    int(fields[14]) / ticks,
                ),
                "create_time": self._boot_s + int(fields[19]) / ticks,
                "memory_info": MemoryInfo(int(fields[21]) * self._page),
            }
        )
