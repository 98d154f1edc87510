"""Who used the CPU and memory: a psutil process scanner behind the :class:`ProcessSource` seam.

CPU collectors ask a ProcessSource for a :class:`ProcessSnapshot` at each ``collect`` and turn two
consecutive snapshots into shares with :func:`cpu_shares` / :func:`rss_shares`. By default every pid
is its own key and the attribution layer, which owns the job registry, maps pids to jobs. With
``key_all_pids=False`` only *watched* trees (a root pid and every descendant, including children
that appear later) are keyed by pid and the rest of the machine is lumped under OTHER. Either way,
busy CPU time that no process accounts for (interrupts, processes unreadable to us) is OTHER too.

CPU seconds are *charged* so that a watched tree's total is complete even for short-lived children:
a process is charged its own user+system time, plus the CPU time of children it reaped
(``children_user + children_system``) minus what those children were already charged while the
scanner could see them. A child that lived and died between two scans is never seen, yet its time
reaches its parent's reaped counter and is charged there.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from itertools import takewhile
from typing import Any, NamedTuple, Protocol

import psutil

from carbonwatch.collectors.procfs import busy_cpu_seconds, total_cpu_seconds
from carbonwatch.model import OTHER

_ATTRS = ["pid", "ppid", "create_time", "cpu_times", "memory_info"]


class ProcInfo(NamedTuple):
    """One process in a snapshot. A named tuple: a scan builds one per process on the machine every
    second, and a frozen dataclass costs several times more to construct."""

    ppid: int
    create_time_s: float  # with the pid, the identity of a process (pids get reused)
    cpu_s: float  # cumulative CPU seconds charged to this process (see the module docstring)
    rss_bytes: int  # 0 once exited
    alive: bool = True


@dataclass(frozen=True)
class ProcessSnapshot:
    """The machine's processes at ``t_s``; exited ones are kept a while with their final charge."""

    t_s: float
    procs: Mapping[int, ProcInfo]
    # pids keyed individually in shares; None keys every pid (the rest go to OTHER)
    watched: frozenset[int] | None = None
    busy_cpu_s: float | None = None  # machine-wide cumulative busy CPU seconds, if known
    total_cpu_s: float | None = None  # ... and all CPU seconds, busy or not (the load's base)
    # Only watched pids are read each scan (see ProcessScanner's ``watched_only``): the others'
    # figures may be stale, so OTHER is the machine's busy time less the watched pids' charge.
    rest_from_busy: bool = False
    # OTHER's resident bytes, so rss_shares need not walk every process on the machine each
    # second. A full scan: the live unwatched pids' sum, kept as they change (an exact int sum).
    # The light scan: the machine's used memory (MemTotal - MemAvailable) less the watched pids'.
    other_rss_bytes: int | None = None
    memory_bytes: tuple[int, int] | None = None  # the light scan's (total, used): the RAM model's


def machine_load(prev: ProcessSnapshot | None, cur: ProcessSnapshot) -> float | None:
    """The machine's CPU load (0..1) between two snapshots, from /proc/stat; None if unknown."""
    if prev is None or None in (prev.busy_cpu_s, prev.total_cpu_s, cur.busy_cpu_s,
                                cur.total_cpu_s):
        return None
    total_s = cur.total_cpu_s - prev.total_cpu_s  # type: ignore[operator]
    busy_s = cur.busy_cpu_s - prev.busy_cpu_s  # type: ignore[operator]
    return 0.0 if total_s <= 0 else min(1.0, max(0.0, busy_s / total_s))


class ProcessSource(Protocol):
    def snapshot(self, now_s: float) -> ProcessSnapshot:
        """The processes at now_s. Calling twice with the same now_s returns the same snapshot, so
        several collectors of one sampling tick can share a source."""


def cpu_deltas(prev: ProcessSnapshot, cur: ProcessSnapshot) -> dict[int, float]:
    """CPU seconds each pid was charged between two snapshots (pids with zero omitted)."""
    out: dict[int, float] = {}
    for pid, info in cur.procs.items():
        before = prev.procs.get(pid)
        if before is not None and before.create_time_s == info.create_time_s:
            delta = info.cpu_s - before.cpu_s
        else:
            delta = info.cpu_s  # born since prev (or the pid was reused): all its charge is new
        if delta > 0:
            out[pid] = delta
    return out


def cpu_shares(prev: ProcessSnapshot | None, cur: ProcessSnapshot) -> dict[int | str, float]:
    """pid -> CPU seconds in (prev.t_s, cur.t_s]; unwatched pids and unexplained busy: OTHER."""
    if prev is None:
        return {}
    if cur.rest_from_busy and cur.watched is not None:
        return _watched_shares(prev, cur, cur.watched)
    deltas = cpu_deltas(prev, cur)
    shares = _key_watched(deltas, cur.watched)
    if prev.busy_cpu_s is not None and cur.busy_cpu_s is not None:
        unexplained_s = (cur.busy_cpu_s - prev.busy_cpu_s) - sum(deltas.values())
        if unexplained_s > 0:
            shares[OTHER] = shares.get(OTHER, 0.0) + unexplained_s
    return shares


def _watched_shares(
    prev: ProcessSnapshot, cur: ProcessSnapshot, watched: frozenset[int]
) -> dict[int | str, float]:
    """Shares when only watched pids were read: each watched pid's charge since prev, and OTHER
    the rest of the machine's busy time (``/proc/stat``). A pid that was already running, unwatched,
    at prev and joined a tree since is charged from this snapshot on (its figure at prev was not
    read then); one born since prev is charged everything it used, as in a full scan."""
    out: dict[int | str, float] = {}
    watched_s = 0.0
    for pid in watched:
        info = cur.procs.get(pid)
        if info is None:
            continue
        before = prev.procs.get(pid)
        if before is None or before.create_time_s != info.create_time_s:
            delta = info.cpu_s
        elif prev.watched is not None and pid not in prev.watched:
            continue
        else:
            delta = info.cpu_s - before.cpu_s
        if delta > 0:
            out[pid] = delta
            watched_s += delta
    if prev.busy_cpu_s is not None and cur.busy_cpu_s is not None:
        rest_s = (cur.busy_cpu_s - prev.busy_cpu_s) - watched_s
        if rest_s > 0:
            out[OTHER] = rest_s
    return out


def rss_shares(cur: ProcessSnapshot) -> dict[int | str, float]:
    """pid -> resident bytes (unwatched pids as OTHER)."""
    if cur.watched is not None and cur.other_rss_bytes is not None:
        out: dict[int | str, float] = {}
        for pid in cur.watched:
            p = cur.procs.get(pid)
            if p is not None and p.alive and p.rss_bytes > 0:
                out[pid] = float(p.rss_bytes)
        if cur.other_rss_bytes > 0:
            out[OTHER] = float(cur.other_rss_bytes)
        return out
    rss = {pid: float(p.rss_bytes) for pid, p in cur.procs.items() if p.alive and p.rss_bytes > 0}
    return _key_watched(rss, cur.watched)


def _key_watched(
    values: Mapping[int, float], watched: frozenset[int] | None
) -> dict[int | str, float]:
    if watched is None:
        return dict(values)
    out: dict[int | str, float] = {}
    other = 0.0
    for pid, v in values.items():
        if pid in watched:
            out[pid] = v
        else:
            other += v
    if other > 0:
        out[OTHER] = other
    return out


@dataclass
class _Tracked:
    ppid: int
    create_time_s: float
    own_s: float  # user + system
    reaped_s: float  # children_user + children_system
    charged_s: float
    rss_bytes: int
    exited_s: float | None = None


# A jump of the kernel's last pid by more than this since the last scan (or backwards: the pid
# counter wrapped) is cheaper found by listing /proc (~1 ms for 1,000 pids) than by opening every
# pid handed out since (a few us each; most are threads, or already gone).
MAX_PID_STEP = 256
# ... and the light scan lists /proc once per this many scans anyway (~4 us a second): the
# unwatched are never re-read (their CPU and memory are OTHER's, from /proc/stat and /proc/meminfo),
# so their exits are noticed there, and the table forgets them.
LIST_EVERY_SCANS = 300


class ProcessScanner:
    """Scans the processes (psutil's ``process_iter``, or ProcfsIterator). ``watch(pid)`` follows
    a pid and its descendants; with ``key_all_pids=False`` only watched trees are keyed in shares.
    Exited processes are remembered for ``exited_ttl_s`` with their last charge."""

    def __init__(
        self,
        exited_ttl_s: float = 300.0,
        key_all_pids: bool = True,
        iter_processes: Callable[..., Iterable[Any]] = psutil.process_iter,
        cpu_times: Callable[[], Any] | None = psutil.cpu_times,
        watched_only: bool = False,
        list_every_scans: int = LIST_EVERY_SCANS,
    ) -> None:
        self._ttl_s = exited_ttl_s
        # watched_only: read only the watched trees and the pids new since the last scan; /proc is
        # listed once per ``list_every_scans`` scans (the unwatched pids' exits). Needs an iterator
        # with ``pids`` and ``read`` (ProcfsIterator) and the machine's CPU times (``cpu_times``):
        # OTHER's CPU comes from there, its memory from the iterator's ``memory_bytes``.
        self._light = watched_only and cpu_times is not None and all(
            hasattr(iter_processes, name) for name in ("pids", "read"))
        self._memory = getattr(iter_processes, "memory_bytes", None) if self._light else None
        self._list_every = max(1, list_every_scans)
        self._scans = 0
        self._last_pid: int | None = None
        self._key_all = key_all_pids and not self._light
        self._iter = iter_processes
        self._cpu_times = cpu_times
        self._procs: dict[int, _Tracked] = {}
        self._info: dict[int, ProcInfo] = {}  # _procs as a snapshot shows them, kept in step
        self._alive: set[int] = set()
        self._exited: dict[int, float] = {}  # pid -> when it exited, until forgotten
        self._rss_alive = 0  # resident bytes of every live tracked pid (an exact int sum)
        self._trees: dict[int, set[int]] = {}  # root -> members
        self._born: list[int] = []  # since the last scan: the trees grow from these
        self._regrow = False  # a new tree or a new parent: a whole pass over the table instead
        self._last: ProcessSnapshot | None = None

    def watch(self, root_pid: int) -> None:
        """Track root_pid's tree individually from the next scan on."""
        if root_pid not in self._trees:
            self._trees[root_pid] = {root_pid}
            self._regrow = True

    def unwatch(self, root_pid: int) -> None:
        self._trees.pop(root_pid, None)

    def tree(self, root_pid: int) -> set[int]:
        """A watched root and every descendant seen since, exited ones too (empty: not watched)."""
        return set(self._trees[root_pid]) if root_pid in self._trees else set()

    def in_tree(self, root_pid: int, pid: int) -> bool:
        """Whether pid is in the watched root_pid's tree (as of the last scan)."""
        return root_pid in self._trees and pid in self._trees[root_pid]

    def descendants(self, root_pid: int, include_exited: bool = True) -> set[int]:
        """root_pid's descendants (not itself). For a watched root: every one seen since watching,
        exited ones too unless ``include_exited`` is False; otherwise from the last scan's tree."""
        tree = self._trees.get(root_pid)
        if tree is not None:
            pids = tree - {root_pid}
        else:
            pids = _subtree(root_pid, self._children_map(alive_only=True)) - {root_pid}
        if include_exited:
            return set(pids)
        return pids & self._alive

    def cpu_seconds(self, pid: int) -> float:
        """Cumulative CPU seconds charged to pid since the scanner first saw it (0 if unknown)."""
        tracked = self._procs.get(pid)
        return tracked.charged_s if tracked else 0.0

    @property
    def tracked(self) -> int:
        """How many live processes the scanner knows of."""
        return len(self._alive)

    def snapshot(self, now_s: float) -> ProcessSnapshot:
        if self._last is not None and self._last.t_s == now_s:
            return self._last
        times = self._cpu_times() if self._cpu_times else None
        before: set[int] = set()
        for tree in self._trees.values():
            before |= tree
        self._scan(now_s, before) if self._light else self._scan(now_s)
        self._update_trees()
        watched: set[int] = set()
        for tree in self._trees.values():
            watched |= tree
        if self._light and watched - before:
            # Joined this scan without being read (already running, unwatched): read them now, so
            # that the next interval charges them from here, not from a stale figure.
            stale = sorted((watched - before) & self._alive)
            self._apply(now_s, self._read(stale), set())
        other_rss: int | None = None
        memory = self._memory() if self._memory else None
        if not self._key_all:
            procs = self._procs
            watched_rss = sum(procs[p].rss_bytes for p in watched & self._alive)
            if not self._light:
                other_rss = self._rss_alive - watched_rss
            elif memory is not None:
                # Every used byte the watched pids do not hold is OTHER's: other processes, the
                # kernel's memory, caches it cannot drop. RSS counts shared and file pages, so
                # the watched may exceed used: OTHER then holds 0.
                other_rss = max(0, memory[1] - watched_rss)
            # else: rss_shares sums the unwatched pids' memory as last read (read at birth)
        self._last = ProcessSnapshot(
            t_s=now_s,
            procs=self._info.copy(),
            watched=None if self._key_all else frozenset(watched),
            busy_cpu_s=None if times is None else busy_cpu_seconds(times),
            total_cpu_s=None if times is None else total_cpu_seconds(times),
            rest_from_busy=self._light,
            other_rss_bytes=other_rss,
            memory_bytes=memory,
        )
        return self._last

    # -- internals --

    def _scan(self, now_s: float, watched: set[int] | None = None) -> None:
        """Read the processes and charge what they used; with ``watched`` (the light scan) only
        those and new pids; a pid is gone when its read fails or /proc no longer lists it."""
        if watched is None:
            self._apply(now_s, self._iter(attrs=_ATTRS, ad_value=None), None)
            return
        alive = self._alive
        self._scans += 1
        due = watched & alive
        # New processes: the kernel hands pids out in increasing order until its counter wraps, so
        # every process created since the last scan (a reused pid too) holds one of the pids after
        # the last scan's last_pid. While that stays put, none was created; a small step is read
        # pid by pid; a big one (or a wrap) lists /proc. Exits: failed reads, or pids not listed.
        last_pid = getattr(self._iter, "last_pid", lambda: None)()
        gone: set[int] = set()
        step = None if last_pid is None or self._last_pid is None else last_pid - self._last_pid
        if step is None or not self._procs or not 0 <= step <= MAX_PID_STEP \
                or self._scans % self._list_every == 1 % self._list_every:
            listed = set(self._iter.pids())  # type: ignore[attr-defined]
            due = (due & listed) | (listed - alive)
            gone = alive - listed
        elif step:
            due |= set(range(last_pid - step + 1, last_pid + 1))  # type: ignore[operator]
        self._last_pid = last_pid
        # The watched are read every second: through files kept open, where the iterator can.
        read_kept, keep_only = (getattr(self._iter, n, None) for n in ("read_kept", "keep_only"))
        kept = due & watched if read_kept and keep_only else set()
        entries = self._read(sorted(due - kept))
        entries += [e for e in map(read_kept, sorted(kept)) if e is not None]  # type: ignore[arg-type]
        gone |= (due & alive) - {e.info["pid"] for e in entries}
        if read_kept and keep_only:
            keep_only(kept - gone)  # unwatched or exited: their files closed
        self._apply(now_s, entries, gone)

    def _read(self, pids: Iterable[int]) -> list[Any]:
        read = self._iter.read  # type: ignore[attr-defined]
        return [e for e in map(read, pids) if e is not None]

    def _apply(self, now_s: float, entries: Iterable[Any], gone: set[int] | None) -> None:
        """Charge ``entries``; a tracked pid not among them has exited if ``gone`` is None (a full
        scan), else only those in ``gone``."""
        updates: dict[int, tuple[float, float, int, int]] = {}  # pid -> own_s, reaped_s, rss, ppid
        born: set[int] = set()
        procs = self._procs
        for proc in entries:
            info = proc.info
            times, create_time = info.get("cpu_times"), info.get("create_time")
            if times is None or create_time is None:
                continue  # access denied or gone mid-scan: nothing to charge
            pid, ppid = info["pid"], info.get("ppid") or 0
            own_s = times.user + times.system
            reaped_s = getattr(times, "children_user", 0.0) + getattr(times, "children_system", 0.0)
            mem = info.get("memory_info")
            rss = mem.rss if mem is not None else 0
            old = procs.get(pid)
            if old is None or old.create_time_s != create_time or old.exited_s is not None:
                self._forget(pid)
                # New to us: everything it and its reaped children used is new since it was born.
                self._track(pid, _Tracked(ppid, create_time, own_s, reaped_s, own_s + reaped_s,
                                          rss))
                born.add(pid)
            else:
                updates[pid] = (own_s, reaped_s, rss, ppid)
        # Children that vanished this scan: their parent's reaped counter now includes their final
        # total, of which they were already charged own + reaped as last seen.
        if gone is None:  # a full scan: every live pid not read (in the table's order, as ever)
            vanished = [p for p in procs if p in self._alive and p not in updates
                        and p not in born]
        else:
            vanished = sorted(p for p in gone if p in self._alive and p not in updates
                              and p not in born)
        vanished_s_by_parent: dict[int, float] = {}
        for pid in vanished:
            t = procs[pid]
            t.exited_s = now_s
            self._rss_alive -= t.rss_bytes
            t.rss_bytes = 0
            self._alive.discard(pid)
            self._exited[pid] = now_s
            self._info[pid] = ProcInfo(t.ppid, t.create_time_s, t.charged_s, 0, False)
            vanished_s_by_parent[t.ppid] = (
                vanished_s_by_parent.get(t.ppid, 0.0) + t.own_s + t.reaped_s
            )
        for pid, (own_s, reaped_s, rss, ppid) in updates.items():
            t = procs[pid]
            reaped_new_s = reaped_s - t.reaped_s - vanished_s_by_parent.get(pid, 0.0)
            t.charged_s += max(0.0, own_s - t.own_s) + max(0.0, reaped_new_s)
            self._rss_alive += rss - t.rss_bytes
            if ppid != t.ppid:
                self._regrow = True  # re-parented: maybe under a subreaper in a watched tree
            t.own_s, t.reaped_s, t.rss_bytes, t.ppid = own_s, reaped_s, rss, ppid
            self._info[pid] = ProcInfo(ppid, t.create_time_s, t.charged_s, rss)
        self._born.extend(born)
        # In the order of exit (scans go forward in time): the expired are at the head, and a scan
        # need not walk every exit of the last ttl.
        ttl_s = self._ttl_s
        for pid, _ in list(takewhile(lambda e: now_s - e[1] > ttl_s, self._exited.items())):
            self._forget(pid)

    def _track(self, pid: int, t: _Tracked) -> None:
        self._procs[pid] = t
        self._info[pid] = ProcInfo(t.ppid, t.create_time_s, t.charged_s, t.rss_bytes)
        self._alive.add(pid)
        self._rss_alive += t.rss_bytes

    def _forget(self, pid: int) -> None:
        t = self._procs.pop(pid, None)
        if t is None:
            return
        del self._info[pid]
        if pid in self._alive:
            self._alive.discard(pid)
            self._rss_alive -= t.rss_bytes
        self._exited.pop(pid, None)
        for root, tree in self._trees.items():
            if pid != root:
                tree.discard(pid)

    def _children_map(self, alive_only: bool = False) -> dict[int, list[int]]:
        children: dict[int, list[int]] = {}
        for pid, t in self._procs.items():
            if alive_only and t.exited_s is not None:
                continue
            children.setdefault(t.ppid, []).append(pid)
        return children

    def _update_trees(self) -> None:
        # Membership is sticky: a child re-parented to init when its parent exits still belongs
        # to the job that started it. A process born since the last scan joins the tree its
        # parent is in (its own children are born since too); a new tree, or a process that
        # changed parent, takes the whole pass over the table.
        born, self._born = self._born, []
        regrow, self._regrow = self._regrow, False
        if not self._trees:
            return
        if regrow:
            children = self._children_map()
            for tree in self._trees.values():
                for member in list(tree):
                    tree |= _subtree(member, children)
            return
        born_children: dict[int, list[int]] = {}
        for pid in born:
            t = self._procs.get(pid)
            if t is not None:
                born_children.setdefault(t.ppid, []).append(pid)
        if not born_children:
            return
        for tree in self._trees.values():
            for parent in [p for p in born_children if p in tree]:
                tree |= _subtree(parent, born_children)


def _subtree(root: int, children: Mapping[int, list[int]]) -> set[int]:
    out = {root}
    stack = [root]
    while stack:
        for child in children.get(stack.pop(), ()):
            if child not in out:
                out.add(child)
                stack.append(child)
    return out


class ShareTracker:
    """One collector's view of a shared ProcessSource: shares over its own intervals."""

    def __init__(self, source: ProcessSource | None) -> None:
        self._source = source
        self.last: ProcessSnapshot | None = None  # the snapshot of the last ``cpu`` call
        # The machine's CPU load over the interval of the last ``cpu`` call (None: unknown), from
        # the same /proc/stat read as OTHER's CPU: a CPU collector need not read it again.
        self.load: float | None = None

    def cpu(self, now_s: float) -> dict[int | str, float]:
        """CPU seconds per watched pid (rest as OTHER) since this tracker's previous call."""
        if self._source is None:
            return {}
        cur = self._source.snapshot(now_s)
        shares = cpu_shares(self.last, cur)
        self.load = machine_load(self.last, cur)
        self.last = cur
        return shares

    def rss(self, now_s: float) -> dict[int | str, float]:
        """Resident bytes per watched pid (rest as OTHER) at now_s."""
        if self._source is None:
            return {}
        return rss_shares(self._source.snapshot(now_s))
