"""Call spans' work measures and the ``with carbonwatch.inference(...)`` span (client.py's part
that knows about weights and tokens). Standard library only, like the client.

The bounds are checked on the client, so one bad value never makes the daemon refuse a batch of
10,000 good calls; the encoded fields are appended to the call's pre-encoded JSON head, so the
sender (and a call without work measures) is unchanged."""

from __future__ import annotations

import functools
import inspect
import math
import numbers
import operator
import time
from collections import deque
from collections.abc import Callable
from types import TracebackType
from typing import Any, Protocol


class _Recorder(Protocol):
    def _record(self, head: str, start_s: float, end_s: float) -> None: ...


# The daemon's bounds (carbonwatch.daemon.validation, not imported: this module needs only the
# standard library); a test holds them equal.
MAX_WEIGHT = 1e12
MAX_TOKENS = 10**9
MAX_UNIX_S = 1e10


def check_weight(value: Any, name: str = "weight") -> float:
    """A work measure as the daemon accepts it: a finite real number in [0, MAX_WEIGHT]."""
    kind = type(value)
    if (kind is int or kind is float) and 0 <= value <= MAX_WEIGHT:  # the usual case; NaN fails
        return float(value)
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name}: expected a number, got {type(value).__name__}")
    weight = float(value)
    if not math.isfinite(weight) or not 0.0 <= weight <= MAX_WEIGHT:
        raise ValueError(f"{name}: must be a finite number between 0 and {MAX_WEIGHT:g}, "
                         f"got {value!r}")
    return weight


def check_tokens(value: Any, name: str) -> int:
    """A token count as the daemon accepts it: an integer (numpy's too) in [0, MAX_TOKENS]."""
    if type(value) is int and 0 <= value <= MAX_TOKENS:  # the usual case, without lookups
        return value
    if isinstance(value, bool | float):
        raise TypeError(f"{name}: expected an integer token count, got {value!r}")
    try:
        count = operator.index(value)
    except TypeError:
        raise TypeError(f"{name}: expected an integer token count, got "
                        f"{type(value).__name__}") from None
    if not 0 <= count <= MAX_TOKENS:
        raise ValueError(f"{name}: must be between 0 and {MAX_TOKENS}, got {count}")
    return count


def work_json(weight: float | None, tokens_in: int | None, tokens_out: int | None) -> str:
    """The work fields of a call's JSON (already checked), to append to its head."""
    out = ""
    if weight is not None:
        out += f'"weight":{weight!r},'  # repr of a finite float is valid JSON
    if tokens_in is not None:
        out += f'"tokens_in":{tokens_in},'
    if tokens_out is not None:
        out += f'"tokens_out":{tokens_out},'
    return out


class InferenceSpan:
    """One call's span, as a ``with`` or ``async with`` block."""

    __slots__ = ("_client", "_head", "_t0", "_work", "_done")

    def __init__(self, client: _Recorder, head: str) -> None:
        self._client = client
        self._head = head
        self._t0 = 0.0
        self._work: list[Any] | None = None  # [weight, tokens_in, tokens_out] once one is set
        self._done = False

    def set_tokens(self, tokens_in: int | None = None, tokens_out: int | None = None) -> None:
        """The call's tokens (prompt, generated), set before the block ends; None leaves one
        as it was. Raises ValueError/TypeError for a value the daemon would refuse."""
        checked_in = None if tokens_in is None else check_tokens(tokens_in, "tokens_in")
        checked_out = None if tokens_out is None else check_tokens(tokens_out, "tokens_out")
        work = self._mutable_work()
        if checked_in is not None:
            work[1] = checked_in
        if checked_out is not None:
            work[2] = checked_out

    def set_weight(self, weight: float) -> None:
        """The call's work (batch size, FLOPs), set before the block ends."""
        checked = check_weight(weight)
        self._mutable_work()[0] = checked

    def _mutable_work(self) -> list[Any]:
        if self._done:
            raise RuntimeError("carbonwatch: the call's block has ended and its span was "
                               "recorded; set tokens and weight inside the block")
        if self._work is None:
            self._work = [None, None, None]
        return self._work

    def __enter__(self) -> InferenceSpan:
        self._t0 = time.time()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        t1 = time.time()
        self._done = True
        work = self._work
        head = self._head if work is None else self._head + work_json(*work)
        self._client._record(head, self._t0, t1)

    async def __aenter__(self) -> InferenceSpan:
        return self.__enter__()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.__exit__(exc_type, exc, tb)


def weighted_decorator(
    head: str, weight_of: Callable[..., Any], buf: deque[tuple[str, float, float]], cap: int,
    drop: Callable[[], None], warn: Callable[[Exception], None],
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """The decorator of ``track_inference(model, weight=callable)``: ``weight_of`` gets each
    call's arguments before the call runs. A failing callable or a bad value never breaks the
    call: the span is recorded without a weight and ``warn`` is told."""
    append, now = buf.append, time.time
    # Weights repeat (batch sizes): each distinct one's head is built once. Bounded. Keyed by
    # int and float only, so True never finds 1's head (bool is refused as a weight).
    heads: dict[int | float, str] = {}

    def head_for(args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
        try:
            value = weight_of(*args, **kwargs)
            kind = type(value)
            if kind is int or kind is float:
                found = heads.get(value)  # NaN never matches, so it is always checked
                if found is not None:
                    return found
            checked = check_weight(value)
        except Exception as exc:  # never let the measurement break the serving call
            warn(exc)
            return head
        full = head + work_json(checked, None, None)
        if kind is int or kind is float:
            if len(heads) >= 1024:
                heads.clear()
            heads[value] = full
        return full

    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        if inspect.iscoroutinefunction(fn):

            @functools.wraps(fn)
            async def tracked_async(*args: Any, **kwargs: Any) -> Any:
                h = head_for(args, kwargs)
                t0 = now()
                try:
                    return await fn(*args, **kwargs)
                finally:
                    if len(buf) < cap:
                        append((h, t0, now()))
                    else:
                        drop()

            return tracked_async

        @functools.wraps(fn)
        def tracked(*args: Any, **kwargs: Any) -> Any:
            h = head_for(args, kwargs)
            t0 = now()
            try:
                return fn(*args, **kwargs)
            finally:
                if len(buf) < cap:
                    append((h, t0, now()))
                else:
                    drop()

        return tracked

    return decorate
