"""The optional raw call log: settled calls with their energy, newest ``keep`` rows only.

Written by the writer only when it has nothing else to do, in small transactions, so that at
100k calls/s it never delays an acknowledgement, and for at most ``SHARE`` of the writer's time.
Under sustained load it sheds its oldest rows before writing them; that is exactly what the
bound would delete once written anyway. So the table always holds the newest rows written (at
most ``keep``), and at high rates a sample of the calls: every call of a quiet service, a part of
each second's calls of a busy one.

The calls come as the CallLedger emitted them (:class:`RawBlock`: arrays and the spans), and a
row tuple is made only for a call that is written: at 300k calls/s most are shed unwritten, and
making their rows was once a fifth of the daemon's CPU."""

from __future__ import annotations

import collections
import json
import threading
import time
from collections.abc import Iterable, Mapping
from operator import attrgetter
from typing import Any

from carbonwatch.calls.chunk import Emitted
from carbonwatch.daemon import storeops
from carbonwatch.daemon.writer import Writer
from carbonwatch.store import Store

CHUNK = 1000  # rows per transaction: 15-30 ms of the writer here, which a commit may wait for
# The raw log may take at most this share of the writer thread's time in each WINDOW_S: past it,
# it waits for the next window (the next flush) and sheds what the bound would delete anyway.
# Writing a row costs about as much as settling one call (an insert, an index entry and, once
# ``keep`` newer rows are in, a delete): unbounded, the log once took a fifth of the daemon's
# CPU at 200k calls/s, all of it on rows deleted a second later.
SHARE = 0.25
WINDOW_S = 1.0
_FIELDS = attrgetter("model", "pid", "start_s", "end_s", "tags", "weight", "tokens_in",
                     "tokens_out")


class RawBlock:
    """One completed batch's settled calls of one consumer, not yet written (rows from
    ``offset`` on)."""

    __slots__ = ("batch_id", "part", "offset")

    def __init__(self, batch_id: int, part: Emitted) -> None:
        self.batch_id = batch_id
        self.part = part  # its ``spans`` are set (the daemon's ledger keeps them)
        self.offset = 0

    def __len__(self) -> int:
        return len(self.part) - self.offset

    def rows(self, lo: int, hi: int) -> list[tuple[Any, ...]]:
        """Rows ``lo .. hi - 1`` of the block, as ``storeops.log_calls`` takes them."""
        assert self.part.spans is not None
        spans = self.part.spans[lo:hi].tolist()
        energy = self.part.energy_j[lo:hi].tolist()
        batch_id = self.batch_id
        out = []
        last_tags: object = None
        last_text = "{}"
        for (model, pid, start_s, end_s, tags, weight, t_in, t_out), energy_j in zip(
            map(_FIELDS, spans), energy, strict=True
        ):
            if tags is not last_tags:  # a group's calls share one tags object
                last_tags, last_text = tags, tag_json(tags) if tags else "{}"
            out.append((batch_id, model, pid, start_s, end_s, last_text, energy_j, weight, t_in,
                        t_out))
        return out


class RawCallLog:
    def __init__(self, writer: Writer, keep: int) -> None:
        self.writer = writer
        self.keep = keep
        self._blocks: collections.deque[RawBlock] = collections.deque()
        self._rows = 0  # rows in _blocks not yet written, at most ``keep``
        self._lock = threading.Lock()
        self._scheduled = False
        self._window_start = time.monotonic()
        self._spent_s = 0.0  # writer time spent in the current window
        self._final = False  # shutting down: everything left is written, whatever the share

    def _budget_left(self) -> bool:
        if self._final:
            return True
        now = time.monotonic()
        if now - self._window_start >= WINDOW_S:
            self._window_start, self._spent_s = now, 0.0
        return self._spent_s < SHARE * WINDOW_S

    def add(self, blocks: Iterable[RawBlock], *, final: bool = False) -> None:
        """Queue settled calls (the sampling loop calls this at every flush, ``()`` if none:
        a log that used its share of a window resumes then). ``final``: the daemon's last
        flush; what is left is written before the writer closes."""
        if self.keep <= 0:
            return
        with self._lock:
            self._final = self._final or final
            for block in blocks:
                if len(block):
                    self._blocks.append(block)
                    self._rows += len(block)
            # The oldest fall out first: whole blocks, then the oldest rows of the oldest.
            while self._blocks and self._rows - len(self._blocks[0]) >= self.keep:
                self._rows -= len(self._blocks.popleft())
            if self._rows > self.keep:
                self._blocks[0].offset += self._rows - self.keep
                self._rows = self.keep
            if self._rows and not self._scheduled and self._budget_left():
                self._scheduled = True
                self.writer.submit_idle(self._write)

    def _write(self, store: Store) -> None:
        taken: list[tuple[RawBlock, int, int]] = []
        with self._lock:
            room = CHUNK
            while room and self._blocks:
                block = self._blocks[0]
                n = min(room, len(block))
                taken.append((block, block.offset, block.offset + n))
                block.offset += n
                room -= n
                self._rows -= n
                if not len(block):
                    self._blocks.popleft()
        # The blocks' arrays never change once emitted: the rows are made outside the lock.
        started = time.monotonic()
        try:
            rows = [row for block, lo, hi in taken for row in block.rows(lo, hi)]
            storeops.log_calls(store.conn, rows, self.keep)
        finally:
            with self._lock:
                self._spent_s += time.monotonic() - started
                self._scheduled = bool(self._blocks) and self._budget_left()
                if self._scheduled:
                    self.writer.submit_idle(self._write)


_TAG_JSON: dict[str, str] = {}


def tag_json(tags: Mapping[str, Any]) -> str:
    """Tags as JSON for the raw log, cached: services repeat a few tag sets (batch sizes,
    routes) millions of times. Bounded, so unique tags (request ids) cannot grow it forever.
    Keyed by repr, which (unlike the items) tells True, 1 and 1.0 apart."""
    key = repr(tags)
    text = _TAG_JSON.get(key)
    if text is None:
        text = json.dumps(dict(tags))
        if len(_TAG_JSON) >= 4096:
            _TAG_JSON.clear()
        _TAG_JSON[key] = text
    return text
