"""Job and call intake: the business rules behind ``POST /v1/jobs``, ``POST /v1/jobs/{id}/end``
and ``POST /v1/calls``, apart from HTTP. Each service owns what it touches (the state's lock, the
writer, the sampling loop) and says no with a domain error; ``app.py`` only parses, asks, answers.

The errors are :class:`~carbonwatch.daemon.validation.ApiError` subclasses, each with its status,
so the error middleware answers them as it answers every refusal (a 4xx or 503 JSON naming the
problem), decided before anything is written."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

from carbonwatch.clock import Clock
from carbonwatch.daemon import authz, storeops
from carbonwatch.daemon.live_jobs import LiveJob, ended_by_tag
from carbonwatch.daemon.metrics import LabelCap, MetricTotals
from carbonwatch.daemon.sampling import SamplingLoop
from carbonwatch.daemon.state import DaemonState, fold_models
from carbonwatch.daemon.validation import ApiError, CallBatch, NewJob
from carbonwatch.daemon.writer import Writer
from carbonwatch.errors import StoreError
from carbonwatch.store import Store


class Refusal(ApiError):
    """A request the intake refuses, with this class's status."""

    status = 400

    def __init__(self, message: str) -> None:
        super().__init__(type(self).status, message)


class Invalid(Refusal):
    status = 400


class Forbidden(Refusal):
    status = 403


class NotFound(Refusal):
    status = 404


class Conflict(Refusal):
    status = 409


class Unavailable(Refusal):
    status = 503


class TooMany(Refusal):
    status = 429


Read = Callable[[Callable[[Store], Any]], Awaitable[Any]]


def _squatted(holder: LiveJob, pid: int, who: authz.Caller) -> bool:
    """Whether ``pid``, held by ``holder``, may be taken by ``who``: the caller owns the pid (or
    is an operator) and the holder's owner does not own it."""
    real = authz.pid_uid(pid)
    if real is None or holder.owner_uid == real:
        return False
    return who.admin or who.uid == real


class JobIntake:
    """Registering jobs (new, or merged into a running job of the same identity) and ending
    them."""

    def __init__(
        self, *, state: DaemonState, writer: Writer, loop: SamplingLoop, models: LabelCap,
        clock: Clock, accounting: Callable[[], dict[str, Any]], read: Read,
        max_jobs_per_user: int = 1024,
    ) -> None:
        self.state, self.writer, self.loop, self.models = state, writer, loop, models
        self.clock, self.accounting, self.read = clock, accounting, read
        # A registration without pids never vanishes on its own: without a bound, one client
        # could make the daemon hold (and sample, and flush) any number of running jobs.
        self.max_jobs_per_user = max_jobs_per_user

    async def register(self, spec: NewJob, who: authz.Caller) -> tuple[str, bool]:
        """(the job's id, whether it merged into a running job). The row is committed first."""
        owner_uid = who.uid
        if spec.owner_uid is not None and spec.owner_uid != who.uid:
            if not who.admin:
                raise Forbidden("owner_uid: only an operator registers a job on another user's "
                                "behalf")
            owner_uid = spec.owner_uid  # e.g. the Slurm prolog (root) opening the user's job
        if spec.model:
            self.models.admit(spec.model)  # its /metrics label: its own name, or 'other' past cap
        state = self.state
        live = state.live_jobs.track_trees
        authz.check_pids(who, spec.pids, live)  # outside the lock: it reads /proc
        released: list[tuple[str, set[int]]] = []
        with state.lock:
            reg = state.live_jobs
            same = reg.by_identity(spec.identity) if spec.identity else None
            if same is not None and not who.may_manage(same.owner_uid):
                raise Forbidden(f"job {same.id} with identity {spec.identity!r} belongs to "
                                f"uid {same.owner_uid}; only its owner or an operator may merge "
                                "into it")
            for pid in spec.pids:
                owner = reg.owner_of_pid(pid)
                if owner is not None and owner is not same:
                    if live and _squatted(owner, pid, who):
                        # Held by a job whose owner does not own the pid (e.g. registered by a
                        # call naming it): the pid's real owner takes it back.
                        released.append((owner.id, reg.release_pid(owner, pid)))
                        continue
                    raise Conflict(f"pid {pid} already belongs to running job {owner.id} "
                                   f"({owner.name!r}); end that job first")
            for other_id, left in released:
                self.writer.submit(
                    lambda s, i=other_id, p=left: storeops.set_job_pids(s.conn, i, p))
            if same is not None:
                reg.add_pids(same, spec.pids)
                pids = set(same.pids)
                future = self.writer.submit(lambda s: storeops.set_job_pids(s.conn, same.id, pids))
                job, merged = same, True
            else:
                held = sum(1 for j in reg.running.values()
                           if j.source == "api" and j.owner_uid == owner_uid)
                if held >= self.max_jobs_per_user:
                    who_s = "unknown uid (remote)" if owner_uid is None else f"uid {owner_uid}"
                    raise TooMany(f"{who_s} already has {held} running jobs "
                                  "(max_running_jobs_per_user); end some first")
                job = self._new_job(spec, owner_uid)
                row = {"id": job.id, "name": spec.name, "kind": spec.kind, "model": spec.model,
                       "command": spec.command, "pids": spec.pids, "tags": spec.tags,
                       "identity": spec.identity, "source": "api", "started_s": job.started_s,
                       "owner_uid": owner_uid, **self.accounting()}
                # Queued before the job is visible to the sampler: its row precedes its energy.
                future = self.writer.submit(lambda s: storeops.insert_job(s.conn, row))
                reg.add(job)
                merged = False
        try:
            await asyncio.wrap_future(future)
        except StoreError:
            if not merged:
                with state.lock:
                    state.live_jobs.remove(job.id)
            raise
        return job.id, merged

    def _new_job(self, spec: NewJob, owner_uid: int | None) -> LiveJob:
        return LiveJob(id=self.state.new_id(), name=spec.name, kind=spec.kind, model=spec.model,
                       pids=set(spec.pids), started_s=self.clock.time(), source="api",
                       identity=spec.identity, serves_calls=spec.kind == "inference",
                       ended_by=ended_by_tag(spec.tags), owner_uid=owner_uid)

    async def end(self, job_id: str, exit_code: int | None, who: authz.Caller) -> None:
        """Close the job's energy up to now and write its end (committed on return)."""
        with self.state.lock:
            job = self.state.live_jobs.running.get(job_id)
            running = job is not None
            owner_uid = job.owner_uid if job is not None else None
        if running and not who.may_manage(owner_uid):
            whose = f"uid {owner_uid}" if owner_uid is not None else "no local user"
            raise Forbidden(f"job {job_id} belongs to {whose}; {who.describe()} may not end it "
                            "(only its owner or an operator)")
        status = "finished" if exit_code in (None, 0) else "failed"
        if not running:
            row = await self.read(lambda s: s.job(job_id))
            if row is None:
                raise NotFound(f"no job with id {job_id[:64]!r}")
            if row["status"] == "lost" and who.may_manage(row.get("owner_uid")):
                # The daemon only guessed this end (its processes were gone and no report came
                # within the grace); its owner's late report says how it ended. Its energy and
                # end time stand: nothing ran after its processes were gone.
                await self.writer.run(lambda s: storeops.report_lost_end(
                    s.conn, job_id, status=status, exit_code=exit_code))
                return
            raise Conflict(f"job {job_id} already ended (status {row['status']})")
        if not self.loop.alive():
            raise Unavailable("the sampler is not running; cannot close the job's energy")
        loop = self.loop
        try:
            written = await asyncio.wrap_future(
                loop.request(lambda: loop.end_job(job_id, status, exit_code)))
        except KeyError:
            raise Conflict(f"job {job_id} already ended") from None
        await asyncio.wrap_future(written)


class CallIntake:
    """Accepting a batch of call spans: each resolved to its job (a service registered by its
    first call when none has its pid), the batch committed, then acknowledged."""

    def __init__(
        self, *, state: DaemonState, writer: Writer, models: LabelCap, totals: MetricTotals,
        clock: Clock, service_row: Callable[[LiveJob], dict[str, Any]], max_auto_jobs: int,
    ) -> None:
        self.state, self.writer, self.models, self.totals = state, writer, models, totals
        self.clock, self.service_row, self.max_auto_jobs = clock, service_row, max_auto_jobs

    async def accept(self, batch: CallBatch, body: bytes, owner_uid: int | None) -> tuple[int, int]:
        """(calls accepted, batch id); acknowledged only once committed."""
        state = self.state
        spans = fold_models(batch.spans, self.models)
        folded: dict[str, int] = {}
        by_consumer, resolution, created = state.resolve(spans, self.clock.time(), folded=folded)
        cap = self.max_auto_jobs
        if len(created) > cap:  # refused before anything is registered or written
            raise Invalid(f"calls: {len(created)} pids with no job yet in one request; at most "
                          f"{cap} (setting max_auto_jobs_per_request): register the services, or "
                          "send fewer")
        if folded:
            self.totals.add_folded_calls(folded)
        batch_id = state.new_batch_id()
        for job in created:  # a service registered by its first call belongs to its reporter
            job.owner_uid = owner_uid
        rows = [self.service_row(job) for job in created]
        received_s = time.time()
        n = len(spans)

        def write(store: Any) -> None:
            for row in rows:
                storeops.insert_job(store.conn, row)
            storeops.insert_call_batch(store.conn, batch_id, received_s, n, batch.dropped, body,
                                       resolution)

        future = self.writer.submit(write)
        state.register(created)  # after the insert is queued: see JobIntake.register
        await asyncio.wrap_future(future)
        # Committed: from here a crash re-reads the batch from the store, so it is acknowledged.
        state.accept(batch_id, by_consumer)
        if batch.dropped:
            self.totals.add_dropped(batch.dropped)
        return n, batch_id
