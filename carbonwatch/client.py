"""In-process client for serving and training code: call spans and job markers to the daemon.

    @carbonwatch.track_inference(model="resnet50", route="/predict")
    def predict(batch): ...

    with carbonwatch.inference("resnet50"):
        ...

    with carbonwatch.inference("llama-3-8b", tokens_in=len(prompt_ids)) as call:
        out = generate(prompt_ids)
        call.set_tokens(tokens_out=len(out))

    with carbonwatch.job("finetune-v3", kind="training", model="resnet50"):
        train()

Cost on the hot path is two ``time.time()`` reads, one tuple and one ``deque.append`` (atomic
under the GIL, so no lock): well under a microsecond. Everything else happens on a background
daemon thread that POSTs batches of up to 10,000 spans to ``{daemon_url}/v1/calls``. When the
daemon is away the serving code never blocks and never sees an exception: spans queue up to
``max_buffer``, further ones are dropped and counted, and the count is reported in the field
``dropped`` once the daemon answers again. Only the standard library is used here (urllib, not
aiohttp), so the serving process gains no dependency.

Work measures (optional: ``weight`` in [0, 1e12], e.g. ``weight=lambda batch: len(batch)``;
integer ``tokens_in``/``tokens_out`` in [0, 10^9]) are checked here, so one bad value never gets a
whole batch refused: a bad argument raises ``ValueError``/``TypeError`` at once; a ``weight``
callable that fails only loses the weight (one warning). Calls without them take the path above.

Settings: ``CARBONWATCH_DAEMON_URL`` (default ``http://127.0.0.1:8787``) and ``CARBONWATCH_TOKEN``
(sent as ``Authorization: Bearer``), read when the client is created.
"""

from __future__ import annotations

import atexit
import functools
import inspect
import json
import logging
import os
import random
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import weakref
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from carbonwatch.client_columnar import CONTENT_TYPE as COLUMNAR_CONTENT_TYPE
from carbonwatch.client_columnar import encode as encode_columnar
from carbonwatch.client_job import Job
from carbonwatch.client_spans import (
    MAX_UNIX_S,
    InferenceSpan,
    check_tokens,
    check_weight,
    weighted_decorator,
    work_json,
)

__all__ = ["Client", "InferenceSpan", "Job", "default_client", "inference", "job",
           "track_inference"]

log = logging.getLogger(__name__)

ENV_DAEMON_URL = "CARBONWATCH_DAEMON_URL"
ENV_TOKEN = "CARBONWATCH_TOKEN"
DEFAULT_DAEMON_URL = "http://127.0.0.1:8787"

F = TypeVar("F", bound=Callable[..., Any])

# One buffered call: (pre-encoded JSON head with model and tags, start_s, end_s).
_Entry = tuple[str, float, float]

# The daemon refuses bodies over 4 MiB; 10,000 calls with short tags take about 1 MB.
_BODY_LIMIT_BYTES = 3_500_000
_HEAD_CACHE_MAX = 4096
_head_cache: dict[object, str] = {}


def _encode_head(model: str, tags: Mapping[str, Any]) -> str:
    """The constant part of a call's JSON, encoded once per decorator, not once per call."""
    tags_json = json.dumps({str(k): str(v) for k, v in tags.items()}, separators=(",", ":"))
    return '{"model":' + json.dumps(str(model)) + ',"tags":' + tags_json + ","


def _head(model: str, tags: Mapping[str, Any]) -> str:
    key: object = model
    if tags:
        key = (model, tuple(sorted((str(k), str(v)) for k, v in tags.items())))
    head = _head_cache.get(key)
    if head is None:
        if len(_head_cache) >= _HEAD_CACHE_MAX:  # per-request tag values would grow it forever
            _head_cache.clear()
        head = _head_cache[key] = _encode_head(model, tags)
    return head


class Client:
    """Buffers call spans and sends them to the daemon from one background thread.

    Most code uses the module functions (``track_inference``, ``inference``, ``job``), which
    share one client built from the environment; tests and unusual set-ups build their own."""

    def __init__(
        self,
        daemon_url: str | None = None,
        token: str | None = None,
        *,
        batch_size: int = 10_000,
        max_buffer: int = 100_000,
        flush_interval_s: float = 0.2,
        timeout_s: float = 1.0,
        max_backoff_s: float = 10.0,
        exit_timeout_s: float = 2.0,
    ) -> None:
        url = daemon_url or os.environ.get(ENV_DAEMON_URL) or DEFAULT_DAEMON_URL
        self.daemon_url = url.rstrip("/")
        self.token = token if token is not None else os.environ.get(ENV_TOKEN, "")
        self.batch_size = batch_size
        self.max_buffer = max_buffer
        self.flush_interval_s = flush_interval_s
        self.timeout_s = timeout_s
        self.max_backoff_s = max_backoff_s
        self.exit_timeout_s = exit_timeout_s
        # The one object the hot path touches. It is never replaced (closures hold it), only
        # cleared, so fork handling can empty it in place.
        self._buffer: deque[_Entry] = deque()
        # Never route to the local daemon through an HTTP proxy from the environment.
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        self._reset_state()
        self._closed = False
        _CLIENTS.add(self)
        atexit.register(self._at_exit)
        self._start()

    def _reset_state(self) -> None:
        self._drop_lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._held: list[_Entry] | None = None  # a batch the daemon has not acknowledged yet
        self._dropped_unreported = 0
        self._deadline_s = float("inf")
        self._down_since_s: float | None = None
        self._thread: threading.Thread | None = None
        self.dropped_total = 0  # spans dropped (buffer full) since this process started
        self.rejected_total = 0  # spans the daemon refused (4xx): not retried
        self._warned_statuses: set[int] = set()  # one warning per refusal status, not per batch
        self.weight_errors_total = 0  # calls whose weight callable failed (recorded without)
        self.sent_total = 0
        self._columnar = True  # send the columnar call form until a daemon refuses it

    def _start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="carbonwatch-client", daemon=True)
        self._thread.start()

    # -- the hot path --------------------------------------------------------------------

    def _drop(self) -> None:
        # Only when the buffer is full: the lock keeps the count exact across serving threads.
        with self._drop_lock:
            self._dropped_unreported += 1
            self.dropped_total += 1

    def track_inference(
        self, model: str, weight: float | Callable[..., Any] | None = None, **tags: Any
    ) -> Callable[[F], F]:
        """Decorator: record one span per call of a sync or async function (also on error).

        ``weight``: a number (every call's work), or a callable given the call's own arguments
        that returns it (``weight=lambda batch: len(batch)``), called before the function runs."""
        head = _head(model, tags)
        if weight is not None and not callable(weight):
            head += work_json(check_weight(weight), None, None)  # constant: part of the head
        elif weight is not None:
            return self._track_weighted(head, weight)
        buf, cap, append, drop, now = (
            self._buffer, self.max_buffer, self._buffer.append, self._drop, time.time,
        )

        def decorate(fn: F) -> F:
            if inspect.iscoroutinefunction(fn):

                @functools.wraps(fn)
                async def tracked_async(*args: Any, **kwargs: Any) -> Any:
                    t0 = now()
                    try:
                        return await fn(*args, **kwargs)
                    finally:
                        if len(buf) < cap:
                            append((head, t0, now()))
                        else:
                            drop()

                return tracked_async  # type: ignore[return-value]

            @functools.wraps(fn)
            def tracked(*args: Any, **kwargs: Any) -> Any:
                t0 = now()
                try:
                    return fn(*args, **kwargs)
                finally:
                    if len(buf) < cap:
                        append((head, t0, now()))
                    else:
                        drop()

            return tracked  # type: ignore[return-value]

        return decorate

    def _track_weighted(self, head: str, weight_of: Callable[..., Any]) -> Callable[[F], F]:
        """``track_inference`` with a weight callable: apart, so plain calls pay nothing for it."""
        return weighted_decorator(  # type: ignore[return-value]
            head, weight_of, self._buffer, self.max_buffer, self._drop, self._warn_weight)

    def _warn_weight(self, exc: Exception) -> None:
        self.weight_errors_total += 1
        if self.weight_errors_total == 1:  # once: this runs per call
            log.warning("carbonwatch: the weight callable failed (%s: %s); calls are recorded "
                        "without a weight", type(exc).__name__, exc)

    def inference(
        self, model: str, *, tokens_in: int | None = None, tokens_out: int | None = None,
        weight: float | None = None, **tags: Any,
    ) -> InferenceSpan:
        """Context manager (``with`` or ``async with``) recording one span for its block.

        Work measures known before the call go here; tokens produced by it are set on the span
        (``call.set_tokens(tokens_out=n)``) before the block ends."""
        span = InferenceSpan(self, _head(model, tags))
        if tokens_in is not None or tokens_out is not None or weight is not None:
            span.set_tokens(tokens_in, tokens_out)
            if weight is not None:
                span.set_weight(weight)
        return span

    def record(
        self, model: str, start_s: float, end_s: float, *, weight: float | None = None,
        tokens_in: int | None = None, tokens_out: int | None = None, **tags: Any,
    ) -> None:
        """One call already timed elsewhere (a server middleware that learns the status and the
        tokens after the response): Unix seconds, ``end_s >= start_s``. Raises ValueError or
        TypeError for a value the daemon would refuse, so it never costs a whole batch."""
        start_s, end_s = float(start_s), float(end_s)
        if not 0.0 <= start_s <= end_s <= MAX_UNIX_S:  # NaN fails too
            raise ValueError(f"start_s, end_s: need 0 <= start_s <= end_s <= {MAX_UNIX_S:.0f} "
                             f"(Unix seconds), got {start_s!r}, {end_s!r}")
        head = _head(model, tags)
        if weight is not None or tokens_in is not None or tokens_out is not None:
            head += work_json(
                None if weight is None else check_weight(weight),
                None if tokens_in is None else check_tokens(tokens_in, "tokens_in"),
                None if tokens_out is None else check_tokens(tokens_out, "tokens_out"),
            )
        self._record(head, start_s, end_s)

    def _record(self, head: str, start_s: float, end_s: float) -> None:
        if len(self._buffer) < self.max_buffer:
            self._buffer.append((head, start_s, end_s))
        else:
            self._drop()

    def job(self, name: str, kind: str = "training", model: str | None = None) -> Job:
        """Context manager marking a training (or other) job: POSTs its start and its end."""
        return Job(self, name, kind, model)

    # -- background sending --------------------------------------------------------------

    def flush(self, timeout_s: float = 5.0) -> bool:
        """Ask the sender to send now; True once everything buffered has been acknowledged."""
        deadline = time.monotonic() + timeout_s
        self._wake.set()
        while time.monotonic() < deadline:
            if not self._buffer and self._held is None and self._dropped_unreported == 0:
                return True
            time.sleep(0.005)
        return False

    def close(self, timeout_s: float | None = None) -> None:
        """Stop the sender after one last bounded attempt to send what is buffered."""
        if self._closed:
            return
        self._closed = True
        self._deadline_s = time.monotonic() + (
            self.exit_timeout_s if timeout_s is None else timeout_s
        )
        self._stop.set()
        self._wake.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(max(self._deadline_s - time.monotonic(), 0.0) + 0.1)
        atexit.unregister(self._at_exit)
        _CLIENTS.discard(self)

    def _at_exit(self) -> None:
        self.close()

    def _run(self) -> None:
        backoff_s = 0.0
        while not self._stop.is_set():
            self._wake.wait(backoff_s or self.flush_interval_s)
            self._wake.clear()
            if self._stop.is_set():
                break
            try:
                ok = self._send_pending(final=False)
            except Exception:  # the sender must outlive any surprise
                log.exception("carbonwatch: unexpected error while sending calls")
                ok = False
            if ok:
                backoff_s = 0.0
            else:  # exponential backoff with jitter, so restarted daemons aren't stampeded
                backoff_s = min(self.max_backoff_s, max(0.25, backoff_s * 2))
                backoff_s *= random.uniform(0.75, 1.0)
        try:
            self._send_pending(final=True)
        except Exception:
            log.exception("carbonwatch: unexpected error while sending calls at exit")

    def _send_pending(self, *, final: bool) -> bool:
        """Send held and buffered spans batch by batch; False when the daemon did not answer."""
        while True:
            if final and time.monotonic() >= self._deadline_s:
                return False
            if self._held is None:
                take = min(self.batch_size, len(self._buffer))
                popleft = self._buffer.popleft
                self._held = [popleft() for _ in range(take)]
            if not self._held and self._dropped_unreported == 0:
                self._held = None
                return True
            done = self._post_calls(self._held, final=final)
            if done is None:
                return False
            # Only the acknowledged front leaves: a retry never sends a call twice.
            self._held = self._held[done:] or None
            if self._held is None and not self._buffer:
                return True

    def _post_calls(self, batch: list[_Entry], *, final: bool) -> int | None:
        """POST the front of ``batch``; how many calls the daemon took (or refused for good),
        None when it did not answer."""
        pid = os.getpid()
        dropped = self._dropped_unreported
        # The columnar form: ~4x less sender CPU per span than the objects below, and cheaper for
        # the daemon to decode. A daemon that predates it answers 400; then objects from here on.
        if self._columnar:
            body = encode_columnar(batch, pid, dropped)
            if len(body) <= _BODY_LIMIT_BYTES:
                status = self._post("/v1/calls", body, self._timeout(final),
                                    COLUMNAR_CONTENT_TYPE)
                if status in (400, 415):
                    self._columnar = False
                    log.info("carbonwatch: daemon refused the columnar call form (HTTP %d); "
                             "sending call objects", status)
                else:
                    return self._settle(status, len(batch), dropped)
        # Built by hand from the pre-encoded heads: json.dumps of 10,000 dicts costs the serving
        # process ~3x more. repr() of a finite float is valid JSON and round-trips exactly.
        parts = [f'{h}"pid":{pid},"start":{t0!r},"end":{t1!r}}}' for h, t0, t1 in batch]
        n = len(parts)
        if sum(map(len, parts)) + n > _BODY_LIMIT_BYTES:  # only with very large tags
            size, n = 0, 0
            for part in parts:
                size += len(part) + 1
                if size > _BODY_LIMIT_BYTES:
                    break
                n += 1
            n = max(n, 1)
        body = ('{"calls":[' + ",".join(parts[:n]) + '],"dropped":' + str(dropped) + "}").encode()
        return self._settle(self._post("/v1/calls", body, self._timeout(final)), n, dropped)

    def _timeout(self, final: bool) -> float:
        if final:
            return min(self.timeout_s, max(self._deadline_s - time.monotonic(), 0.05))
        return self.timeout_s

    def _settle(self, status: int | None, n: int, dropped: int) -> int | None:
        """Book the daemon's answer to ``n`` calls; how many leave the queue (None: retry)."""
        if status is None or status >= 500 or status in (408, 429):
            return None
        with self._drop_lock:
            self._dropped_unreported -= dropped
        if status >= 400:
            # Retrying a request the daemon refuses (bad token, bad data) would jam the queue.
            self.rejected_total += n
            if status not in self._warned_statuses:
                self._warned_statuses.add(status)
                log.warning("carbonwatch: daemon refused %d calls (HTTP %d); not retried",
                            n, status)
        else:
            self.sent_total += n
        return n

    def _post(self, path: str, body: bytes, timeout_s: float,
              content_type: str = "application/json") -> int | None:
        """POST JSON; the HTTP status, or None when the daemon could not be reached."""
        status, _ = self._request(path, body, timeout_s, content_type)
        return status

    def _request(self, path: str, body: bytes, timeout_s: float,
                 content_type: str = "application/json") -> tuple[int | None, bytes]:
        headers = {"Content-Type": content_type}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        req = urllib.request.Request(
            self.daemon_url + path, data=body, headers=headers, method="POST"
        )
        try:
            with self._opener.open(req, timeout=timeout_s) as resp:
                payload = resp.read()
                status = resp.status
        except urllib.error.HTTPError as e:
            self._mark_up()
            return e.code, b""
        except Exception as e:  # refused, timed out, reset, bad status line: all "away"
            self._mark_down(e)
            return None, b""
        self._mark_up()
        return status, payload

    def _mark_down(self, error: Exception) -> None:
        if self._down_since_s is None:
            self._down_since_s = time.monotonic()
            log.warning(
                "carbonwatch: daemon at %s unreachable (%s); buffering up to %d calls",
                self.daemon_url, error, self.max_buffer,
            )

    def _mark_up(self) -> None:
        if self._down_since_s is not None:
            log.info("carbonwatch: daemon at %s is back", self.daemon_url)
            self._down_since_s = None

    def _post_json(self, path: str, payload: Mapping[str, Any]) -> tuple[int | None, Any]:
        status, data = self._request(path, json.dumps(payload).encode(), self.timeout_s)
        try:
            return status, json.loads(data) if data else None
        except ValueError:
            return status, None

    def _after_fork_in_child(self) -> None:
        # The child inherits the parent's unsent spans (the parent sends those) and no thread.
        self._buffer.clear()
        self._reset_state()
        if not self._closed:
            self._start()


# -- fork safety and the shared default client ---------------------------------------------

_CLIENTS: weakref.WeakSet[Client] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for client in list(_CLIENTS):
        client._after_fork_in_child()


os.register_at_fork(after_in_child=_after_fork_in_child)

_default: Client | None = None
_default_lock = threading.Lock()


def default_client() -> Client:
    """The process-wide client, built from the environment on first use."""
    global _default
    if _default is None:
        with _default_lock:
            if _default is None:
                _default = Client()
    return _default


def track_inference(
    model: str, weight: float | Callable[..., Any] | None = None, **tags: Any
) -> Callable[[F], F]:
    """Decorator recording one call span per invocation (sync or async), tagged ``tags``;
    ``weight`` a number or a callable given the call's arguments."""
    return default_client().track_inference(model, weight, **tags)


def inference(
    model: str, *, tokens_in: int | None = None, tokens_out: int | None = None,
    weight: float | None = None, **tags: Any,
) -> InferenceSpan:
    """``with carbonwatch.inference("m") as call:`` records one call span for the block;
    ``call.set_tokens(tokens_in=, tokens_out=)`` adds what the call produced."""
    return default_client().inference(
        model, tokens_in=tokens_in, tokens_out=tokens_out, weight=weight, **tags)


def job(name: str, kind: str = "training", model: str | None = None) -> Job:
    """``with carbonwatch.job("name"):`` marks this process as running a job."""
    return default_client().job(name, kind=kind, model=model)
