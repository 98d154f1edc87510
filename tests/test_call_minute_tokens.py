"""CallLedger's minute rows carry the calls' token sums (calls.py's only token duty)."""

import pytest

from carbonwatch.calls.ledger import CallLedger, CallSpan
from carbonwatch.grid.types import IntensityPoint
from carbonwatch.model import DeviceClass, EnergyInterval, Provenance
from carbonwatch.sampler import AttributedInterval


def _interval(start_s: float, end_s: float, energy_j: float) -> AttributedInterval:
    iv = EnergyInterval("gpu0", DeviceClass.GPU, start_s, end_s, energy_j, 0.0,
                        Provenance.MEASURED, "nvml-energy-counter", {}, ())
    point = IntensityPoint(start_s, end_s, 400.0, "actual", "average", "test", "US", None)
    return AttributedInterval(iv, point, {"svc": energy_j})


def test_minute_rows_sum_tokens_and_count_the_calls_that_reported_output_tokens():
    ledger = CallLedger(settle_s=0.0)
    ledger.add_spans("svc", [
        CallSpan("llm", 0.0, 1.0, tokens_in=100, tokens_out=7),
        CallSpan("llm", 1.0, 2.0, tokens_in=3),  # no output tokens: not a token call
        CallSpan("llm", 2.0, 4.0),  # nothing reported: adds 0
        CallSpan("llm", 60.0, 61.0, tokens_in=2**40, tokens_out=2**40),  # exact, any size
        CallSpan("cnn", 4.0, 5.0, weight=64.0),
    ])
    ledger.add_interval("svc", _interval(0.0, 5.0, 50.0), 50.0)
    ledger.add_interval("svc", _interval(60.0, 61.0, 10.0), 10.0)
    rows = {(r["minute_s"], r["model"]): r for r in ledger.settle(100.0).minute_rows}
    first = rows[(0, "llm")]
    assert (first["tokens_in"], first["tokens_out"], first["token_calls"]) == (103, 7, 1)
    assert first["token_energy_j"] == pytest.approx(10.0)  # the first call's 1 s of 10 W
    assert first["energy_j"] == pytest.approx(40.0)
    later = rows[(60, "llm")]
    assert (later["tokens_in"], later["tokens_out"], later["token_calls"]) == (2**40, 2**40, 1)
    assert later["token_energy_j"] == pytest.approx(10.0)
    cnn = rows[(0, "cnn")]
    assert (cnn["tokens_in"], cnn["tokens_out"], cnn["token_calls"], cnn["token_energy_j"]) == (
        0, 0, 0, 0.0)
