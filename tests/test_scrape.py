"""Inference servers' exposition parsed into per-model work, counter deltas with resets, and a
server's energy split per window over its models (pure parts of ``--scrape``)."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from serving_helpers import tgi_text, vllm_text

from carbonwatch.grid.types import IntensityPoint
from carbonwatch.model import DeviceClass, EnergyInterval, Provenance
from carbonwatch.sampler import AttributedInterval
from carbonwatch.scrape import (
    MAX_MODELS,
    CounterTracker,
    ExpositionError,
    ScrapeLedger,
    counts_tokens,
    parse_exposition,
    weights,
)
from carbonwatch.tokens import per_token

# Triton's format as its docs show it (docs/user_guide/metrics.md): prometheus-cpp counters with no
# _total suffix, labels model and version, durations in cumulative microseconds.
TRITON = """\
# HELP nv_inference_request_success Number of successful inference requests, all batch sizes
# TYPE nv_inference_request_success counter
nv_inference_request_success{model="resnet",version="1"} 161
nv_inference_request_success{model="resnet",version="2"} 39
nv_inference_request_success{model="bert",version="1"} 10
# HELP nv_inference_count Number of inferences performed (does not include cached requests)
# TYPE nv_inference_count counter
nv_inference_count{model="resnet",version="1"} 1288
# HELP nv_inference_request_duration_us Cumulative inference request duration in microseconds
# TYPE nv_inference_request_duration_us counter
nv_inference_request_duration_us{model="resnet",version="1"} 11110
nv_inference_request_duration_us{model="bert",version="1"} 500000
# HELP nv_inference_compute_infer_duration_us Cumulative compute inference duration in microseconds
# TYPE nv_inference_compute_infer_duration_us counter
nv_inference_compute_infer_duration_us{model="resnet",version="1"} 8000
nv_inference_compute_infer_duration_us{model="bert",version="1"} 2000
# HELP nv_gpu_power_usage GPU power usage in watts
# TYPE nv_gpu_power_usage gauge
nv_gpu_power_usage{gpu_uuid="GPU-1"} 312.5
"""


def test_vllm_counters_are_summed_over_engines_and_finish_reasons():
    text = vllm_text({"llama": {"tokens_in": 300, "tokens_out": 100, "requests": 8,
                                "busy_s": 2.5}}, engines=2)
    reading = parse_exposition(text, "ignored")
    assert reading.server == "vllm"
    assert reading.models == {"llama": {"tokens_in": 300.0, "tokens_out": 100.0,
                                        "requests": 8.0, "busy_s": 2.5}}


def test_tgi_histogram_sums_are_its_tokens_and_the_target_name_its_model():
    reading = parse_exposition(tgi_text(600, 200, 5, 3.25), "tgi-llama")
    assert reading.server == "tgi"
    assert reading.models == {"tgi-llama": {"tokens_in": 600.0, "tokens_out": 200.0,
                                            "requests": 5.0, "busy_s": 3.25}}


def test_triton_models_are_summed_over_versions_with_durations_in_seconds():
    reading = parse_exposition(TRITON, "triton")
    assert reading.server == "triton"
    assert reading.models["resnet"]["requests"] == 200
    assert reading.models["resnet"]["busy_s"] == pytest.approx(0.01111)
    assert reading.models["bert"]["work"] == pytest.approx(0.002)
    assert "tokens_in" not in reading.models["resnet"]


@pytest.mark.parametrize("text, message", [
    ("<html><body>502 Bad Gateway</body></html>\n", "not Prometheus text exposition"),
    ("# TYPE x counter\nx{a=\"1\" 1\n", "not Prometheus text exposition"),
    ("# TYPE process_cpu_seconds_total counter\nprocess_cpu_seconds_total 1.5\n",
     "no vLLM, TGI or Triton counters"),
    ('vllm:prompt_tokens_total{model_name="m",engine="0"} -5\n'
     "# TYPE vllm:prompt_tokens_total counter\n", "not a finite count"),
])
def test_garbage_is_refused_with_a_reason(text, message):
    with pytest.raises(ExpositionError, match=message):
        parse_exposition(text, "m")


def test_negative_counts_and_too_many_models_are_refused():
    with pytest.raises(ExpositionError, match="finite count"):
        parse_exposition("# TYPE tgi_request_success counter\ntgi_request_success -1\n", "m")
    many = {f"m{i}": {"tokens_in": 1} for i in range(MAX_MODELS + 1)}
    with pytest.raises(ExpositionError, match=f"more than {MAX_MODELS} models"):
        parse_exposition(vllm_text(many, engines=1), "m")


def test_counter_deltas_follow_prometheus_increase():
    tracker = CounterTracker()
    assert tracker.update({"a": {"tokens_in": 100.0}}) is None  # baseline
    assert tracker.update({"a": {"tokens_in": 130.0}}) == {"a": {"tokens_in": 30.0}}
    assert tracker.update({"a": {"tokens_in": 130.0}}) == {}
    # A reset: the server restarted and counted 12 since.
    assert tracker.update({"a": {"tokens_in": 12.0}}) == {"a": {"tokens_in": 12.0}}
    assert tracker.resets == 1
    # A model that appears after the baseline started from zero in this window.
    assert tracker.update({"a": {"tokens_in": 12.0}, "b": {"tokens_out": 7.0}}) == {
        "b": {"tokens_out": 7.0}}
    tracker.rebase()
    assert tracker.update({"a": {"tokens_in": 500.0}}) is None


def _item(start_s, end_s, energy_j, segments=(), intensity=400.0):
    iv = EnergyInterval("gpu0", DeviceClass.GPU, start_s, end_s, energy_j, 0.0,
                        Provenance.MEASURED, "nvml-energy-counter", {}, tuple(segments))
    point = IntensityPoint(start_s, end_s, intensity, "actual", "average", "test", "US", None)
    return AttributedInterval(iv, point, {"job:s": energy_j})


def test_a_window_energy_goes_to_its_models_by_tokens():
    ledger = ScrapeLedger(settle_s=0.0)
    ledger.watch("job:s")
    ledger.baseline("job:s", 10.0)
    ledger.add_interval("job:s", _item(9.0, 11.0, 20.0), 20.0)  # half before the baseline
    ledger.add_interval("job:s", _item(11.0, 20.0, 90.0), 90.0)
    ledger.close_window("job:s", 20.0, {"a": {"tokens_in": 300, "tokens_out": 100,
                                              "requests": 3},
                                        "b": {"tokens_in": 100, "requests": 1}})
    out = ledger.settle(30.0)
    rows = {r["model"]: r for r in out.minute_rows}
    assert rows["a"]["energy_j"] == pytest.approx(100.0 * 0.8)
    assert rows["b"]["energy_j"] == pytest.approx(100.0 * 0.2)
    assert (rows["a"]["tokens_in"], rows["a"]["tokens_out"], rows["a"]["calls"]) == (300, 100, 3)
    assert rows["a"]["co2e_g"] == pytest.approx(80.0 / 3.6e6 * 400.0)
    assert out.job_calls == {"job:s": (4, pytest.approx(100.0))}
    assert out.between_j == {"job:s": pytest.approx(10.0)}


def test_scraped_rows_carry_their_token_energy_for_the_per_token_figures():
    """vLLM/TGI count tokens for every request: their rows' energy (split 40 : 10 by tokens)
    is all token calls' energy; Triton counts none. Energy before any request ended is the
    tokens' too."""
    assert counts_tokens("vllm") and counts_tokens("tgi") and not counts_tokens("triton")
    ledger = ScrapeLedger(settle_s=0.0)
    for consumer, deltas, token_work in (
            ("job:v", {"a": {"tokens_in": 30, "tokens_out": 10, "requests": 2},
                       "b": {"tokens_in": 10}}, True),  # b: a prompt read, nothing written yet
            ("job:t", {"resnet": {"requests": 5, "work": 0.5}}, False)):
        ledger.baseline(consumer, 0.0)
        ledger.add_interval(consumer, _item(0.0, 10.0, 60.0), 60.0)
        ledger.close_window(consumer, 10.0, deltas, token_work)
    rows = {r["model"]: r for r in ledger.settle(20.0).minute_rows}
    assert (rows["a"]["token_calls"], rows["a"]["token_energy_j"]) == (2, pytest.approx(48.0))
    assert (rows["b"]["token_calls"], rows["b"]["token_energy_j"]) == (0, pytest.approx(12.0))
    assert (rows["resnet"]["token_calls"], rows["resnet"]["token_energy_j"]) == (0, 0.0)
    figures = per_token(serving_energy_j=60.0, serving_co2e_g=1.0, calls=0,
                        calls_energy_j=rows["b"]["energy_j"], tokens_in=10, tokens_out=0,
                        token_calls=0, token_energy_j=rows["b"]["token_energy_j"])
    assert figures["token_energy_share"] == 1.0  # known, though no output token yet
    # Without the server's format, the deltas decide: output tokens moved, so token work.
    ledger.baseline("job:x", 0.0)
    ledger.close_window("job:x", 5.0, {"m": {"tokens_out": 4}})
    ledger.close_window("job:x", 6.0, {"m": {"requests": 1}})
    ledger.add_interval("job:x", _item(0.0, 6.0, 60.0), 60.0)
    row = ledger.settle(20.0).minute_rows[0]
    assert row["token_energy_j"] == pytest.approx(50.0) and row["energy_j"] == pytest.approx(60.0)


def test_a_window_without_work_keeps_its_energy_between_calls():
    ledger = ScrapeLedger(settle_s=0.0)
    ledger.baseline("job:s", 0.0)
    ledger.add_interval("job:s", _item(0.0, 10.0, 50.0), 50.0)
    ledger.close_window("job:s", 10.0, {})
    out = ledger.settle(20.0)
    assert out.minute_rows == [] and out.between_j == {"job:s": pytest.approx(50.0)}


def test_triton_windows_split_by_compute_time_not_requests():
    assert weights({"resnet": {"requests": 100, "work": 0.1},
                    "bert": {"requests": 1, "work": 0.3}}) == {"resnet": 0.1, "bert": 0.3}
    assert weights({"a": {"requests": 2}, "b": {"requests": 6}}) == {"a": 2, "b": 6}
    assert weights({"a": {"busy_s": 1.0}}) is None


@settings(max_examples=150, deadline=None)
@given(
    cuts=st.lists(st.floats(0.1, 30.0), min_size=1, max_size=8),
    energies=st.lists(st.floats(0.0, 500.0), min_size=1, max_size=40),
    work=st.lists(st.tuples(st.integers(0, 1000), st.integers(0, 1000)), min_size=8,
                  max_size=8),
    settle_every=st.integers(1, 10),
    seg=st.booleans(),
)
def test_every_joule_lands_once_in_a_window_or_between(cuts, energies, work, settle_every, seg):
    """Conservation whatever the scrape times, interval shapes and work, with windows settled
    before later intervals reach them (late energy goes between windows, never lost)."""
    ledger = ScrapeLedger(settle_s=2.0)
    ledger.watch("job:s")
    times = sorted({0.0, *cuts})
    ledger.baseline("job:s", times[0] + 0.5)
    outs = []
    given_j, t, scrape = 0.0, -1.0, 1
    for i, e in enumerate(energies):
        segments = [(t + 0.3, e * 0.25), (t + 1.0, e * 0.75)] if seg else []
        ledger.add_interval("job:s", _item(t, t + 1.0, e, segments), e)
        given_j += e
        t += 1.0
        while scrape < len(times) and times[scrape] <= t:
            a, b = work[scrape % len(work)]
            ledger.close_window("job:s", times[scrape],
                                {"a": {"tokens_in": a}, "b": {"tokens_out": b}} if a + b else {})
            scrape += 1
        if i % settle_every == 0:
            outs.append(ledger.settle(t))
    outs.append(ledger.flush())
    rows_j = math.fsum(r["energy_j"] for o in outs for r in o.minute_rows)
    calls_j = math.fsum(e for o in outs for _, e in o.job_calls.values())
    between_j = math.fsum(e for o in outs for e in o.between_j.values())
    assert rows_j == pytest.approx(calls_j, rel=1e-9, abs=1e-9)
    assert rows_j + between_j == pytest.approx(given_j, rel=1e-9, abs=1e-6)
    assert all(r["energy_j"] >= 0 for o in outs for r in o.minute_rows)


def test_a_long_gap_between_scrapes_keeps_memory_bounded_and_every_joule():
    from carbonwatch.scrape import MAX_TAIL_PIECES

    ledger = ScrapeLedger(settle_s=0.0)
    ledger.baseline("job:s", 0.0)
    for i in range(3 * MAX_TAIL_PIECES):  # an hour of failed scrapes, in 1 s intervals
        ledger.add_interval("job:s", _item(i, i + 1.0, 2.0), 2.0)
    assert len(ledger._consumers["job:s"].tail) <= MAX_TAIL_PIECES + 1
    ledger.close_window("job:s", 3 * MAX_TAIL_PIECES - 0.5, {"a": {"tokens_out": 10}})
    out = ledger.flush()
    rows_j = sum(r["energy_j"] for r in out.minute_rows)
    assert rows_j + sum(out.between_j.values()) == pytest.approx(6.0 * MAX_TAIL_PIECES)
    assert sum(out.between_j.values()) == pytest.approx(1.0)  # the last half second
