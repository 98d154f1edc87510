"""The single SQLite writer: one thread owns the writable :class:`~carbonwatch.store.Store`; every
write is a task queued to it and runs in its own transaction (in the manner of datasette's
``database.py``). Readers open their own read-only connections, which WAL lets run beside it.

One writer means no ``database is locked`` between the HTTP handlers and the sampler, and a task's
statements commit or roll back together: an acknowledged call batch is a committed one."""

from __future__ import annotations

import asyncio
import collections
import logging
import queue
import sqlite3
import threading
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path
from typing import Any, TypeVar

from carbonwatch.errors import StoreError
from carbonwatch.store import Store

log = logging.getLogger(__name__)

T = TypeVar("T")
Task = Callable[[Store], Any]

_STOP = object()
_IDLE = object()  # a token: run one idle task if no regular task is waiting


class Writer:
    """:meth:`start`, then :meth:`submit` tasks (each returns a Future); :meth:`close` drains."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._queue: queue.Queue[Any] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="carbonwatch-writer", daemon=True)
        self._opened: Future[None] = Future()
        self._idle: collections.deque[Callable[[Store], Any]] = collections.deque()
        # At most one _IDLE token is ever queued. With one per idle task, two tokens found each
        # other in the queue ("regular work first") and were put back forever: the writer thread
        # spun at 50-90 % of a core and ran no idle task (seen by bench_daemon_rest.py).
        self._idle_lock = threading.Lock()
        self._idle_queued = False
        self.store: Store | None = None  # touched only on the writer thread after start()

    def start(self) -> None:
        """Open the store on the writer thread; raises StoreError if it cannot be opened."""
        self._thread.start()
        self._opened.result()

    def submit_idle(self, task: Callable[[Store], Any]) -> None:
        """Run ``task`` (in its own transaction) when no regular task is waiting: for optional,
        best-effort writes that must never delay an acknowledgement. Errors are logged."""
        with self._idle_lock:
            self._idle.append(task)
            if self._idle_queued:
                return
            self._idle_queued = True
        self._queue.put(_IDLE)

    def submit(self, task: Callable[[Store], T]) -> Future[T]:
        future: Future[T] = Future()
        self._queue.put((task, future))
        return future

    async def run(self, task: Callable[[Store], T]) -> T:
        """Submit and await (for coroutines on the event loop)."""
        return await asyncio.wrap_future(self.submit(task))

    def call(self, task: Callable[[Store], T]) -> T:
        """Submit and wait (for threads other than the writer's)."""
        return self.submit(task).result()

    def close(self) -> None:
        if self._thread.is_alive():
            self._queue.put(_STOP)
            self._thread.join()

    def _run(self) -> None:
        try:
            self.store = Store(self.path)
        except StoreError as exc:
            self._opened.set_exception(exc)
            return
        self._opened.set_result(None)
        try:
            while True:
                item = self._queue.get()
                if item is _STOP:
                    break
                if item is _IDLE:
                    # The only token: anything else queued is regular work (or _STOP), which
                    # goes first; the token comes back behind it.
                    if self._queue.empty() and self._idle:
                        self._run_idle(self._idle.popleft())
                    with self._idle_lock:
                        self._idle_queued = bool(self._idle)
                        if self._idle_queued:
                            self._queue.put(_IDLE)
                    continue
                task, future = item
                if not future.set_running_or_notify_cancel():
                    continue
                try:
                    result = self._transaction(task)
                except BaseException as exc:  # noqa: BLE001 - the caller gets it via the future
                    future.set_exception(exc)
                else:
                    future.set_result(result)
            while self._idle:  # closing: finish the best-effort writes too
                self._run_idle(self._idle.popleft())
        finally:
            self.store.close()

    def _transaction(self, task: Callable[[Store], T]) -> T:
        assert self.store is not None
        conn = self.store.conn
        try:
            conn.execute("BEGIN IMMEDIATE")
            result = task(self.store)
            conn.execute("COMMIT")
        except BaseException as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            if isinstance(exc, sqlite3.Error):
                log.error("store write failed: %s", exc)
                raise StoreError(f"store write failed: {exc}") from exc
            raise
        return result

    def _run_idle(self, task: Callable[[Store], Any]) -> None:
        try:
            self._transaction(task)
        except Exception:  # noqa: BLE001 - best effort by contract
            log.exception("best-effort store write failed")
