"""The daemon's store files: kept private, and read (read-only) off the event loop."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

from carbonwatch.store import Store

T = TypeVar("T")


class Reader:
    """Read-only store access on one worker thread, so queries never block the event loop."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._store: Store | None = None
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="carbonwatch-reader")

    def _call(self, fn: Callable[[Store], T]) -> T:
        if self._store is None:
            self._store = Store(self._path, read_only=True)
        return fn(self._store)

    async def run(self, fn: Callable[[Store], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._pool, self._call, fn)

    def close(self) -> None:
        def shut() -> None:
            if self._store is not None:
                self._store.close()

        self._pool.submit(shut).result()
        self._pool.shutdown()


def private_store(path: Path) -> list[str]:
    """The store holds command lines and deferred jobs' environments: its files 0600, its
    folder 0700 when the daemon makes it (a folder it did not make, say /tmp, is left as it
    is, with a note at start-up when other users may enter it). The notes to show."""
    folder = path.parent
    try:
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        for file in (path, path.with_name(path.name + "-wal"),
                     path.with_name(path.name + "-shm")):
            if file.exists() and file.stat().st_uid == os.geteuid():
                os.chmod(file, 0o600)
        loose = folder.stat().st_mode & 0o077
    except OSError:
        return []  # the writer's open reports what is wrong with the path
    if not loose:
        return []
    return [f"the store's folder {folder} is open to other users (mode "
            f"{folder.stat().st_mode & 0o777:o}); it keeps job command lines and the "
            f"environments of queued jobs: chmod 700 {folder}"]
