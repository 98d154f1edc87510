"""The power-fit split inside CallLedger: it follows the work, says how each call was apportioned,
and keeps every joule (calls + between-call energy = the energy given, with the fit trusted)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from carbonwatch.calls.ledger import NVML_POWER_LAG_S, CallLedger, CallSpan
from carbonwatch.calls.split import METHOD_FIT, METHOD_OVERLAP
from carbonwatch.grid.types import IntensityPoint
from carbonwatch.model import DeviceClass, EnergyInterval, Provenance
from carbonwatch.sampler import AttributedInterval

SEG_S = 0.1  # one power reading per segment, as the collector polls
LAG_S = NVML_POWER_LAG_S


def _interval(start_s: float, segments: list[tuple[float, float]]) -> AttributedInterval:
    energy_j = math.fsum(e for _, e in segments)
    iv = EnergyInterval("gpu0", DeviceClass.GPU, start_s, segments[-1][0], energy_j, 0.0,
                        Provenance.MEASURED, "nvml-energy-counter", {}, tuple(segments))
    point = IntensityPoint(start_s, segments[-1][0], 400.0, "actual", "average", "test", "US",
                           None)
    return AttributedInterval(iv, point, {"svc": energy_j})


def _power_j(spans: list[CallSpan], demand, lo: float, hi: float) -> float:
    """Exact energy over [lo, hi) of calls that each draw demand(span) watts while they run."""
    return math.fsum(demand(s) * max(0.0, min(s.end_s, hi) - max(s.start_s, lo)) for s in spans)


def _service(rng: np.random.Generator, seconds: int, demand, make_span):
    """A service alone on its device: bursty calls, one 1 s interval of ten readings per
    second. As on NVML, each segment's power is the mean over the 0.2 s before its end (two
    100 ms readings that trail the power), and the interval's segments are scaled to what the
    calls really drew in it (the counter)."""
    spans, t = [], 0.0
    while t < seconds - 0.1:
        t += rng.exponential(0.01 if int(t) % 4 < 2 else 0.15)
        spans.append(make_span(rng, t))
    spans = [s for s in spans if s.end_s < seconds]
    intervals = []
    for k in range(seconds):
        edges = [k + SEG_S * (q + 1) for q in range(10)]
        shape = [_power_j(spans, demand, hi - 2 * SEG_S, hi) / 2 for hi in edges]
        counter_j = _power_j(spans, demand, float(k), k + 1.0)
        if sum(shape) > 0 and counter_j > 0:
            scale = counter_j / math.fsum(shape)
            segs = [(hi, e * scale) for hi, e in zip(edges, shape, strict=True)]
            intervals.append(_interval(float(k), segs))
    return spans, intervals


def _run(ledger: CallLedger, spans, intervals) -> list:
    ledger.add_spans("svc", spans)
    outs = []
    for item in intervals:
        ledger.add_interval("svc", item, item.interval.energy_j)
        outs.append(ledger.settle(item.interval.end_s))
    outs.append(ledger.flush())
    return outs


def _batch_span(rng: np.random.Generator, t: float) -> CallSpan:
    batch = int(rng.choice([1, 64]))
    return CallSpan("m", t, t + 0.004 + 0.0001 * batch, tags={"batch": str(batch)})


def _batch_demand(span: CallSpan) -> float:
    return 30.0 + 1.5 * float(span.tags["batch"])


def test_a_heavy_call_gets_its_own_power_not_just_its_longer_time():
    rng = np.random.default_rng(5)
    spans, intervals = _service(rng, 30, _batch_demand, _batch_span)
    fitted = CallLedger(settle_s=0.5, warmup_s=5.0, power_lag_s=LAG_S)
    overlap = CallLedger(settle_s=0.5, fit=False, power_lag_s=LAG_S)
    outs = {"fit": _run(fitted, spans, intervals), "overlap": _run(overlap, spans, intervals)}
    truth = {id(s): _batch_demand(s) * (s.end_s - s.start_s) for s in spans}
    ratio = {}
    for name, settlements in outs.items():
        got = {id(s): e for o in settlements for s, e, _, _ in o.per_call}
        heavy = [s for s in spans if s.tags["batch"] == "64"]
        ratio[name] = math.fsum(got[id(s)] for s in heavy) / math.fsum(truth[id(s)] for s in heavy)
    # Truth: a batch-64 call lasts 2.6x and draws 4.0x what a batch-1 call does.
    assert ratio["fit"] == pytest.approx(1.0, abs=0.1)
    assert ratio["overlap"] < 0.8  # time alone gives it the mean power of whatever ran
    assert fitted.fitted_calls >= 0.9 * len(spans) and overlap.fitted_calls == 0


def test_token_rates_are_what_the_fit_follows_when_calls_report_tokens():
    def make(rng: np.random.Generator, t: float) -> CallSpan:
        tokens = int(rng.choice([10, 400]))
        return CallSpan("llm", t, t + 0.02, tokens_in=50, tokens_out=tokens)

    def demand(span: CallSpan) -> float:  # decode power follows the token rate
        return 10.0 + 0.02 * span.tokens_out / (span.end_s - span.start_s)

    spans, intervals = _service(np.random.default_rng(9), 30, demand, make)
    ledger = CallLedger(settle_s=0.5, warmup_s=5.0, power_lag_s=LAG_S)
    outs = _run(ledger, spans, intervals)
    got = {id(s): e for o in outs for s, e, _, _ in o.per_call}
    for tokens in (10, 400):
        same = [s for s in spans if s.tokens_out == tokens]
        want = math.fsum(demand(s) * 0.02 for s in same)
        assert math.fsum(got[id(s)] for s in same) == pytest.approx(want, rel=0.1)
    rows = [r for o in outs for r in o.minute_rows]
    assert sum(r["tokens_out"] for r in rows) == sum(s.tokens_out for s in spans)
    assert sum(r["tokens_in"] for r in rows) == 50 * len(spans)
    assert sum(r["token_calls"] for r in rows) == len(spans)


def test_each_call_says_how_it_was_apportioned_and_minute_rows_count_the_fitted():
    spans, intervals = _service(np.random.default_rng(5), 30, _batch_demand, _batch_span)
    # No warm-up hold: the first seconds fall back to overlap time.
    ledger = CallLedger(settle_s=0.5, power_lag_s=LAG_S)
    outs = _run(ledger, spans, intervals)
    methods = [m for o in outs for m in o.per_call_method]
    assert len(methods) == sum(len(o.per_call) for o in outs) == len(spans)
    assert set(methods) == {METHOD_FIT, METHOD_OVERLAP}
    rows = [r for o in outs for r in o.minute_rows]
    assert sum(r["fitted_calls"] for r in rows) == methods.count(METHOD_FIT) == ledger.fitted_calls
    assert ledger.overlap_calls == methods.count(METHOD_OVERLAP) > 0
    assert all(r["tokens_in"] == 0 and r["token_calls"] == 0 for r in rows)  # none reported


def test_an_explicit_weight_wins_over_the_batch_tag():
    def make(rng: np.random.Generator, t: float) -> CallSpan:
        batch = int(rng.choice([1, 64]))
        # The tag lies (always 1); the explicit weight tells the truth.
        return CallSpan("m", t, t + 0.004 + 0.0001 * batch, tags={"batch": "1"},
                        weight=float(batch))

    def demand(span: CallSpan) -> float:
        return 30.0 + 1.5 * float(span.weight)

    spans, intervals = _service(np.random.default_rng(3), 30, demand, make)
    outs = _run(CallLedger(settle_s=0.5, warmup_s=5.0, power_lag_s=LAG_S), spans, intervals)
    got = {id(s): e for o in outs for s, e, _, _ in o.per_call}
    heavy = [s for s in spans if s.weight == 64]
    want = math.fsum(demand(s) * (s.end_s - s.start_s) for s in heavy)
    assert math.fsum(got[id(s)] for s in heavy) == pytest.approx(want, rel=0.1)


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 2**32 - 1), st.floats(0.0, 3.0), st.floats(0.0, 6.0),
       st.lists(st.floats(0.0, 30.0), max_size=6))
def test_with_the_fit_trusted_every_joule_is_kept(seed, settle_s, warmup_s, settle_at):
    rng = np.random.default_rng(seed)
    spans, intervals = _service(rng, 12, _batch_demand, _batch_span)
    ledger = CallLedger(settle_s=settle_s, warmup_s=warmup_s, power_lag_s=LAG_S)
    ledger.add_spans("svc", spans)
    outs = []
    extra = sorted(settle_at)
    for item in intervals:
        ledger.add_interval("svc", item, item.interval.energy_j)
        while extra and extra[0] <= item.interval.end_s:
            outs.append(ledger.settle(extra.pop(0)))
        outs.append(ledger.settle(item.interval.end_s))
    outs.append(ledger.flush())
    per_call = [c for o in outs for c in o.per_call]
    calls_j = math.fsum(e for _, e, _, _ in per_call)
    between_j = math.fsum(v for o in outs for v in o.between_calls_j.values())
    given_j = math.fsum(i.interval.energy_j for i in intervals)
    assert math.isclose(calls_j + between_j, given_j, rel_tol=1e-9)
    assert len(per_call) == len(spans) and all(e >= 0 for _, e, _, _ in per_call)
    # Nothing runs between these calls: whatever the fit, no call that ran gets 0 J.
    assert all(e > 0 for _, e, _, _ in per_call)


def _trained(seconds: int = 20):
    """A ledger whose fit is trusted, after ``seconds`` of a service alone, and that service."""
    rng = np.random.default_rng(11)
    spans, intervals = _service(rng, seconds + 4, _batch_demand, _batch_span)
    ledger = CallLedger(settle_s=0.5, warmup_s=5.0, power_lag_s=LAG_S)
    early = [s for s in spans if s.end_s < seconds]
    outs = _run_until(ledger, early, [i for i in intervals if i.interval.end_s <= seconds])
    assert ledger.fitted_calls > 0.9 * len(early)
    return ledger, spans, intervals, outs


def _run_until(ledger: CallLedger, spans, intervals) -> list:
    ledger.add_spans("svc", spans)
    outs = []
    for item in intervals:
        ledger.add_interval("svc", item, item.interval.energy_j)
        outs.append(ledger.settle(item.interval.end_s))
    return outs


def test_a_second_the_device_gave_the_service_nothing_is_bridged_under_a_trusted_fit():
    ledger, spans, intervals, outs = _trained()
    later = [s for s in spans if s.start_s >= 20]
    ledger.add_spans("svc", later)
    # The device attribution missed second 20 (no activity sample): the service got nothing.
    given = [i for i in intervals if i.interval.start_s >= 21]
    for item in given:
        ledger.add_interval("svc", item, item.interval.energy_j)
    outs.append(ledger.flush())
    got = {id(s): e for o in outs for s, e, _, _ in o.per_call}
    missed = [s for s in later if s.end_s <= 21]
    assert missed and all(got[id(s)] > 0 for s in missed)
    between_j = math.fsum(v for o in outs for v in o.between_calls_j.values())
    total_j = math.fsum(i.interval.energy_j for i in intervals if i.interval.start_s != 20)
    assert math.isclose(math.fsum(got.values()) + between_j, total_j, rel_tol=1e-9)


def test_beside_another_process_calls_get_at_most_twice_what_the_fit_says_they_drew():
    ledger, spans, intervals, outs = _trained()
    quiet = [s for s in spans if s.start_s >= 20 and s.end_s < 21][:3]
    ledger.add_spans("svc", quiet)
    drawn_j = math.fsum(_batch_demand(s) * (s.end_s - s.start_s) for s in quiet)
    # The attribution hands the quiet service 50x what its calls drew, out of a trainer's
    # interval: the segments' shape is the trainer's (flat).
    segs = [(20.0 + 0.1 * (q + 1), 40.0) for q in range(10)]
    item = _interval(20.0, segs)
    item = AttributedInterval(item.interval, item.intensity,
                              {"svc": 50 * drawn_j, "train": 400.0 - 50 * drawn_j})
    ledger.add_interval("svc", item, 50 * drawn_j)
    out = ledger.flush()
    ids = {id(s) for s in quiet}
    got = math.fsum(e for s, e, _, _ in out.per_call if id(s) in ids)
    assert 0 < got <= 2.2 * drawn_j  # twice the fit's prediction, which is near the truth
    # The rest stays with the service, between calls (conservation is property-tested above).
    assert out.between_calls_j["svc"] >= 0.95 * (50 - 2.2) * drawn_j


def test_intervals_without_readings_inside_are_never_held_for_the_fit():
    """A one-segment interval (a CPU counter) cannot teach the fit: the warm-up does not hold
    its calls back."""
    ledger = CallLedger(settle_s=0.0, warmup_s=10.0, power_lag_s=LAG_S)
    call = CallSpan("m", 0.2, 0.4)
    ledger.add_spans("svc", [call])
    ledger.add_interval("svc", _interval(0.0, [(1.0, 10.0)]), 10.0)
    [(span, energy_j, _, _)] = ledger.settle(1.5).per_call
    assert span is call and energy_j == pytest.approx(2.0)  # overlap time: 0.2 s of 1 s


def test_intervals_with_readings_are_held_while_the_fit_warms_up():
    ledger = CallLedger(settle_s=0.0, warmup_s=10.0, power_lag_s=LAG_S)
    ledger.add_spans("svc", [CallSpan("m", 0.2, 0.4)])
    ledger.add_interval("svc", _interval(0.0, [(0.1 * (q + 1), 1.0) for q in range(10)]), 10.0)
    assert ledger.settle(1.5).per_call == []  # held: too few readings to try a fit
    assert len(ledger.settle(11.5).per_call) == 1  # released after warmup_s
