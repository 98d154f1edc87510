"""Read-only store access for the daemon's handlers, off the event loop."""

from __future__ import annotations

import asyncio
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
