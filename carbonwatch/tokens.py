"""Per-token figures: a model's serving energy and emissions per output token and per token.

One definition, used by ``/v1/summary``, the dashboard's Models page and ``report --model`` so the
three agree. The energy is the model's *serving* energy (everything its inference jobs drew,
between calls included), as in "per 1,000 calls". When only some calls reported output tokens,
only their part of it is divided by the tokens: the serving energy times the share of the calls'
own (apportioned) energy that went to calls reporting ``tokens_out`` (``token_energy_share``).
Without that the figure would charge the tokenless calls' energy to the counted tokens.

Joules per output token and per token (in + out) are reported apart: for long prompts they differ
several-fold, and which one a reader means decides the comparison. Figures are None (JSON null)
when no call reported output tokens, and when no serving energy was recorded for the model (calls
that no measured service ran: no process drew energy for them that carbonwatch saw): unknown,
never zero.
"""

from __future__ import annotations

from typing import Any


def token_energy_share(
    calls: int, calls_energy_j: float, token_calls: int, token_energy_j: float
) -> float | None:
    """The share of the serving energy that belongs to the calls that reported tokens_out.

    A scraped server's rows (carbonwatch.scrape) can carry token energy with no finished request
    yet (its counters count tokens as they are generated, requests when they end): that energy is
    still the tokens', so energy without token calls is a share too, not "no tokens reported"."""
    if token_calls <= 0 and not token_energy_j > 0:
        return None
    if token_calls >= calls:
        return 1.0
    if calls_energy_j > 0:
        return min(max(token_energy_j / calls_energy_j, 0.0), 1.0)
    return token_calls / calls  # no energy apportioned yet: by count


def per_token(
    *,
    serving_energy_j: float,
    serving_co2e_g: float,
    calls: int,
    calls_energy_j: float,
    tokens_in: int,
    tokens_out: int,
    token_calls: int,
    token_energy_j: float,
) -> dict[str, Any]:
    """The token fields of a model's figures (see the module docstring)."""
    share = token_energy_share(calls, calls_energy_j, token_calls, token_energy_j)
    out: dict[str, Any] = {
        "tokens_in": int(tokens_in),
        "tokens_out": int(tokens_out),
        "token_calls": int(token_calls),
        "token_energy_share": share,
        "energy_j_per_output_token": None,
        "energy_j_per_token": None,
        "co2e_g_per_1k_output_tokens": None,
    }
    if share is None or tokens_out <= 0 or not serving_energy_j > 0:
        return out
    energy_j, co2e_g = serving_energy_j * share, serving_co2e_g * share
    out["energy_j_per_output_token"] = energy_j / tokens_out
    out["energy_j_per_token"] = energy_j / (tokens_in + tokens_out)
    out["co2e_g_per_1k_output_tokens"] = co2e_g / tokens_out * 1000
    return out
