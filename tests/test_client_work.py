"""The client's work measures: weights and tokens reach a real HTTP sink in bodies the daemon's
own validator accepts; bad values fail at the call site; a failing weight callable never breaks
a call."""

from __future__ import annotations

import asyncio
import json
import logging
import math

import numpy as np
import pytest
from test_client import FakeDaemon

from carbonwatch import client_spans
from carbonwatch.client import Client
from carbonwatch.daemon import bodies, validation


def test_the_client_checks_the_daemons_own_bounds():
    assert client_spans.MAX_WEIGHT == validation.MAX_WEIGHT
    assert client_spans.MAX_TOKENS == validation.MAX_TOKENS
    assert client_spans.MAX_UNIX_S == validation.MAX_UNIX_S


def test_a_call_timed_elsewhere_is_recorded_with_its_tags_and_tokens():
    client = Client(daemon_url="http://127.0.0.1:9", flush_interval_s=3600)
    try:
        client.record("llm", 100.0, 101.5, tokens_in=12, tokens_out=34, route="/v1/chat",
                      status=200)
        client.record("llm", 102, 102)
        for start_s, end_s in ((5.0, 4.0), (math.nan, 1.0), (-1.0, 1.0), (1.0, 1e11)):
            with pytest.raises(ValueError, match="start_s, end_s"):
                client.record("llm", start_s, end_s)
        with pytest.raises(ValueError, match="tokens_out"):
            client.record("llm", 1.0, 2.0, tokens_out=-3)
        assert list(client._buffer) == [
            ('{"model":"llm","tags":{"route":"/v1/chat","status":"200"},"tokens_in":12,'
             '"tokens_out":34,', 100.0, 101.5),
            ('{"model":"llm","tags":{},', 102.0, 102.0)]
    finally:
        client._buffer.clear()
        client.close(0.01)


def _sent(daemon: FakeDaemon) -> list[dict]:
    return daemon.calls


def test_tokens_and_weights_reach_the_daemon_in_bodies_it_accepts():
    with FakeDaemon() as daemon:
        client = Client(daemon_url=daemon.url, flush_interval_s=0.02)
        with client.inference("llm", tokens_in=812, route="/v1/chat") as call:
            call.set_tokens(tokens_out=57)
        with client.inference("llm") as call:
            call.set_tokens(tokens_in=np.int64(3))  # tokenizers hand out numpy integers
            call.set_tokens(tokens_out=0)  # set in two steps; 0 is a count, not "unknown"
        with client.inference("cnn", weight=64):
            pass
        with client.inference("cnn"):
            pass

        @client.track_inference("cnn", weight=lambda batch, scale=1: len(batch) * scale)
        def predict(batch: list[int], scale: int = 1) -> int:
            return len(batch)

        @client.track_inference("cnn", weight=2.5)
        def fixed(x: int) -> int:
            return x

        predict([1, 2, 3])
        predict([1, 2], scale=10)  # the callable gets the call's own arguments
        fixed(1)
        client.record("llm", 1_800_000_000.0, 1_800_000_001.0, tokens_in=9, tokens_out=4,
                      status=200)
        assert client.flush(10.0)
        client.close()
    calls = _sent(daemon)
    work = [{k: c[k] for k in ("model", "weight", "tokens_in", "tokens_out") if k in c}
            for c in calls]
    assert work == [
        {"model": "llm", "tokens_in": 812, "tokens_out": 57},
        {"model": "llm", "tokens_in": 3, "tokens_out": 0},
        {"model": "cnn", "weight": 64.0},
        {"model": "cnn"},
        {"model": "cnn", "weight": 3.0},
        {"model": "cnn", "weight": 20.0},
        {"model": "cnn", "weight": 2.5},
        {"model": "llm", "tokens_in": 9, "tokens_out": 4},
    ]
    assert calls[0]["tags"] == {"route": "/v1/chat"}
    for batch in daemon.batches:  # the daemon's validator takes every body the client sent
        spans = bodies.call_batch(json.dumps(batch).encode()).spans
        assert len(spans) == len(batch["calls"])
    assert client.rejected_total == 0


@pytest.mark.parametrize(("kwargs", "error"), [
    ({"tokens_out": -1}, ValueError),
    ({"tokens_in": 10**9 + 1}, ValueError),
    ({"tokens_in": 2.0}, TypeError),
    ({"tokens_out": True}, TypeError),
    ({"tokens_out": "12"}, TypeError),
    ({"weight": 1e30}, ValueError),
    ({"weight": math.nan}, ValueError),
    ({"weight": -1}, ValueError),
    ({"weight": "64"}, TypeError),
])
def test_a_bad_value_fails_where_it_is_given(kwargs, error):
    client = Client(daemon_url="http://127.0.0.1:9", flush_interval_s=3600)
    try:
        with pytest.raises(error, match=next(iter(kwargs))):
            client.inference("m", **kwargs)
        with client.inference("m") as call, pytest.raises(error):
            if "weight" in kwargs:
                call.set_weight(kwargs["weight"])
            else:
                call.set_tokens(**kwargs)
        # The call itself is still recorded, without the refused value.
        assert [h for h, _, _ in client._buffer] == ['{"model":"m","tags":{},']
    finally:
        client._buffer.clear()
        client.close(0.01)


def test_tokens_set_after_the_block_are_refused_not_lost_silently():
    client = Client(daemon_url="http://127.0.0.1:9", flush_interval_s=3600)
    try:
        with client.inference("m") as call:
            pass
        with pytest.raises(RuntimeError, match="inside the block"):
            call.set_tokens(tokens_out=5)
    finally:
        client._buffer.clear()
        client.close(0.01)


def test_a_failing_weight_callable_records_the_call_without_a_weight(caplog):
    client = Client(daemon_url="http://127.0.0.1:9", flush_interval_s=3600)

    def weight(x: object) -> float:
        if x == "boom":
            raise KeyError("batch")
        return math.nan if x == "nan" else 4

    @client.track_inference("m", weight=weight)
    def serve(x: object) -> object:
        return x

    try:
        with caplog.at_level(logging.WARNING, logger="carbonwatch.client"):
            assert serve("boom") == "boom"  # the serving call is untouched
            assert serve("nan") == "nan"
            assert serve(1) == 1
            assert serve("boom") == "boom"
        heads = [h for h, _, _ in client._buffer]
        assert heads == ['{"model":"m","tags":{},', '{"model":"m","tags":{},',
                         '{"model":"m","tags":{},"weight":4.0,', '{"model":"m","tags":{},']
        assert client.weight_errors_total == 3
        assert len([r for r in caplog.records if "weight callable" in r.message]) == 1
    finally:
        client._buffer.clear()
        client.close(0.01)


def test_async_calls_carry_their_work_too():
    client = Client(daemon_url="http://127.0.0.1:9", flush_interval_s=3600)

    @client.track_inference("m", weight=lambda n: n)
    async def serve(n: int) -> int:
        await asyncio.sleep(0)
        return n

    async def main() -> None:
        await serve(8)
        async with client.inference("m") as call:
            await asyncio.sleep(0)
            call.set_tokens(tokens_in=1, tokens_out=2)

    try:
        asyncio.run(main())
        assert [h for h, _, _ in client._buffer] == [
            '{"model":"m","tags":{},"weight":8.0,',
            '{"model":"m","tags":{},"tokens_in":1,"tokens_out":2,']
    finally:
        client._buffer.clear()
        client.close(0.01)


def test_a_boolean_weight_is_refused_even_after_the_weight_1():
    client = Client(daemon_url="http://127.0.0.1:9", flush_interval_s=3600)

    @client.track_inference("m", weight=lambda w: w)
    def serve(w: object) -> object:
        return w

    try:
        serve(1)
        serve(True)  # True == 1 and hashes alike: must not reuse 1's head
        assert [h for h, _, _ in client._buffer] == ['{"model":"m","tags":{},"weight":1.0,',
                                                     '{"model":"m","tags":{},']
        assert client.weight_errors_total == 1
    finally:
        client._buffer.clear()
        client.close(0.01)
