"""The optional raw call log: settled calls with their energy, newest ``keep`` rows only.

Written by the writer only when it has nothing else to do, in small transactions, so that at
100k calls/s it never delays an acknowledgement. Under sustained load it sheds its oldest rows
before writing them; that is exactly what the bound would delete once written anyway."""

from __future__ import annotations

import collections
import threading
from collections.abc import Iterable
from typing import Any

from carbonwatch.daemon import storeops
from carbonwatch.daemon.writer import Writer
from carbonwatch.store import Store

CHUNK = 2000  # rows per transaction


class RawCallLog:
    def __init__(self, writer: Writer, keep: int) -> None:
        self.writer = writer
        self.keep = keep
        self._rows: collections.deque[tuple[Any, ...]] = collections.deque(maxlen=max(keep, 1))
        self._lock = threading.Lock()
        self._scheduled = False

    def add(self, rows: Iterable[tuple[Any, ...]]) -> None:
        if self.keep <= 0:
            return
        with self._lock:
            self._rows.extend(rows)  # maxlen: the oldest fall out first
            if self._rows and not self._scheduled:
                self._scheduled = True
                self.writer.submit_idle(self._write)

    def _write(self, store: Store) -> None:
        with self._lock:
            chunk = [self._rows.popleft() for _ in range(min(CHUNK, len(self._rows)))]
            if self._rows:
                self.writer.submit_idle(self._write)
            else:
                self._scheduled = False
        storeops.log_calls(store.conn, chunk, self.keep)
