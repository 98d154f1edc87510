"""Per-call attribution: concurrent calls share, power shape matters, energy is conserved."""

import csv
import math
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from carbonwatch.calls.ledger import CallLedger, CallSpan
from carbonwatch.grid.types import IntensityPoint
from carbonwatch.model import DeviceClass, EnergyInterval, Provenance
from carbonwatch.sampler import AttributedInterval

TRACE = Path(__file__).parent / "fixtures" / "h200-shared-gpu"


def _interval(start_s, end_s, energy_j, segments=(), intensity=400.0, device="gpu0"):
    iv = EnergyInterval(device, DeviceClass.GPU, start_s, end_s, energy_j, 0.0,
                        Provenance.MEASURED, "nvml-energy-counter", {}, tuple(segments))
    point = IntensityPoint(start_s, end_s, intensity, "actual", "average", "test", "US", None)
    return AttributedInterval(iv, point, {"service:m": energy_j})


def _energy_by_span(settlement):
    return {span: energy_j for span, energy_j, _, _ in settlement.per_call}


def test_concurrent_calls_share_the_time_they_overlap():
    ledger = CallLedger(settle_s=0.0)
    a, b = CallSpan("m", 0.0, 0.5), CallSpan("m", 0.25, 0.75)
    ledger.add_spans("svc", [a, b])
    ledger.add_interval("svc", _interval(0.0, 1.0, 100.0), 100.0)
    out = ledger.settle(2.0)
    got = _energy_by_span(out)
    # 0.25 s alone (25 J) + half of the 0.25 s shared (12.5 J) each; 0.25 s idle stays behind.
    assert got[a] == pytest.approx(37.5)
    assert got[b] == pytest.approx(37.5)
    assert out.between_calls_j["svc"] == pytest.approx(25.0)


def test_a_call_in_a_high_power_segment_gets_more_than_one_in_a_quiet_segment():
    ledger = CallLedger(settle_s=0.0)
    quiet, busy = CallSpan("m", 0.1, 0.3), CallSpan("m", 0.6, 0.8)
    ledger.add_spans("svc", [quiet, busy])
    # 10 J in the first half second, 90 J in the second: the interval's power shape.
    ledger.add_interval("svc", _interval(0.0, 1.0, 100.0, [(0.5, 10.0), (1.0, 90.0)]), 100.0)
    got = _energy_by_span(ledger.settle(2.0))
    assert got[quiet] == pytest.approx(4.0)
    assert got[busy] == pytest.approx(36.0)


def test_segments_shape_only_the_consumers_part_of_the_interval():
    ledger = CallLedger(settle_s=0.0)
    call = CallSpan("m", 0.5, 1.0)
    ledger.add_spans("svc", [call])
    # The device used 100 J, the service's part is 40 J: the shape is scaled to 40 J.
    ledger.add_interval("svc", _interval(0.0, 1.0, 100.0, [(0.5, 25.0), (1.0, 75.0)]), 40.0)
    out = ledger.settle(2.0)
    assert _energy_by_span(out)[call] == pytest.approx(30.0)
    assert out.between_calls_j["svc"] == pytest.approx(10.0)


def test_a_long_batch_1024_like_call_gets_more_than_a_short_batch_1_call():
    ledger = CallLedger(settle_s=0.0)
    short = CallSpan("m", 0.100, 0.101, tags={"batch": "1"})
    long = CallSpan("m", 0.200, 0.240, tags={"batch": "1024"})
    ledger.add_spans("svc", [short, long])
    ledger.add_interval("svc", _interval(0.0, 1.0, 500.0), 500.0)
    got = _energy_by_span(ledger.settle(2.0))
    assert got[long] == pytest.approx(40 * got[short])


def test_energy_between_calls_stays_with_the_service():
    ledger = CallLedger(settle_s=0.0)
    ledger.add_interval("svc", _interval(0.0, 1.0, 100.0), 100.0)
    out = ledger.settle(2.0)
    assert out.per_call == []
    assert out.between_calls_j == {"svc": 100.0}


def test_a_call_spanning_intervals_is_emitted_once_all_are_settled():
    ledger = CallLedger(settle_s=1.0)
    call = CallSpan("m", 0.5, 1.5)
    ledger.add_spans("svc", [call])
    ledger.add_interval("svc", _interval(0.0, 1.0, 100.0), 100.0)
    ledger.add_interval("svc", _interval(1.0, 2.0, 200.0), 200.0)
    first = ledger.settle(2.5)  # settles [0, 1) only: the call still waits for [1, 2)
    assert first.per_call == []
    assert first.between_calls_j["svc"] == pytest.approx(50.0)
    second = ledger.settle(3.5)
    assert _energy_by_span(second)[call] == pytest.approx(50.0 + 100.0)
    assert ledger.pending_spans == 0


def test_a_late_span_gets_only_the_energy_of_unsettled_intervals():
    ledger = CallLedger(settle_s=1.0)
    ledger.add_interval("svc", _interval(0.0, 1.0, 100.0), 100.0)
    ledger.add_interval("svc", _interval(1.0, 2.0, 100.0), 100.0)
    assert ledger.settle(2.5).between_calls_j == {"svc": 100.0}
    late = CallSpan("m", 0.5, 1.5)  # its first half was already given to the service
    ledger.add_spans("svc", [late])
    out = ledger.flush()
    assert _energy_by_span(out)[late] == pytest.approx(50.0)
    assert ledger.late_spans == 1


def test_carbon_uses_each_intervals_intensity_and_pue_and_cost_uses_the_price():
    ledger = CallLedger(settle_s=0.0, pue=1.5, price_per_kwh=0.3)
    call = CallSpan("m", 0.0, 2.0)
    ledger.add_spans("svc", [call])
    ledger.add_interval("svc", _interval(0.0, 1.0, 3.6e6, intensity=100.0), 3.6e6)
    ledger.add_interval("svc", _interval(1.0, 2.0, 3.6e6, intensity=500.0), 3.6e6)
    [(_, energy_j, co2e_g, cost)] = ledger.settle(3.0).per_call
    assert energy_j == pytest.approx(7.2e6)
    assert co2e_g == pytest.approx((100.0 + 500.0) * 1.5)  # 1 kWh at each intensity, × PUE
    assert cost == pytest.approx(2 * 1.5 * 0.3)


def test_cost_is_zero_when_no_price_is_known():
    ledger = CallLedger(settle_s=0.0)
    ledger.add_spans("svc", [CallSpan("m", 0.0, 1.0)])
    ledger.add_interval("svc", _interval(0.0, 1.0, 3.6e6), 3.6e6)
    [(_, _, co2e_g, cost)] = ledger.settle(2.0).per_call
    assert co2e_g == pytest.approx(400.0)
    assert cost == 0.0


def test_minute_rows_count_calls_by_their_start_minute_per_model():
    ledger = CallLedger(settle_s=0.0)
    ledger.add_spans("svc", [CallSpan("a", 59.0, 61.0), CallSpan("a", 61.0, 62.0),
                             CallSpan("b", 61.0, 63.0)])
    ledger.add_interval("svc", _interval(50.0, 70.0, 200.0), 200.0)
    rows = {(r["minute_s"], r["model"]): r for r in ledger.settle(80.0).minute_rows}
    assert set(rows) == {(0, "a"), (60, "a"), (60, "b")}
    assert rows[(0, "a")]["calls"] == 1 and rows[(0, "a")]["busy_s"] == pytest.approx(2.0)
    assert rows[(60, "a")]["energy_j"] == pytest.approx(5.0)  # [61, 62) shared with b
    assert rows[(60, "b")]["energy_j"] == pytest.approx(5.0 + 10.0)
    assert sum(r["energy_j"] for r in rows.values()) == pytest.approx(40.0)


def test_per_call_output_can_be_switched_off_leaving_the_rollups():
    ledger = CallLedger(settle_s=0.0, emit_per_call=False)
    ledger.add_spans("svc", [CallSpan("m", 0.0, 0.5)])
    ledger.add_interval("svc", _interval(0.0, 1.0, 10.0), 10.0)
    out = ledger.settle(2.0)
    assert out.per_call == []
    assert out.minute_rows[0]["calls"] == 1 and out.minute_rows[0]["energy_j"] == 5.0


def test_pending_spans_are_bounded_and_drops_counted():
    ledger = CallLedger(settle_s=0.0, max_pending_spans=3)
    ledger.add_spans("svc", [CallSpan("m", float(i), i + 0.5) for i in range(5)])
    assert ledger.pending_spans == 3 and ledger.dropped_spans == 2


def test_a_call_open_past_the_horizon_is_emitted_with_what_it_has():
    ledger = CallLedger(settle_s=0.0, horizon_s=10.0)
    runaway = CallSpan("m", 0.0, 1e9)  # a client clock far ahead, or a call that never ends
    ledger.add_spans("svc", [runaway])
    ledger.add_interval("svc", _interval(0.0, 1.0, 10.0), 10.0)
    assert ledger.settle(5.0).per_call == []
    out = ledger.settle(11.0)
    assert _energy_by_span(out)[runaway] == pytest.approx(10.0)
    assert ledger.expired_spans == 1 and ledger.pending_spans == 0


def test_spans_with_non_finite_times_are_refused():
    ledger = CallLedger(settle_s=0.0)
    ledger.add_spans("svc", [CallSpan("m", math.nan, 1.0), CallSpan("m", 0.0, 1.0)])
    ledger.add_interval("svc", _interval(0.0, 1.0, 10.0), 10.0)
    out = ledger.flush()
    assert len(out.per_call) == 1 and ledger.invalid_spans == 1 and ledger.pending_spans == 0


# -- conservation, property-tested ---------------------------------------------------------

_t = st.floats(min_value=0, max_value=50, allow_nan=False, allow_infinity=False)
_energy = st.floats(min_value=0, max_value=1e6, allow_nan=False, allow_infinity=False)


@st.composite
def _intervals(draw):
    start_s = draw(_t)
    duration_s = draw(st.sampled_from([0.0, 0.01, 1.0]) | st.floats(0, 10))
    cuts = sorted(draw(st.lists(st.floats(0, 1), max_size=6)))
    seg_energy = draw(st.lists(_energy, min_size=len(cuts) + 1, max_size=len(cuts) + 1))
    ends = [start_s + c * duration_s for c in cuts] + [start_s + duration_s]
    segments = list(zip(ends, seg_energy, strict=True)) if draw(st.booleans()) else []
    return start_s, start_s + duration_s, draw(_energy), segments


@st.composite
def _spans(draw):
    start_s = draw(_t)
    duration_s = draw(st.sampled_from([0.0, 0.001]) | st.floats(0, 20))
    return CallSpan(draw(st.sampled_from(["a", "b"])), start_s, start_s + duration_s)


_ops = st.lists(
    st.one_of(
        st.tuples(st.just("spans"), st.sampled_from(["s1", "s2"]), st.lists(_spans(), max_size=8)),
        st.tuples(st.just("interval"), st.sampled_from(["s1", "s2"]), _intervals()),
        st.tuples(st.just("settle"), _t),
    ),
    max_size=25,
)


@settings(max_examples=300, deadline=None)
@given(_ops, st.floats(0, 10))
def test_calls_plus_between_calls_equal_the_consumer_energy(ops, settle_s):
    ledger = CallLedger(settle_s=settle_s, price_per_kwh=0.2)
    given_j, n_spans, outs = [], 0, []
    for op in ops:
        if op[0] == "spans":
            ledger.add_spans(op[1], op[2])
            n_spans += len(op[2])
        elif op[0] == "interval":
            start_s, end_s, energy_j, segments = op[2]
            ledger.add_interval(op[1], _interval(start_s, end_s, energy_j, segments), energy_j)
            given_j.append(energy_j)
        else:
            outs.append(ledger.settle(op[1]))
    outs.append(ledger.flush())
    per_call = [c for o in outs for c in o.per_call]
    calls_j = math.fsum(e for _, e, _, _ in per_call)
    between_j = math.fsum(v for o in outs for v in o.between_calls_j.values())
    total_j = math.fsum(given_j)
    assert math.isclose(calls_j + between_j, total_j, rel_tol=1e-9, abs_tol=1e-6)
    assert len(per_call) == n_spans and ledger.pending_spans == 0  # every call, exactly once
    assert all(e >= 0 and c >= 0 for _, e, c, _ in per_call)
    rows = [r for o in outs for r in o.minute_rows]
    assert sum(r["calls"] for r in rows) == n_spans
    assert math.isclose(math.fsum(r["energy_j"] for r in rows), calls_j,
                        rel_tol=1e-9, abs_tol=1e-6)


# -- the recorded H200 trace ---------------------------------------------------------------

def _trace_intervals():
    """1 s counter intervals, each shaped by the 10 ms power samples inside it."""
    with open(TRACE / "energy.csv") as f:
        counter = [(float(r["t_s"]), float(r["energy_mJ"]) / 1e3) for r in csv.DictReader(f)]
    with open(TRACE / "power.csv") as f:
        power = [(float(r["t_s"]), float(r["power_mW"]) / 1e3) for r in csv.DictReader(f)]
    readings = counter[::10]
    out = []
    for (a_s, a_j), (b_s, b_j) in zip(readings, readings[1:], strict=False):
        inside = [(t, w) for t, w in power if a_s < t < b_s]
        edges = [a_s] + [t for t, _ in inside] + [b_s]
        watts = [power[0][1]] + [w for _, w in inside]
        segments = [(hi, w * (hi - lo)) for lo, hi, w in zip(edges, edges[1:], watts, strict=False)]
        out.append(_interval(a_s, b_s, b_j - a_j, segments))
    return out


def test_on_the_h200_trace_every_joule_is_kept_and_longer_calls_cost_more():
    with open(TRACE / "calls.csv") as f:
        spans = [CallSpan("mlp", float(r["start_s"]), float(r["end_s"]), 438,
                          {"batch": r["batch"]}) for r in csv.DictReader(f)]
    ledger = CallLedger(settle_s=5.0)
    ledger.add_spans("service:mlp", spans)
    # The whole device energy stands in for the service's part: the split is what is tested.
    intervals = _trace_intervals()
    for item in intervals:
        ledger.add_interval("service:mlp", item, item.interval.energy_j)
    out = ledger.settle(intervals[-1].interval.end_s + 5.5)
    out_rest = ledger.flush()
    per_call = out.per_call + out_rest.per_call
    assert len(per_call) == len(spans)
    total_j = sum(i.interval.energy_j for i in intervals)
    between_j = sum(out.between_calls_j.values()) + sum(out_rest.between_calls_j.values())
    assert math.fsum(e for _, e, _, _ in per_call) + between_j == pytest.approx(total_j, rel=1e-9)
    by_duration = sorted(per_call, key=lambda c: c[0].end_s - c[0].start_s)
    tenth = len(by_duration) // 10
    short = [e for _, e, _, _ in by_duration[:tenth]]
    long = [e for _, e, _, _ in by_duration[-tenth:]]
    assert sum(long) / len(long) > 5 * sum(short) / len(short)
    assert {r["model"] for r in out.minute_rows} == {"mlp"}
