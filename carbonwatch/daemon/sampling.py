"""The sampling thread: drives the Sampler on its cadence, flushes to the writer, ends jobs.

A thread rather than an asyncio task because collector reads block (an NVML energy-counter read
takes ~4 ms, eight GPUs ~32 ms a second): on the event loop they would delay every request. All
collector calls happen on this one thread, so collectors need no locking; requests that must touch
them (ending a job closes the open intervals first) are queued here with :meth:`request`.
"""

from __future__ import annotations

import dataclasses
import logging
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, TypeVar

from carbonwatch.clock import Clock, SteadyClock
from carbonwatch.collectors.base import Collector
from carbonwatch.daemon import storeops
from carbonwatch.daemon.flush import Flush, merge_flushes
from carbonwatch.daemon.metrics import MetricTotals
from carbonwatch.daemon.rawlog import RawCallLog
from carbonwatch.daemon.state import DaemonState
from carbonwatch.daemon.writer import Writer
from carbonwatch.model import DeviceInfo, EnergyInterval
from carbonwatch.sampler import Sampler

log = logging.getLogger(__name__)
T = TypeVar("T")
_STOP = object()
STEP_TOLERANCE_S = 0.5
# Distinct minutes of energy kept in memory while the store refuses writes; older are dropped.
MAX_UNWRITTEN_MINUTES = 360


class WallTimeLabels:
    """A collector measuring on a :class:`SteadyClock`, its intervals labelled in wall time.

    Durations (and so modelled energy, RAM x seconds) come from the steady clock; the interval
    times recorded (minute rows, the intensity looked up, overlap with call spans, which clients
    stamp with the wall clock) are the wall clock's. After a step the labels jump with the wall
    clock, and nothing is invented or lost."""

    def __init__(self, inner: Collector, steady: SteadyClock) -> None:
        self.inner = inner
        self.steady = steady

    def devices(self) -> list[DeviceInfo]:
        return self.inner.devices()

    @property
    def polls(self) -> bool:
        return self.inner.polls

    def poll(self, now_s: float) -> None:
        self.inner.poll(now_s)

    def collect(self, now_s: float) -> list[EnergyInterval]:
        intervals = self.inner.collect(now_s)
        offset_s = self.steady.offset_s()
        # Below half a second the two clocks differ by read jitter (and tiny NTP steps): left
        # alone, so that consecutive intervals meet exactly.
        if not intervals or abs(offset_s) < STEP_TOLERANCE_S:
            return intervals
        return [dataclasses.replace(
            iv, start_s=iv.start_s + offset_s, end_s=iv.end_s + offset_s,
            segments=tuple((t + offset_s, e) for t, e in iv.segments),
        ) for iv in intervals]

    def close(self) -> None:
        self.inner.close()


class SamplingLoop:
    """``clock`` is the wall clock of the record; ``steady`` (default: ``clock``, right for a
    replay, whose clock never steps) paces the sampler: see :class:`WallTimeLabels`."""

    def __init__(
        self,
        *,
        sampler: Sampler,
        state: DaemonState,
        writer: Writer,
        totals: MetricTotals,
        clock: Clock,
        steady: Clock | None = None,
        speed: float = 1.0,
        end_s: float | None = None,
        flush_every_s: float = 1.0,
        housekeeping_every_s: float = 5.0,
        raw_log_max: int = 100_000,
        resume_key: str = "sampled_until_s",
        max_unwritten_minutes: int = MAX_UNWRITTEN_MINUTES,
    ) -> None:
        self.sampler = sampler
        self.state = state
        self.writer = writer
        self.totals = totals
        self.clock = clock
        self.steady = steady or clock
        self.speed = speed
        self.end_s = end_s  # replay: where the trace ends and sampling stops
        self.flush_every_s = flush_every_s
        self.housekeeping_every_s = housekeeping_every_s
        self.raw_log = RawCallLog(writer, raw_log_max)
        self.resume_key = resume_key  # meta key: where the written energy ends (replay resumes)
        self.sampling = True
        self.last_tick_mono: float | None = None  # real time of the loop's last turn
        self._queue: queue.Queue[Any] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="carbonwatch-sampler", daemon=True)
        self._done: Future[None] = Future()
        # What failed to write, merged into one flush, with the ``also`` of each failed flush in
        # order: written by the next flush.
        self._unwritten: list[tuple[Flush, list[Callable[[Any], None]]]] = []
        self.max_unwritten_minutes = max_unwritten_minutes
        self._retry_lock = threading.Lock()

    # --- control (other threads) ---------------------------------------------------------------

    def start(self) -> None:
        self.last_tick_mono = time.monotonic()  # starting counts as a turn: not stuck yet
        self._thread.start()

    def stop(self, timeout_s: float | None = None, report_every_s: float = 30.0) -> None:
        """Final flush (sampler, call ledger, minute rows) written before this returns: however
        long it takes unless ``timeout_s`` is given (a shutdown once gave up after 30 s with
        thousands of jobs' ends unwritten). A line every ``report_every_s`` says it is busy."""
        if not self._thread.is_alive():
            return
        self._queue.put(_STOP)
        waited_s = 0.0
        while True:
            step_s = report_every_s if timeout_s is None else min(report_every_s,
                                                                 timeout_s - waited_s)
            try:
                self._done.result(timeout=max(step_s, 0.0))
                return
            except TimeoutError:
                waited_s += step_s
                if timeout_s is not None and waited_s >= timeout_s:
                    raise
                log.warning("shutting down: the final flush is still writing (%.0f s so far)",
                            waited_s)

    def request(self, fn: Callable[[], T]) -> Future[T]:
        """Run ``fn`` on the sampling thread; its result (or exception) comes in the future."""
        future: Future[T] = Future()
        self._queue.put((fn, future))
        return future

    def alive(self) -> bool:
        return self._thread.is_alive()

    # --- the loop ------------------------------------------------------------------------------

    def _run(self) -> None:
        try:
            self._loop()
            self.close_sampling()
            self.flush(final=True).result()
        except BaseException as exc:  # noqa: BLE001 - reported through stop()
            log.exception("sampling loop failed")
            self._done.set_exception(exc)
        else:
            self._done.set_result(None)

    def _loop(self) -> None:
        start = getattr(self.clock, "start", None)
        if start is not None:
            start()  # a replay clock stands still until sampling begins
        next_due_s = self.sampler.step(self.steady.time())
        mono = time.monotonic()
        next_flush, next_housekeeping = mono + self.flush_every_s, mono + self.housekeeping_every_s
        while True:
            mono = time.monotonic()
            self.last_tick_mono = mono
            wait_s = min(next_flush, next_housekeeping) - mono
            if self.sampling:
                wait_s = min(wait_s, (next_due_s - self.steady.time()) / self.speed)
            try:
                item = self._queue.get(timeout=max(0.0, wait_s))
            except queue.Empty:
                item = None
            if item is _STOP:
                return
            if item is not None:
                fn, future = item
                try:
                    future.set_result(fn())
                except Exception as exc:  # noqa: BLE001 - the requester gets it
                    future.set_exception(exc)
            if self.sampling:
                now_s = self.steady.time()
                if self.end_s is not None and now_s >= self.end_s:
                    self.close_sampling()
                    log.info("replay reached the end of the trace; sampling stopped, serving on")
                elif now_s >= next_due_s:
                    next_due_s = self.sampler.step(now_s)
            mono = time.monotonic()
            if mono >= next_flush:
                self.flush()
                next_flush = mono + self.flush_every_s
            if mono >= next_housekeeping:
                self._end_vanished()
                next_housekeeping = mono + self.housekeeping_every_s

    def close_sampling(self) -> None:
        """Close every open interval (at the trace's end for a replay) and stop sampling."""
        if not self.sampling:
            return
        now_s = self.steady.time()
        if self.end_s is not None:
            now_s = min(now_s, self.end_s)
        self.sampler.flush(now_s)
        self.sampling = False

    # --- writing -------------------------------------------------------------------------------

    def flush(
        self, *, final: bool = False, also: Callable[[Any], None] | None = None
    ) -> Future[None]:
        """Queue the minute rows and settled calls (and ``also(store)``) as one write.

        A write that fails (disk full, database locked past the busy timeout) is kept and
        written again, before its own rows, by the next flush: measured energy and settled
        calls wait in memory for the store rather than being dropped."""
        work = self.state.collect_flush(self.clock.time(), final=final,
                                        log_calls=self.raw_log.keep > 0)
        with self._retry_lock:
            retrying = bool(self._unwritten)
        if work.empty() and also is None and not retrying:
            self.raw_log.add(())  # a raw log that used its share of the writer resumes
            done: Future[None] = Future()
            done.set_result(None)  # nothing new: an idle node does not write every few seconds
            return done
        taken: list[tuple[Flush, list[Callable[[Any], None]]]] = []

        def task(store: Any) -> None:
            with self._retry_lock:  # what failed before, oldest first
                taken.extend(self._unwritten)
                self._unwritten.clear()
            for old, old_also in taken:
                old.write(store, self.resume_key)
                for fn in old_also:
                    fn(store)
            work.write(store, self.resume_key)
            if also is not None:
                also(store)

        future = self.writer.submit(task)
        # Runs before the next flush is queued: on the writer thread as the write ends, or here
        # if it has already ended (every flush is queued from this thread).
        future.add_done_callback(
            lambda f: self._published(f, [*taken, (work, [also] if also else [])])
        )
        self.raw_log.add(work.call_rows, final=final)  # best effort, when the writer is idle
        return future

    def _published(
        self, future: Future[None], works: list[tuple[Flush, list[Callable[[Any], None]]]]
    ) -> None:
        if future.exception() is None:
            for work, _ in works:
                work.published(self.totals)
            if len(works) > 1:
                log.warning("store writable again: wrote what was kept since it failed")
            return
        with self._retry_lock:
            works = [*works, *self._unwritten]
            # Merged, so that a store that never recovers costs memory per minute waiting, not
            # per flush; past the cap the oldest minutes are dropped.
            merged, dropped = merge_flushes([w for w, _ in works], self.max_unwritten_minutes)
            self._unwritten[:] = [(merged, [fn for _, fns in works for fn in fns])]
        if dropped:
            self.totals.add_rows_dropped(dropped)
            log.error("store still refuses writes: dropped %d minute rows older than the last "
                      "%d minutes", dropped, self.max_unwritten_minutes)
        log.error("flush not written (%s); %d minute rows kept for the next flush",
                  future.exception(), len(merged.energy_rows))

    def end_job(self, job_id: str, status: str, exit_code: int | None) -> Future[None]:
        """On the sampling thread: close the open intervals so the job's energy up to now is
        counted, stop attributing to it, and write its rows and its end in one transaction."""
        future = self.end_jobs([(job_id, status, exit_code)])
        if future is None:
            raise KeyError(job_id)
        return future

    def end_jobs(
        self, ends: list[tuple[str, str, int | None]], ago_s: dict[str, float] | None = None
    ) -> Future[None] | None:
        """``end_job`` for many jobs at once: one close of the intervals, one flush, one
        transaction however many end (None when none of them was running). ``ago_s``: how long
        ago a job ended, where that is before now (its processes were found gone earlier)."""
        if self.sampling:
            now_s = self.steady.time()
            if self.end_s is not None:
                now_s = min(now_s, self.end_s)
            self.sampler.flush(now_s)
        now_s = self.clock.time()
        ago_s = ago_s or {}
        done: list[tuple[str, str, int | None, set[int], float]] = []
        with self.state.lock:
            for job_id, status, exit_code in ends:
                job = self.state.live_jobs.remove(job_id)
                if job is not None:
                    ended_s = max(now_s - ago_s.get(job_id, 0.0), job.started_s)
                    done.append((job_id, status, exit_code, job.all_pids(), ended_s))
        if not done:
            return None

        def also(store: Any) -> None:
            for job_id, status, exit_code, pids, ended_s in done:
                storeops.end_job(store.conn, job_id, status=status, ended_s=ended_s,
                                 exit_code=exit_code, pids=pids)

        future = self.flush(also=also)
        # Once their last energy is published (that callback came first), the jobs' series may
        # be folded after the retention; a failed write is retried with the ends, and energy
        # published after a fold joins the fold.
        ends_s = [(job_id, ended_s) for job_id, *_, ended_s in done]
        future.add_done_callback(lambda f: [self.totals.job_ended(j, e) for j, e in ends_s])
        return future

    def _end_vanished(self) -> None:
        # Two housekeeping turns (10 s by default) for a wrapper to report the end it saw.
        grace_s = 2 * self.housekeeping_every_s
        with self.state.lock:
            found = self.state.live_jobs.vanished(time.monotonic(), grace_s)
        if not found:
            return
        # A service registered by its first call ends when its process does; a job that
        # registered itself should have said so: its end was not seen.
        ends = [(job.id, "finished" if job.auto else "lost", None) for job, _ in found]
        if len(found) <= 10:
            for (job, _), (_, status, _) in zip(found, ends, strict=True):
                log.info("job %s (%s): its processes are gone; marking it %s",
                         job.id, job.name, status)
        else:
            log.info("%d jobs' processes are gone; marking them ended in one write", len(found))
        # Ended when their processes were first found gone, not after the grace.
        self.end_jobs(ends, {job.id: gone_for_s for job, gone_for_s in found})
