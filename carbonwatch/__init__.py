"""carbonwatch: energy, carbon and cost per training job and per inference call.

The public Python API is loaded on first use, so ``import carbonwatch`` stays cheap and pulls in
nothing beyond the standard library (no aiohttp, no dash) in a serving process:

    @carbonwatch.track_inference(model="m")      # or: with carbonwatch.inference("m"): ...
    with carbonwatch.job("finetune", kind="training"): ...
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from carbonwatch.client import Client, default_client, inference, job, track_inference

__all__ = ["Client", "default_client", "inference", "job", "track_inference"]

_CLIENT_EXPORTS = frozenset(__all__)


def __getattr__(name: str) -> Any:
    if name in _CLIENT_EXPORTS:
        from carbonwatch import client

        value = getattr(client, name)
        globals()[name] = value  # later lookups skip this function
        return value
    raise AttributeError(f"module 'carbonwatch' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | _CLIENT_EXPORTS)
