"""Start a deferred job through the wrapper, pause and resume it, end it.

The job runs as ``python -m carbonwatch run --name N --kind K -- CMD`` in the submitter's cwd and
environment, as the submitter's uid and gid (a root daemon sets them, and the submitter's
supplementary groups, in the child before it runs anything), so it is measured like any other job
(the wrapper registers it with this daemon over its unix socket or loopback, as that user: no
token is ever put into the job's environment). The working directory is entered after the
privileges are dropped, so a job cannot start inside a directory its user could not enter.
The wrapper starts in a new session (its own process group, no controlling terminal), so it
outlives a daemon restart and a Ctrl-C meant for the daemon never reaches it.

Pause and resume are SIGSTOP and SIGCONT to every process group of the wrapper's tree: the wrapper
starts CMD in a group of its own, so signalling the wrapper's group alone would stop only the
wrapper."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import psutil

from carbonwatch.scheduler.job import Status

if TYPE_CHECKING:
    from carbonwatch.scheduler.job import DeferredJob

# Settings the wrapper must take from the daemon, not from the submitter's environment; the
# tokens are dropped from the submitter's environment and never added.
DAEMON_ENV = ("CARBONWATCH_DAEMON_URL", "CARBONWATCH_TOKEN", "CARBONWATCH_ADMIN_TOKEN",
              "CARBONWATCH_DB")
# Enters the job's directory as the job's user (subprocess's own cwd= is entered before the
# uid changes), then becomes the wrapper (same pid: ``find`` and the pid record stay right).
_ENTER = (
    "import os, sys\n"
    "try:\n"
    "    os.chdir(sys.argv[1])\n"
    "except OSError as exc:\n"
    "    sys.exit(f'carbonwatch: cannot enter {sys.argv[1]!r} as uid {os.getuid()}: '\n"
    "             f'{exc.strerror}')\n"
    "os.execv(sys.executable, [sys.executable, '-m', 'carbonwatch', *sys.argv[2:]])\n"
)
# The deferred job's id, in the wrapper's environment: a daemon killed after starting the
# wrapper but before recording its pid finds it again by this (see ``find``).
MARKER_ENV = "CARBONWATCH_DEFERRED_ID"


def wrapper_argv(
    name: str, kind: str, command: Sequence[str], cwd: str | None = None
) -> list[str]:
    head = [sys.executable, "-c", _ENTER, cwd] if cwd else [sys.executable, "-m", "carbonwatch"]
    return [
        *head,
        "run",
        "--name",
        name,
        "--kind",
        kind,
        "--",
        *command,
    ]


def launch(
    name: str,
    kind: str,
    command: Sequence[str],
    *,
    cwd: str | None,
    env: Mapping[str, str],
    daemon_env: Mapping[str, str],
    log_path: Path,
    deferred_id: str,
    user: int | None = None,
    group: int | None = None,
    extra_groups: Sequence[int] | None = None,
    argv: Callable[..., list[str]] = wrapper_argv,
) -> subprocess.Popen[bytes]:
    """Start the wrapper; its output (and CMD's) goes to ``log_path`` (0600 in a 0700 folder:
    it keeps whatever the job printed). With ``user`` (a root daemon, another submitter) the
    child sets its groups, gid and uid before it runs anything. Raises OSError."""
    open_log = private_log(log_path, user, group)
    full_env = {k: v for k, v in env.items() if k not in DAEMON_ENV}
    full_env.update(daemon_env)
    full_env[MARKER_ENV] = deferred_id
    drop: dict[str, object] = {}
    if user is not None and user != os.geteuid():
        # setgroups (initgroups' list, or none), setgid, setuid: in that order, in the child
        drop = {"user": user, "group": group, "extra_groups": list(extra_groups or [])}
    with open_log as log:
        return subprocess.Popen(  # noqa: S603 - argv, never a shell
            argv(name, kind, command, cwd),
            env=full_env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            **drop,  # type: ignore[arg-type]
        )


def private_log(path: Path, user: int | None = None, group: int | None = None) -> Any:
    """``path`` opened for appending, 0600 (its folder 0700), owned by ``user`` when given so
    the job's own user owns what it printed."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(path.parent, 0o700)  # made by an older version at 0755
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    os.fchmod(fd, 0o600)
    if user is not None and user != os.geteuid() and os.geteuid() == 0:
        os.fchown(fd, user, group if group is not None else -1)
    return os.fdopen(fd, "ab")


def find(deferred_id: str) -> tuple[int, float] | None:
    """(pid, start time) of the live wrapper started for ``deferred_id``, if any. CMD inherits
    the marker too: the wrapper is the match whose parent is not one."""
    found: dict[int, psutil.Process] = {}
    for proc in psutil.process_iter():
        with contextlib.suppress(psutil.Error):
            if (
                proc.environ().get(MARKER_ENV) == deferred_id
                and proc.status() != psutil.STATUS_ZOMBIE
            ):
                found[proc.pid] = proc
    for proc in found.values():
        with contextlib.suppress(psutil.Error):
            if proc.ppid() not in found:
                return proc.pid, proc.create_time()
    return None


def created_s(pid: int) -> float | None:
    """The process's start time (to tell it from a later process given the same pid)."""
    try:
        return psutil.Process(pid).create_time()
    except psutil.Error:
        return None


def alive(pid: int, created: float | None) -> bool:
    """Whether ``pid`` is still the process started at ``created`` and has not exited."""
    try:
        proc = psutil.Process(pid)
        if created is not None and abs(proc.create_time() - created) > 0.5:
            return False
        return proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def groups(pid: int) -> list[int]:
    """Process groups of ``pid`` and its descendants, the wrapper's (``pid``'s) last."""
    found: list[int] = []
    try:
        procs = [*psutil.Process(pid).children(recursive=True), psutil.Process(pid)]
    except psutil.Error:
        return found
    for proc in procs:
        with contextlib.suppress(ProcessLookupError, PermissionError, psutil.Error):
            group = os.getpgid(proc.pid)
            if group in found:
                found.remove(group)
            found.append(group)
    return found


def signal_groups(group_ids: Sequence[int], signum: int) -> int:
    """Send ``signum`` to each process group; returns how many got it."""
    sent = 0
    for group in group_ids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(group, signum)
            sent += 1
    return sent


def pause(pid: int) -> list[int]:
    """SIGSTOP every group of the tree; returns the groups (resume them even if the wrapper
    is gone by then)."""
    found = groups(pid)
    signal_groups(found, signal.SIGSTOP)
    return found


def resume(pid: int, known: Sequence[int] = ()) -> int:
    return signal_groups(list(dict.fromkeys([*known, *groups(pid)])), signal.SIGCONT)


def terminate(pid: int) -> list[int]:
    """SIGTERM every group of the tree (then SIGCONT: a stopped process acts on SIGTERM only
    once continued); returns the groups, for a SIGKILL if they outlive the grace period."""
    found = groups(pid)
    signal_groups(found, signal.SIGTERM)
    signal_groups(found, signal.SIGCONT)
    return found


def kill(group_ids: Sequence[int]) -> None:
    signal_groups(group_ids, signal.SIGKILL)


def groups_of(uid: int, gid: int) -> list[int] | None:
    """Supplementary groups of ``uid`` (initgroups): None when it has no passwd entry (then it
    gets none)."""
    import pwd

    try:
        name = pwd.getpwuid(uid).pw_name
    except KeyError:
        return None
    return os.getgrouplist(name, gid)


@dataclass(frozen=True)
class Seen:
    """Where an untimed launcher's own system has a job (see :meth:`Launcher.look`)."""

    state: str  # the system's own word for it (Slurm's JobState), shown as ``slurm_state``
    status: Status  # what that means for the row: QUEUED (held), RUNNING, or a final status
    start_s: float | None = None
    end_s: float | None = None
    exit_code: int | None = None
    note: str | None = None  # why it ended, when the state alone does not say


class Launcher(Protocol):
    """How the jobs of one ``via`` start and end. :class:`~carbonwatch.scheduler.service.
    SchedulerService` holds one per ``via`` ("" :class:`LocalLauncher`, "slurm"
    :class:`~carbonwatch.scheduler.slurm.SlurmLauncher`), injected: a test gives a fake here.

    A *timed* launcher's jobs are started by the scheduler's own triggers at their planned start
    (it is then a :class:`ProcessLauncher`). An untimed one hands the job at submit to a system
    that holds it until its start: the service tells it when a re-plan moves the start or the
    job is cancelled, and asks it where the job is on each poll."""

    timed: bool
    # The measured ``jobs`` row of a job it started has this identity ('' none: found by name).
    def identity(self, job: DeferredJob) -> str: ...
    async def submit(self, job: DeferredJob, daemon_url: str) -> dict[str, Any]:
        """At submit, before the row is stored: the columns it adds. Raises InputError."""
    async def move(self, job: DeferredJob) -> None:
        """A re-plan moved the job's start. Raises CarbonwatchError when it stays."""
    async def cancel(self, job: DeferredJob) -> None:
        """Cancel it where it is held. Raises InputError."""
    async def look(self, job: DeferredJob) -> Seen | None:
        """Where the job is now; None once its system has forgotten it."""


@runtime_checkable
class ProcessLauncher(Launcher, Protocol):
    """A timed launcher: starts, watches, pauses and ends the job's process on this host."""

    def launch(
        self, name: str, kind: str, command: Sequence[str], *, cwd: str | None,
        env: Mapping[str, str], daemon_env: Mapping[str, str], log_path: Path, deferred_id: str,
        user: int | None = None, group: int | None = None,
        extra_groups: Sequence[int] | None = None,
    ) -> subprocess.Popen[bytes]: ...
    def find(self, deferred_id: str) -> tuple[int, float] | None: ...
    def created_s(self, pid: int) -> float | None: ...
    def alive(self, pid: int, created: float | None) -> bool: ...
    def pause(self, pid: int) -> list[int]: ...
    def resume(self, pid: int, known: Sequence[int] = ()) -> int: ...
    def terminate(self, pid: int) -> list[int]: ...
    def kill(self, group_ids: Sequence[int]) -> None: ...


class LocalLauncher:
    """The daemon's own launcher: the wrapper (``wrapper_argv``) in a new session on this host,
    signalled by process group. ``argv`` turns (name, kind, command, cwd) into what is run.
    Timed: nothing happens outside this host until the scheduler's trigger launches it."""

    timed = True

    def __init__(self, argv: Callable[..., list[str]] = wrapper_argv) -> None:
        self.argv = argv

    def identity(self, job: DeferredJob) -> str:
        return ""  # the wrapper's record is found by name, command and start time

    async def submit(self, job: DeferredJob, daemon_url: str) -> dict[str, Any]:
        return {}

    async def move(self, job: DeferredJob) -> None:
        return None  # the service re-arms its triggers

    async def cancel(self, job: DeferredJob) -> None:
        return None  # the service terminates the process it started, if any

    async def look(self, job: DeferredJob) -> Seen | None:
        raise TypeError("a timed launcher's jobs are watched as processes, not looked up")

    def launch(
        self, name: str, kind: str, command: Sequence[str], *, cwd: str | None,
        env: Mapping[str, str], daemon_env: Mapping[str, str], log_path: Path, deferred_id: str,
        user: int | None = None, group: int | None = None,
        extra_groups: Sequence[int] | None = None,
    ) -> subprocess.Popen[bytes]:
        return launch(name, kind, command, cwd=cwd, env=env, daemon_env=daemon_env,
                      log_path=log_path, deferred_id=deferred_id, user=user, group=group,
                      extra_groups=extra_groups, argv=self.argv)

    find = staticmethod(find)
    created_s = staticmethod(created_s)
    alive = staticmethod(alive)
    pause = staticmethod(pause)
    resume = staticmethod(resume)
    terminate = staticmethod(terminate)
    kill = staticmethod(kill)
