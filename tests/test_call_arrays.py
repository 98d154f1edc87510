"""Settled calls kept as arrays (issue 16): the per-minute rollup, the batch tags the ledger hands
back, and the raw call log made from them agree with a plain per-call computation."""

import math
import sqlite3
import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from carbonwatch.calls.chunk import Emitted, minute_rollup
from carbonwatch.calls.ledger import CallLedger, CallSpan
from carbonwatch.daemon import rawlog
from carbonwatch.daemon.rawlog import RawBlock, RawCallLog
from carbonwatch.daemon.writer import Writer
from carbonwatch.grid.types import IntensityPoint
from carbonwatch.model import DeviceClass, EnergyInterval, Provenance
from carbonwatch.sampler import AttributedInterval

# Minute edges on purpose: 1_700_000_040 is a whole minute, and the float just below it must
# fall in the minute before (as Python's // puts it).
EDGE = 1_700_000_040.0
starts = st.one_of(st.sampled_from([EDGE, math.nextafter(EDGE, 0.0), EDGE - 60.0, EDGE + 59.999]),
                   st.floats(EDGE - 200.0, EDGE + 200.0))
calls = st.lists(st.tuples(starts, st.floats(0.0, 90.0), st.sampled_from(["a", "b", "c"]),
                           st.floats(0.0, 50.0), st.one_of(st.none(), st.integers(0, 10**6)),
                           st.one_of(st.none(), st.integers(0, 10**6)), st.booleans()),
                 min_size=1, max_size=60)


def _part(rows, models):
    ids = {m: i for i, m in enumerate(models)}

    def col(i, none=math.nan):
        return np.array([none if r[i] is None else r[i] for r in rows], dtype=np.float64)

    start = col(0)
    return Emitted("svc", models, None, start_s=start, end_s=start + col(1), model_id=np.array(
        [ids[r[2]] for r in rows], dtype=np.int64), tokens_in=col(4), tokens_out=col(5),
        tag=np.zeros(len(rows), dtype=np.int64), energy_j=col(3), co2e_g=col(3) * 0.4,
        cost=col(3) * 0.001, fitted=np.array([r[6] for r in rows], dtype=bool))


@settings(max_examples=150, deadline=None)
@given(calls, st.integers(1, 4))
def test_minute_rollup_equals_a_per_call_sum(rows, n_parts):
    models = ["c", "b", "a"]  # ids in another order than the names sort in
    cut = [rows[i::n_parts] for i in range(n_parts)]
    got = {(r["minute_s"], r["model"]): r for r in minute_rollup([_part(c, models) for c in cut
                                                                  if c])}
    want: dict = {}
    for start, dur, model, e, t_in, t_out, fitted in rows:
        w = want.setdefault((int(start // 60.0 * 60.0), model), [0, 0.0, 0.0, 0, 0, 0, 0, 0.0])
        w[0] += 1
        w[1] += (start + dur) - start
        w[2] += e
        w[3] += int(fitted)
        w[4] += t_in or 0
        w[5] += t_out or 0
        w[6] += t_out is not None
        w[7] += e if t_out is not None else 0.0
    assert got.keys() == want.keys()
    for key, (n, busy_s, energy_j, fitted, t_in, t_out, t_calls, t_j) in want.items():
        r = got[key]
        assert (r["calls"], r["fitted_calls"], r["tokens_in"], r["tokens_out"],
                r["token_calls"]) == (n, fitted, t_in, t_out, t_calls)
        assert r["busy_s"] == pytest.approx(busy_s, rel=1e-9, abs=1e-9)
        assert r["energy_j"] == pytest.approx(energy_j, rel=1e-9, abs=1e-9)
        assert r["co2e_g"] == pytest.approx(energy_j * 0.4, rel=1e-9, abs=1e-9)
        assert r["token_energy_j"] == pytest.approx(t_j, rel=1e-9, abs=1e-9)


def _interval(start_s, end_s, energy_j):
    iv = EnergyInterval("gpu0", DeviceClass.GPU, start_s, end_s, energy_j, 0.0,
                        Provenance.MEASURED, "nvml-energy-counter", {}, ())
    point = IntensityPoint(start_s, end_s, 400.0, "actual", "average", "test", "US", None)
    return AttributedInterval(iv, point, {"svc": energy_j})


@settings(max_examples=60, deadline=None)
@given(st.lists(st.lists(st.tuples(st.floats(0.0, 9.0), st.floats(0.0, 2.0)), min_size=1,
                         max_size=20), min_size=1, max_size=6))
def test_every_call_comes_back_once_under_its_batch_tag(batches):
    ledger = CallLedger(settle_s=0.0, fit=False)
    sent, outs = {}, []
    for tag, batch in enumerate(batches):
        spans = [CallSpan("m", s, s + d) for s, d in batch]
        sent[tag] = spans
        ledger.add_spans("svc", spans, tag=tag)
        if tag % 2:  # several batches per chunk, and chunks settled in between
            ledger.add_interval("svc", _interval(tag * 1.0, tag + 1.0, 10.0), 10.0)
            outs.append(ledger.settle(tag + 0.5))
    ledger.add_interval("svc", _interval(20.0, 21.0, 5.0), 5.0)
    outs.append(ledger.flush())
    got: dict[int, list] = {}
    for part in (p for out in outs for p in out.emitted):
        for tag, piece in part.by_tag():
            got.setdefault(tag, []).extend(piece.spans.tolist())
    assert ledger.pending_spans == 0
    for tag, spans in sent.items():  # nothing lost, nothing twice, each under its own tag
        assert sorted(map(id, got.get(tag, []))) == sorted(map(id, spans))


def test_the_raw_log_keeps_the_newest_rows_and_makes_rows_only_for_those(tmp_path, monkeypatch):
    keep = 7
    writer = Writer(tmp_path / "raw.db")
    writer.start()
    try:
        log = RawCallLog(writer, keep)
        ledger = CallLedger(settle_s=0.0, fit=False)
        spans = [CallSpan("m", float(i), i + 0.5, 42, {"route": "/x"}, weight=2.0, tokens_out=3)
                 for i in range(20)]
        for batch in range(2):
            ledger.add_spans("svc", spans[batch * 10:(batch + 1) * 10], tag=batch)
        ledger.add_interval("svc", _interval(0.0, 20.0, 20.0), 20.0)
        parts = ledger.flush().emitted
        blocks = [RawBlock(tag, piece) for part in parts for tag, piece in part.by_tag()]
        made = []
        real_rows = RawBlock.rows

        def counting(self, lo, hi):
            made.append(hi - lo)
            return real_rows(self, lo, hi)

        monkeypatch.setattr(RawBlock, "rows", counting)
        log.add(blocks, final=True)
        writer.close()  # the idle writes run before close returns
        assert sum(made) == keep  # the 13 older calls were shed before any row was made
    finally:
        writer.close()
    with sqlite3.connect(tmp_path / "raw.db") as conn:
        rows = conn.execute("SELECT batch_id, model, pid, start_s, end_s, tags, weight,"
                            " tokens_in, tokens_out, energy_j FROM calls ORDER BY id").fetchall()
    assert [r[3] for r in rows] == [float(i) for i in range(13, 20)]
    assert rows[0][:9] == (1, "m", 42, 13.0, 13.5, '{"route": "/x"}', 2.0, None, 3)
    assert math.fsum(r[9] for r in rows) == pytest.approx(7 * 0.5, rel=1e-9)


def test_the_raw_log_stops_at_its_share_of_the_writer_and_resumes_next_window(tmp_path,
                                                                              monkeypatch):
    monkeypatch.setattr(rawlog, "CHUNK", 3)
    monkeypatch.setattr(rawlog, "SHARE", 1e-12)  # any write uses up the window's share
    writer = Writer(tmp_path / "share.db")
    writer.start()
    try:
        log = RawCallLog(writer, 100)
        ledger = CallLedger(settle_s=0.0, fit=False)
        ledger.add_spans("svc", [CallSpan("m", float(i), i + 0.5) for i in range(10)], tag=1)
        ledger.add_interval("svc", _interval(0.0, 10.0, 10.0), 10.0)
        log.add([RawBlock(1, p) for p in ledger.flush().emitted])

        def count(want: int) -> int:  # idle writes run when the writer has nothing else
            for _ in range(100):
                n = writer.call(lambda s: s.conn.execute("SELECT COUNT(*) FROM calls")
                                .fetchone()[0])
                if n >= want:
                    break
                time.sleep(0.02)
            return n

        assert count(3) == 3
        time.sleep(0.2)
        assert count(3) == 3  # one chunk, then the share is spent: the rest waits
        monkeypatch.setattr(rawlog, "WINDOW_S", 1e-9)  # each write starts a new window
        log.add(())  # what the sampling loop does at every flush
        assert count(10) == 10
    finally:
        writer.close()


def test_the_daemon_state_settles_whole_batches_refused_spans_included():
    from carbonwatch.daemon.live_jobs import LiveJobs
    from carbonwatch.daemon.state import DaemonState
    from carbonwatch.pricing import Pricing

    state = DaemonState(pricing=Pricing(), live_jobs=LiveJobs(track_trees=False))
    state.calls.max_pending_spans = 25  # the third batch is refused in part
    batches = {}
    for b in range(3):
        spans = [CallSpan("m", 100.0 + b * 10 + i, 100.5 + b * 10 + i, None,
                          {"b": b}, tokens_out=i) for i in range(10)]
        by_consumer, _, _ = state.resolve(spans, 0.0)
        batch_id = state.new_batch_id()
        state.accept(batch_id, by_consumer)
        batches[batch_id] = spans
    assert state.pending_calls() == 30
    first = state.collect_flush(0.0)  # nothing settled yet but the refused part's batch waits
    assert first.batch_ids == []
    assert state.pending_calls() == 25  # 5 refused spans settled at once with no energy
    assert state.calls.dropped_spans == 5
    final = state.collect_flush(1e9, final=True)
    assert sorted(final.batch_ids) == sorted(batches)
    assert state.pending_calls() == 0
    assert sum(r["calls"] for r in final.call_minutes) == 30
    assert sum(r["tokens_out"] for r in final.call_minutes) == 3 * 45
    assert "fitted_calls" not in final.call_minutes[0]
    [(n, _)] = final.job_calls.values()
    assert n == 30
    logged = [(block.batch_id, s) for block in final.call_rows
              for s in block.part.spans.tolist()]
    assert sorted((b, s.start_s) for b, s in logged) == sorted(
        (b, s.start_s) for b, spans in batches.items() for s in spans)
