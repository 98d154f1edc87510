"""Processes, low level: a command's process tree, whether a pid runs, starting a command in its
own process group, forwarding signals to that group, and the shell's exit-code convention.

The wrapper (``runner.py``), the ranks of a job (``ranks.py``) and the daemon (``daemon/``) all
use this module; it imports nothing of carbonwatch, so any of them may import it."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from collections.abc import Mapping, Sequence
from types import FrameType, TracebackType
from typing import Any

import psutil

FORWARDED_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class ProcessTree:
    """The pids of a command's tree, children that appear later included. Pids that exited stay
    members, so the energy of a short-lived child seen once is still owned by the job."""

    def __init__(self, root_pid: int) -> None:
        self.root_pid = root_pid
        self.pids: set[int] = {root_pid}

    def refresh(self, children: Mapping[int, Sequence[int]] | None = None) -> set[int]:
        """Add descendants seen now. With ``children`` (from :func:`children_map`, built once per
        tick) several trees share one pass over the process table instead of one pass each."""
        if children is None:
            with contextlib.suppress(psutil.Error):
                root = psutil.Process(self.root_pid)
                for child in root.children(recursive=True):
                    self.pids.add(child.pid)
            return self.pids
        stack = [self.root_pid]
        while stack:
            for child in children.get(stack.pop(), ()):
                if child not in self.pids:
                    self.pids.add(child)
                    stack.append(child)
        return self.pids


def children_map() -> dict[int, list[int]]:
    """ppid -> child pids of every process now, in one pass over the process table."""
    out: dict[int, list[int]] = {}
    for proc in psutil.process_iter(["ppid"]):
        ppid = proc.info.get("ppid")
        if ppid:
            out.setdefault(ppid, []).append(proc.pid)
    return out


def exited(pid: int) -> bool:
    """Whether our child ``pid`` has exited, without reaping it (WNOWAIT): a zombie's final CPU
    times stay readable until it is reaped."""
    try:
        return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    except ChildProcessError:
        return True


def pid_alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie does not)."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def stamp(pid: int) -> dict[str, float] | None:
    """pid and start time: a pid alone may be reused by an unrelated process later."""
    try:
        return {"pid": pid, "started": psutil.Process(pid).create_time()}
    except psutil.Error:
        return None


def stamp_alive(mark: Mapping[str, Any] | None) -> bool:
    """Whether the process :func:`stamp` marked still runs (same pid, same start time)."""
    if not mark:
        return False
    try:
        proc = psutil.Process(int(mark["pid"]))
        return (
            abs(proc.create_time() - float(mark["started"])) < 0.01
            and proc.status() != psutil.STATUS_ZOMBIE
        )
    except (psutil.Error, KeyError, TypeError, ValueError):
        return False


def spawn(argv: Sequence[str]) -> subprocess.Popen[Any]:
    """Start ``argv`` directly (never through a shell) as the leader of a new process group, so a
    signal sent to the group reaches the whole tree. FileNotFoundError naming the command when it
    cannot start."""
    argv = list(argv)
    try:
        return subprocess.Popen(argv, process_group=0)  # noqa: S603 - argv, never a shell
    except OSError as exc:
        raise FileNotFoundError(f"cannot start {argv[0]!r}: {exc.strerror}") from exc


def exit_code(returncode: int) -> int:
    """A child's exit code as a shell reports it: 128+N when signal N ended it."""
    return returncode if returncode >= 0 else 128 - returncode


class SignalForwarder:
    """Forward SIGINT, SIGTERM and SIGHUP received by this process to a child's process group.

    Enter it *before* the child starts: a signal that arrives meanwhile (while a job row is
    written on a busy node) is kept and delivered by :meth:`attach` right after the child exists,
    instead of killing the wrapper and orphaning the command. ``received`` lists every signal
    caught. Leaving restores the previous handlers."""

    def __init__(self, signals: Sequence[signal.Signals] = FORWARDED_SIGNALS) -> None:
        self.signals = tuple(signals)
        self.received: list[int] = []
        self._early: list[int] = []  # received before the child existed
        self._pid: int | None = None
        self._previous: dict[signal.Signals, Any] = {}

    def _forward(self, signum: int, _frame: FrameType | None) -> None:
        self.received.append(signum)
        if self._pid is None:
            self._early.append(signum)
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self._pid, signum)

    def attach(self, pid: int) -> None:
        """From now on forward to ``pid``'s group; deliver what arrived before. Python runs
        handlers between bytecodes of this thread, so each signal lands either in the early list
        (before the assignment) or is forwarded by the handler itself (after it), never both."""
        self._pid = pid
        for signum in self._early:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signum)
        self._early.clear()

    def __enter__(self) -> SignalForwarder:
        self._previous = {sig: signal.signal(sig, self._forward) for sig in self.signals}
        return self

    def __exit__(
        self,
        _type: type[BaseException] | None,
        _exc: BaseException | None,
        _tb: TracebackType | None,
    ) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def wait_forwarding(child: subprocess.Popen[Any]) -> int:
    """Wait for ``child`` (started by :func:`spawn`), forwarding SIGINT/SIGTERM/SIGHUP to its
    process group meanwhile; its exit code, 128+N when signal N ended it."""
    with SignalForwarder() as forwarder:
        forwarder.attach(child.pid)
        returncode = child.wait()
    return exit_code(returncode)
