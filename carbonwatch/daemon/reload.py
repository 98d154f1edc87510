"""What a previous run left in the store, read back while the daemon is built (before it serves):
its running jobs, the call batches it acknowledged but had not settled, and the counter totals
``/metrics`` must carry on from (Prometheus counters never go down across a restart)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from carbonwatch.clock import Clock
from carbonwatch.daemon import columnar, storeops, validation
from carbonwatch.daemon.live_jobs import LiveJob, job_from_row
from carbonwatch.daemon.metrics import LabelCap, MetricTotals
from carbonwatch.daemon.state import DaemonState, fold_models
from carbonwatch.daemon.writer import Writer
from carbonwatch.model import job_of_consumer
from carbonwatch.store import Store

log = logging.getLogger(__name__)


def reload_previous_run(
    *, writer: Writer, state: DaemonState, models: LabelCap, totals: MetricTotals, clock: Clock,
    service_row: Callable[[LiveJob], dict[str, Any]],
) -> list[str]:
    """Put the previous run's jobs, unsettled batches and totals back; the notes to show."""
    notes = _resume_jobs(writer, state, clock)

    def seeds(store: Store) -> tuple[Any, ...]:
        conn = store.conn
        energy = storeops.energy_totals(conn)
        ids = {j for c, *_ in energy if (j := job_of_consumer(c)) is not None}
        max_batch = conn.execute("SELECT MAX(id) FROM call_batches").fetchone()[0] or 0
        return (energy, storeops.job_names_and_ends(conn, ids),
                storeops.calls_by_model(conn), storeops.dropped_spans(conn), max_batch,
                storeops.pending_batches(conn), storeops.tokens_by_model(conn))

    energy, jobs, calls, dropped, max_batch, pending, tokens = writer.call(seeds)
    # The cap's places go to the models with the most calls, then to those with energy.
    for model, _ in sorted(calls.items(), key=lambda item: -(item[1] or 0)):
        models.admit(model, 0)
    for row in energy:
        models.admit(row[2], 0)
    unknown = ("", 0.0)  # a consumer with no jobs row: nameless, long ended
    totals.add_energy(
        ((j, jobs.get(j, unknown)[0], model, phase, device)
         if (j := job_of_consumer(c)) is not None else ("", "", model, phase, device),
         e, g, cost)
        for c, phase, model, device, e, g, cost in energy
    )
    # Ended jobs fold at the first scrape once past the retention, as before the restart.
    for c, *_ in energy:
        if (j := job_of_consumer(c)) is not None:
            ended_s = jobs.get(j, unknown)[1]
            if ended_s is not None:
                totals.job_ended(j, ended_s)
    totals.add_calls(calls)
    totals.add_tokens(tokens)
    totals.add_dropped(dropped)
    state.set_next_batch_id(max_batch + 1)
    now_s = clock.time()
    for batch_id, body, known in pending:
        try:
            batch = columnar.any_batch(body)  # either form, as it was accepted
        except validation.ApiError as exc:  # cannot happen for a body we accepted
            log.error("call batch %d cannot be re-read (%s); left pending", batch_id, exc)
            continue
        spans = fold_models(batch.spans, models)
        by_consumer, _, created = state.resolve(spans, now_s, known=known)
        if created:
            rows = [service_row(j) for j in created]
            writer.call(lambda s, rows=rows: [storeops.insert_job(s.conn, r) for r in rows])
            state.register(created)
        state.accept(batch_id, by_consumer)
    if pending:
        notes.append(f"re-read {len(pending)} acknowledged call batch(es) not yet settled")
    return notes


def _resume_jobs(writer: Writer, state: DaemonState, clock: Clock) -> list[str]:
    """The jobs the store says are running, tracked again; a row no current daemon writes is
    ended as lost, never a start that crashes."""
    live_jobs = state.live_jobs
    for row in writer.call(storeops.running_jobs):
        try:
            job = job_from_row(row)
            if not all(isinstance(p, int) and 0 < p <= validation.MAX_PID for p in job.pids):
                raise ValueError(f"pids {sorted(map(str, job.pids))[:8]} are not all pids")
        except (TypeError, ValueError, KeyError, AttributeError) as exc:
            log.error("job %s cannot be resumed (%s); marked lost", row.get("id"), exc)
            writer.call(lambda s, r=row: storeops.end_job(
                s.conn, r["id"], status="lost", ended_s=clock.time(), exit_code=None, pids=[]))
            continue
        live_jobs.add(job)
    if live_jobs.running:
        return [f"resumed {len(live_jobs.running)} running job(s)"]
    return []
