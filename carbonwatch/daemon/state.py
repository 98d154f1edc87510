"""The daemon's shared in-memory state, between the HTTP handlers (event loop thread) and the
sampling thread, behind one lock held only for in-memory work (never across I/O).

What lives here: the running jobs (``live_jobs``), the
:class:`~carbonwatch.ledger.EnergyLedger` (minute rows not yet written), the
:class:`~carbonwatch.calls.ledger.CallLedger` (spans and service intervals not yet split; only the
sampling thread touches it, so its settle runs without the lock, and accepted batches reach it
through a hand-off list), and the progress of each acknowledged call batch. A batch's settled
calls are held until the whole batch is settled and then written with ``pending`` cleared in one
transaction, so after a crash a batch is either fully rolled up or fully re-read: never counted
twice, never lost.
"""

from __future__ import annotations

import math
import threading
import uuid
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from operator import attrgetter
from typing import Any, Protocol

import msgspec

from carbonwatch.calls.chunk import Emitted, minute_rollup
from carbonwatch.calls.ledger import NVML_POWER_LAG_S, CallLedger, CallSpan
from carbonwatch.daemon.flush import Flush
from carbonwatch.daemon.live_jobs import LiveJob, LiveJobs
from carbonwatch.daemon.metrics import OTHER, LabelCap
from carbonwatch.daemon.rawlog import RawBlock
from carbonwatch.ledger import EnergyLedger
from carbonwatch.pricing import Pricing
from carbonwatch.sampler import AttributedInterval
from carbonwatch.scrape import ScrapeLedger

_PID, _MODEL = attrgetter("pid"), attrgetter("model")
_FEW_PIDS = 16  # a batch naming at most this many pids (and no call without one) takes a fast path
UNATTRIBUTED = "unattributed:"  # consumer of calls with no pid and no unique service for the model
SETTLE_REAL_S = 5.0  # how late (real seconds) spans may arrive and still get their energy
HORIZON_REAL_S = 600.0  # a call open longer than this is settled with what it has
# A new service's first intervals wait up to this long for its power fit to be tried, so its
# first calls are not split by time alone (see CallLedger warmup_s).
WARMUP_REAL_S = 10.0


def fold_models(spans: list[CallSpan], models: LabelCap) -> list[CallSpan]:
    """The spans with each model name past the cap renamed ``other`` (and counted), so neither
    /metrics nor the per-minute rollups grow by a series per name a client makes up."""
    admit = models.admit
    renamed = {m for m in set(map(_MODEL, spans)) if admit(m, 0) != m}  # hot: one C pass
    if not renamed:
        return spans
    out = [msgspec.structs.replace(s, model=OTHER) if s.model in renamed else s for s in spans]
    models.count_refused(sum(1 for s in spans if s.model in renamed))
    return out


class Watcher(Protocol):
    """What the state needs of a process scanner (collectors.processes.ProcessScanner)."""

    def watch(self, root_pid: int) -> None: ...

    def unwatch(self, root_pid: int) -> None: ...

    def tree(self, root_pid: int) -> set[int]: ...

    def in_tree(self, root_pid: int, pid: int) -> bool: ...


class _Owners(dict):  # type: ignore[type-arg]
    """pid -> consumer, as the sampler's owners. The process scanner follows the jobs' trees
    itself and finds a new child at this tick's scan, which runs after owners() and before the CPU
    shares are attributed: a pid not in the map is looked up in the watched trees then."""

    def __init__(self, scanner: Watcher) -> None:
        super().__init__()
        self.scanner = scanner
        self.roots: list[tuple[int, str]] = []  # (watched root, consumer)

    def get(self, key: Any, default: Any = None) -> Any:
        if key in self:
            return self[key]
        if isinstance(key, int):
            for root, consumer in self.roots:
                if self.scanner.in_tree(root, key):
                    return consumer
        return default


@dataclass
class DeviceStatus:
    last_end_s: float  # clock time the device's last interval closed
    power_w: float  # average power over that interval


class _Batch:
    """An acknowledged batch's settled calls, held until all of it is settled."""

    __slots__ = ("batch_id", "remaining", "settled")

    def __init__(self, batch_id: int, size: int) -> None:
        self.batch_id = batch_id
        self.remaining = size
        self.settled: list[Emitted] = []  # its calls as the CallLedger emitted them (arrays)


class DaemonState:
    def __init__(
        self, *, pricing: Pricing, live_jobs: LiveJobs, speed: float = 1.0,
        scanner: Watcher | None = None, new_id: Callable[[], str] = lambda: uuid.uuid4().hex[:12],
        pid_exists: Callable[[int], bool] | None = None, max_auto_jobs: int | None = None,
    ) -> None:
        self.lock = threading.Lock()
        self.pricing = pricing
        self.live_jobs = live_jobs
        self.ledger = EnergyLedger(pricing, live_jobs.phase_of)
        # Spans carry the clock's (trace) time: scale the real-time windows by the replay speed.
        self.calls = CallLedger(
            settle_s=SETTLE_REAL_S * speed, pue=pricing.pue, price_per_kwh=pricing.price_per_kwh,
            horizon_s=HORIZON_REAL_S * speed, power_lag_s=NVML_POWER_LAG_S,
            warmup_s=WARMUP_REAL_S * speed,
        )
        # Scraped inference servers (daemon/scraping.py): their energy split over their tokens.
        self.scraped = ScrapeLedger(settle_s=SETTLE_REAL_S * speed, pue=pricing.pue,
                                    price_per_kwh=pricing.price_per_kwh)
        self.devices: dict[str, DeviceStatus] = {}
        self.scanner = scanner
        self._watched: set[int] = set()  # root pids the scanner watches (sampling thread only)
        self.new_id = new_id
        # Batches with calls not yet settled, by id: the id is the calls' tag in the CallLedger,
        # which hands it back with each settled call (no per-call bookkeeping here).
        self._batches: dict[int, _Batch] = {}  # sampling thread only
        # Batches accepted (committed) but not yet in the CallLedger: (batch id, calls, spans by
        # consumer). The event loop appends, the sampling thread takes (see _take_accepted).
        self._accepted: list[tuple[int, int, Mapping[str, list[CallSpan]]]] = []
        self._pending_calls = 0
        self._next_batch_id = 1
        self._completed: list[_Batch] = []  # batches completed outside a flush (refused spans)
        # Live nodes: a call naming a pid with no process here is folded (see _resolve_one), and
        # at most ``max_auto_jobs`` services registered by their calls run at once.
        self.pid_exists = pid_exists
        self.max_auto_jobs = max_auto_jobs

    # --- the sampler's sink (sampling thread) ------------------------------------------------

    def on_interval(self, item: AttributedInterval) -> None:
        iv = item.interval
        with self.lock:
            self._take_accepted()
            self.ledger.add(item)
            for consumer, energy_j in item.parts.items():
                if self.scraped.watches(consumer):  # a scraped server: split by its tokens
                    self.scraped.add_interval(consumer, item, energy_j)
                    continue
                job = self.live_jobs.job_for_consumer(consumer)
                if job is not None and job.serves_calls:
                    self.calls.add_interval(consumer, item, energy_j)
            duration_s = iv.end_s - iv.start_s
            power_w = iv.energy_j / duration_s if duration_s > 0 else 0.0
            self.devices[iv.device_id] = DeviceStatus(iv.end_s, power_w)

    def owners(self) -> dict[int | str, str]:
        """The sampler's pid -> consumer map, process trees refreshed outside the lock.

        Runs on the sampling thread before each collect, so it is also where the process scanner
        (not thread-safe) learns which trees to report individually rather than as OTHER."""
        with self.lock:
            snapshot = self.live_jobs.owner_snapshot()
        # The scanner already follows every job's tree (it watches the roots): its members cost
        # nothing more. Jobs have trees only where there is a scanner (LiveJobs.track_trees).
        scanner = self.scanner
        out: dict[int | str, str] = _Owners(scanner) if scanner is not None else {}
        for consumer, pids, trees in snapshot:
            roots = set(pids)
            for tree in trees:
                assert isinstance(out, _Owners)
                tree.pids |= out.scanner.tree(tree.root_pid)
                pids |= tree.pids
                out.roots.append((tree.root_pid, consumer))
            for pid in pids:
                out[pid] = consumer
            if self.scanner is not None:
                for pid in roots - self._watched:
                    self.scanner.watch(pid)
                self._watched |= roots
        if self.scanner is not None:
            for pid in self._watched - out.keys():
                self.scanner.unwatch(pid)
            self._watched &= out.keys()
        return out

    # --- call batches (event loop thread) ----------------------------------------------------

    def set_next_batch_id(self, batch_id: int) -> None:
        self._next_batch_id = max(self._next_batch_id, batch_id)

    def resolve(
        self, spans: Sequence[CallSpan], now_s: float, known: Mapping[str, str] | None = None,
        folded: dict[str, int] | None = None,
    ) -> tuple[dict[str, list[CallSpan]], dict[str, str], list[LiveJob]]:
        """Group spans by consumer. A pid maps to the job that owns it; an unknown pid gets an
        inference service job of its own (pid, model); a call without pid goes to its model's
        service if exactly one runs. ``known`` replays a stored resolution (after a restart).
        Calls folded as if they named no pid are counted by reason into ``folded``.

        Returns (spans by consumer, the resolution to store with the batch, jobs created)."""
        by_consumer: dict[str, list[CallSpan]] = defaultdict(list)
        resolution: dict[str, str] = {}
        created: list[LiveJob] = []
        cache: dict[tuple[int | None, str], str] = {}
        fold_reason: dict[int, str] = {}  # pid -> why its calls are folded
        pids = list(map(_PID, spans))
        distinct = dict.fromkeys(pids)  # in order of first appearance, as the loop below meets them
        if None not in distinct and len(distinct) <= _FEW_PIDS:
            # The common batch: a few serving processes, each pid one consumer. Resolved once
            # per pid, grouped without a dict lookup per call.
            with self.lock:
                auto = sum(1 for j in self.live_jobs.running.values() if j.auto)
                of_pid = {pid: self._resolve_one(pid, spans[pids.index(pid)].model, now_s, known,
                                                 created, auto, fold_reason)
                          for pid in distinct}
            for pid, consumer in of_pid.items():
                resolution[f"pid:{pid}"] = consumer
            if len(set(of_pid.values())) == 1:
                by_consumer[next(iter(of_pid.values()))] = list(spans)
            else:
                for span, pid in zip(spans, pids, strict=True):
                    by_consumer[of_pid[pid]].append(span)
            if folded is not None:
                for pid, reason in fold_reason.items():
                    folded[reason] = folded.get(reason, 0) + pids.count(pid)
            return by_consumer, resolution, created
        with self.lock:
            auto = sum(1 for j in self.live_jobs.running.values() if j.auto)
            for span in spans:
                pid = span.pid
                key = (pid, span.model) if pid is None else (pid, "")
                consumer = cache.get(key)
                if consumer is None:
                    consumer = self._resolve_one(pid, span.model, now_s, known, created, auto,
                                                 fold_reason)
                    cache[key] = consumer
                    where = f"pid:{pid}" if pid is not None else f"model:{span.model}"
                    resolution[where] = consumer
                if folded is not None and pid is not None and pid in fold_reason:
                    reason = fold_reason[pid]
                    folded[reason] = folded.get(reason, 0) + 1
                by_consumer[consumer].append(span)
        return by_consumer, resolution, created

    def _resolve_one(
        self, pid: int | None, model: str, now_s: float, known: Mapping[str, str] | None,
        created: list[LiveJob], auto: int = 0, fold_reason: dict[int, str] | None = None,
    ) -> str:
        if known is not None:
            stored = known.get(f"pid:{pid}" if pid is not None else f"model:{model}")
            if stored is not None:
                return stored
        reg = self.live_jobs
        job = reg.owner_of_pid(pid) if pid is not None else None
        if pid is not None and job is None and known is None:
            # A pid with no process on this node could never be measured: it would only be a
            # "running" job until the next sweep (10,000 such calls once made 10,000 of them).
            # Past the cap on services registered by their calls, a new pid is not one more.
            reason = None
            if self.pid_exists is not None and not self.pid_exists(pid):
                reason = "no_such_pid"
            elif self.max_auto_jobs is not None and auto + len(created) >= self.max_auto_jobs:
                reason = "auto_job_cap"
            if reason is not None:
                if fold_reason is not None:
                    fold_reason[pid] = reason
                pid = None  # folded: as if the call named no pid
        if pid is None:
            services = reg.services_of_model(model)
            return services[0].consumer if len(services) == 1 else UNATTRIBUTED + model
        if job is None:
            # Registered by the caller (register()) once its insert is queued to the writer, so
            # no flush can reach the store before the job's row does.
            job = LiveJob(id=self.new_id(), name=f"{model} (pid {pid})", kind="inference",
                      model=model, pids={pid}, started_s=now_s, source="api", serves_calls=True,
                      auto=True)
            created.append(job)
        elif not job.serves_calls:
            job.serves_calls = True  # a job that reports calls has its energy split over them
        return job.consumer

    def register(self, jobs: Sequence[LiveJob]) -> None:
        with self.lock:
            for job in jobs:
                self.live_jobs.add(job)

    def new_batch_id(self) -> int:
        with self.lock:
            batch_id = self._next_batch_id
            self._next_batch_id += 1
            return batch_id

    def accept(self, batch_id: int, by_consumer: Mapping[str, list[CallSpan]]) -> None:
        """Hand a committed batch's spans to the CallLedger (through the sampling thread, which
        takes them before its next interval or flush: see ``_take_accepted``)."""
        total = sum(len(spans) for spans in by_consumer.values())
        if total == 0:
            return
        with self.lock:
            self._accepted.append((batch_id, total, by_consumer))
            self._pending_calls += total

    def _take_accepted(self) -> None:
        """Sampling thread, lock held: the batches accepted since, into the CallLedger. Spans
        thus reach the ledger before any interval that closed after they were accepted, as if
        added by ``accept`` itself, and only the sampling thread ever touches the ledger."""
        accepted, self._accepted = self._accepted, []
        for batch_id, total, by_consumer in accepted:
            self._batches[batch_id] = _Batch(batch_id, total)
            for consumer, spans in by_consumer.items():
                dropped_before = self.calls.dropped_spans
                self.calls.add_spans(consumer, spans, tag=batch_id)
                refused = self.calls.dropped_spans - dropped_before
                if refused:  # over the ledger's memory bound: settled at once with no energy
                    self._settle([Emitted.unsettled(consumer, spans[-refused:], batch_id)],
                                 self._completed)

    # --- flushing (sampling thread) ----------------------------------------------------------

    def collect_flush(self, now_s: float, *, final: bool = False, log_calls: bool = True) -> Flush:
        with self.lock:
            self._take_accepted()
        # The settle runs without the lock: the CallLedger is the sampling thread's alone (see
        # _take_accepted). Under the lock, a second of calls at 300k calls/s held every request
        # (they resolve and accept under it) for up to a second.
        settlement = self.calls.flush() if final else self.calls.settle(now_s)
        with self.lock:
            rows = self.ledger.drain_minute_rows()
            completed, self._completed = self._completed, []
            self._settle(settlement.emitted, completed)
            label_of = self.live_jobs.label_of
            metric_energy = [
                ((*label_of(r["consumer"]), r["model"], r["phase"], r["device_id"]),
                 r["energy_j"], r["co2e_g"], r["cost"])
                for r in rows
            ]
            sampled_until_s = self.ledger.last_s
            self.live_jobs.forget_ended()
            scraped = self.scraped.flush() if final else self.scraped.settle(now_s)
        call_rows, call_minutes, job_calls = _rollup(completed, log_calls)
        between_j = dict(settlement.between_calls_j)
        call_minutes += scraped.minute_rows
        for consumer, (n, energy_j) in scraped.job_calls.items():
            old_n, old_j = job_calls.get(consumer, (0, 0.0))
            job_calls[consumer] = (old_n + n, old_j + energy_j)
        for consumer, energy_j in scraped.between_j.items():
            between_j[consumer] = between_j.get(consumer, 0.0) + energy_j
        return Flush(
            energy_rows=rows,
            batch_ids=[b.batch_id for b in completed],
            call_rows=call_rows,
            call_minutes=call_minutes,
            job_calls=job_calls,
            between_j={c: e for c, e in between_j.items() if e},
            metric_energy=metric_energy,
            sampled_until_s=sampled_until_s,
        )

    def _settle(self, emitted: Sequence[Emitted], completed: list[_Batch]) -> None:
        """File the settled calls under their batches (the tag the ledger hands back is the
        batch id); collect the batches now complete."""
        batches = self._batches
        for part in emitted:
            for batch_id, piece in part.by_tag():
                batch = batches[batch_id]
                batch.settled.append(piece)
                batch.remaining -= len(piece)
                self._pending_calls -= len(piece)
                if not batch.remaining:
                    completed.append(batches.pop(batch_id))

    def pending_calls(self) -> int:
        with self.lock:
            return self._pending_calls

    def apportioned(self) -> dict[str, int]:
        """Calls settled since start, by how their energy was apportioned."""
        with self.lock:
            return {"power_fit": self.calls.fitted_calls, "overlap_time": self.calls.overlap_calls}


def _rollup(
    batches: Sequence[_Batch], log_calls: bool = True,
) -> tuple[list[RawBlock], list[dict[str, Any]], dict[str, tuple[int, float]]]:
    """Raw log blocks, call_minute rows and per-consumer (calls, energy) for completed batches.

    The CallLedger's own ``minute_rows`` mix calls of several batches, some not yet complete;
    these rows cover exactly the completed batches, so they can commit with ``pending`` cleared.
    Array sums, no Python object per call: this runs for every call the daemon ingests. The raw
    log's rows are made later, only for the rows it writes (``RawCallLog``)."""
    parts = [part for batch in batches for part in batch.settled]
    call_minutes = minute_rollup(parts)
    for row in call_minutes:
        del row["fitted_calls"]  # the ledger's counter; call_minute has no such column
    per_consumer: dict[str, list[float]] = {}
    for part in parts:
        acc = per_consumer.setdefault(part.consumer, [0, 0.0])
        acc[0] += len(part)
        acc[1] += math.fsum(part.energy_j.tolist())
    job_calls = {c: (int(n), e) for c, (n, e) in per_consumer.items()}
    blocks = [RawBlock(batch.batch_id, part) for batch in batches for part in batch.settled
              if part.spans is not None] if log_calls else []
    return blocks, call_minutes, job_calls
