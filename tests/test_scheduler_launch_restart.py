"""A daemon killed between starting a deferred job's wrapper and storing its pid: the restarted
scheduler adopts the wrapper it finds instead of launching the job a second time.

The kill is simulated: the row is left as the killed daemon left it (``launching``), with or
without a live process carrying the job's marker, and a fresh SchedulerService starts on the
store. The "wrapper" is the job's command itself (an injected ``LocalLauncher`` whose argv is the
command), so what a launch does is visible as a line in a file."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from carbonwatch.config import Settings
from carbonwatch.scheduler import launcher
from carbonwatch.scheduler.service import SchedulerService
from carbonwatch.store import Store, deferred


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    with Store(tmp_path / "cw.db") as s:
        yield s


def _service(store: Store, tmp_path: Path) -> SchedulerService:
    async def read(fn: Callable[[Store], Any]) -> Any:
        return fn(store)

    async def write(fn: Callable[[Store], Any]) -> Any:
        with store.transaction():
            return fn(store)

    settings = Settings(db=str(tmp_path / "cw.db"), port=0).validate()
    # The launcher seam: the job's command runs in place of the wrapper.
    command_itself = launcher.LocalLauncher(
        argv=lambda name, kind, command, cwd=None: list(command)
    )
    return SchedulerService(
        settings, read=read, write=write, poll_s=0.05, launchers={"": command_itself}
    )


def _launching_row(store: Store, tmp_path: Path, command: list[str]) -> str:
    now_s = time.time()
    row = {
        "id": "abc123",
        "name": "nightly",
        "command": command,
        "env": {},
        "submitted_s": now_s - 60,
        "deadline_s": now_s + 3600,
        "duration_s": 10.0,
        "status": "launching",
        "started_s": now_s - 1,
        "plan": [[now_s - 1, now_s + 9]],
        "log_path": str(tmp_path / "abc123.log"),
    }
    with store.transaction():
        deferred.insert(store.conn, row)
    return row["id"]


def _restart(
    service: SchedulerService, settle_s: float, until: Callable[[], bool] | None = None
) -> None:
    """Start the scheduler on the store, wait ``settle_s`` (time for a wrong second launch to
    show), and with ``until`` also until it holds (a real process started and ended: never a
    fixed time, which a busy machine can overrun), then stop."""

    async def main() -> None:
        await service.start("http://127.0.0.1:9")
        await asyncio.sleep(settle_s)
        deadline = time.monotonic() + 60.0
        while until is not None and not until():
            assert time.monotonic() < deadline, "the restarted scheduler never got there"
            await asyncio.sleep(0.05)
        await service.stop()

    asyncio.run(main())


def test_a_restart_adopts_the_wrapper_a_killed_daemon_started(
    store, tmp_path
):
    ran = tmp_path / "ran"
    job_id = _launching_row(
        store, tmp_path, [sys.executable, "-c", f"open({str(ran)!r}, 'a').write('x')"]
    )
    # The wrapper the killed daemon started: alive, carrying the job's marker.
    wrapper = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(30)"],
        env={**os.environ, launcher.MARKER_ENV: job_id},
    )
    try:
        _restart(_service(store, tmp_path), settle_s=0.5)
        row = deferred.get(store.conn, job_id)
        assert row["status"] == "running"
        assert row["wrapper_pid"] == wrapper.pid
        assert row["wrapper_created_s"] == pytest.approx(psutil.Process(wrapper.pid).create_time())
        assert row["runs"][0][1] is None
        assert not ran.exists(), "the job was launched a second time"
    finally:
        wrapper.kill()
        wrapper.wait()


def test_a_restart_launches_once_a_job_whose_wrapper_never_started(
    store, tmp_path
):
    ran = tmp_path / "ran"
    job_id = _launching_row(
        store, tmp_path, [sys.executable, "-c", f"open({str(ran)!r}, 'a').write('x')"]
    )
    _restart(
        _service(store, tmp_path), settle_s=0.5,
        until=lambda: deferred.get(store.conn, job_id)["status"] in ("done", "failed"),
    )
    assert ran.read_text() == "x"
    row = deferred.get(store.conn, job_id)
    assert row["status"] == "done"
    assert row["wrapper_pid"]
