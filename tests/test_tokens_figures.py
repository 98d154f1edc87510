"""carbonwatch.tokens: the one definition of the per-token figures."""

import pytest

from carbonwatch.tokens import per_token


def _figures(**kw):
    base = {"serving_energy_j": 1000.0, "serving_co2e_g": 50.0, "calls": 10,
            "calls_energy_j": 400.0, "tokens_in": 3000, "tokens_out": 500, "token_calls": 10,
            "token_energy_j": 400.0}
    return per_token(**{**base, **kw})


def test_every_call_with_tokens_divides_the_whole_serving_energy():
    f = _figures()
    assert f["token_energy_share"] == 1.0
    assert f["energy_j_per_output_token"] == pytest.approx(2.0)
    assert f["energy_j_per_token"] == pytest.approx(1000 / 3500)  # ~7x less with the prompt
    assert f["co2e_g_per_1k_output_tokens"] == pytest.approx(100.0)


def test_only_the_token_calls_share_of_the_energy_is_divided_by_their_tokens():
    f = _figures(token_calls=4, token_energy_j=100.0)  # a quarter of the calls' own energy
    assert f["token_energy_share"] == pytest.approx(0.25)
    assert f["energy_j_per_output_token"] == pytest.approx(250 / 500)
    # No energy apportioned to any call yet: by count.
    assert _figures(token_calls=4, calls_energy_j=0.0, token_energy_j=0.0)[
        "token_energy_share"] == pytest.approx(0.4)


@pytest.mark.parametrize("kw", [{"token_calls": 0, "tokens_out": 0, "token_energy_j": 0.0},
                                {"tokens_out": 0}, {"serving_energy_j": 0.0}])
def test_unknown_is_null_never_zero(kw):
    f = _figures(**kw)
    assert f["energy_j_per_output_token"] is None
    assert f["energy_j_per_token"] is None
    assert f["co2e_g_per_1k_output_tokens"] is None


def test_token_energy_without_a_finished_request_is_still_the_tokens():
    """A scraped server's minutes: tokens and their energy, before any request ended."""
    f = _figures(calls=0, calls_energy_j=300.0, token_calls=0, token_energy_j=300.0)
    assert f["token_energy_share"] == 1.0
    assert f["energy_j_per_output_token"] == pytest.approx(1000 / 500)
    # Beside client calls that reported no tokens: only the tokens' part of the energy.
    f = _figures(calls=10, calls_energy_j=400.0, token_calls=0, token_energy_j=100.0)
    assert f["token_energy_share"] == pytest.approx(0.25)
    assert f["energy_j_per_output_token"] == pytest.approx(250 / 500)
