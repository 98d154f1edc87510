"""ASGI middleware (Starlette, FastAPI, any ASGI app): every HTTP request is an inference call.

    from carbonwatch.integrations.asgi import CarbonwatchMiddleware

    app.add_middleware(CarbonwatchMiddleware, model="llama-3.1-8b")
    # or: CarbonwatchMiddleware(app, model=lambda scope: scope["path_params"].get("model"))
    # (the callable is asked after the app answered, when the router has filled path_params)

Each request is recorded through the in-process client (``carbonwatch.client``: a bounded buffer
and one background sender; nothing here talks to the daemon), with tags ``route`` (the matched
route's template, e.g. ``/v1/items/{item_id}``, so tag values stay few; ``(unmatched)`` when no
route matched) and ``status``. OpenAI-style ``usage`` (``prompt_tokens``, ``completion_tokens``)
becomes the call's ``tokens_in`` and ``tokens_out``:

- a JSON response (``application/json`` or ``+json``, not content-encoded) is copied up to
  ``max_body_bytes`` while it passes through, and read once the response is complete; a larger
  one passes through and gets no tokens;
- a ``text/event-stream`` (OpenAI's ``stream_options: {"include_usage": true}`` sends usage in
  its last ``data:`` event) keeps only the latest event that mentions ``"usage"``, which is read
  at the end; without one the call has no tokens.

Every message is forwarded to the server as it comes, so streaming is never delayed or buffered.
A call is recorded also when the app raises (status 500 when no response had started).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from typing import Any

from carbonwatch.client import Client, default_client
from carbonwatch.client_spans import MAX_TOKENS

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

log = logging.getLogger(__name__)
UNMATCHED = "(unmatched)"
MAX_MODEL_LEN, MAX_TAG_LEN = 256, 1024  # what the daemon accepts (daemon/validation.py)
_OTHER, _JSON, _SSE = 0, 1, 2
_USAGE = b'"usage"'
# Client.record's own keyword arguments: a tag of that name would be taken for one of them.
_RECORD_PARAMS = frozenset({"model", "start_s", "end_s", "weight", "tokens_in", "tokens_out"})


def _route_template(scope: Scope) -> str:
    """Starlette's router leaves the matched route in the scope (``scope["route"]``)."""
    path = getattr(scope.get("route"), "path", None)
    return path if isinstance(path, str) and path else UNMATCHED


def usage_tokens(body: bytes) -> tuple[int | None, int | None]:
    """(prompt_tokens, completion_tokens) from a JSON object's ``usage``; None where absent or
    not a whole number in [0, MAX_TOKENS] (a count the daemon would refuse is left out, not
    sent: the call is still recorded)."""
    try:
        obj = json.loads(body)
    except (ValueError, RecursionError):  # not JSON, not UTF-8, or nested past the stack
        return None, None
    usage = obj.get("usage") if isinstance(obj, dict) else None
    if not isinstance(usage, dict):
        return None, None
    out = []
    for key in ("prompt_tokens", "completion_tokens"):
        value = usage.get(key)
        out.append(value if type(value) is int and 0 <= value <= MAX_TOKENS else None)
    return out[0], out[1]


class _Response:
    """What the middleware learns about one response while it passes through."""

    __slots__ = ("status", "kind", "buf", "pending", "last_usage", "limit")

    def __init__(self, limit: int) -> None:
        self.status = 500  # until the app starts a response
        self.kind = _OTHER
        self.buf = bytearray()  # the JSON body so far
        self.pending = b""  # an event-stream's incomplete last event
        self.last_usage = b""  # the latest complete event that mentions "usage"
        self.limit = limit

    def start(self, message: Message) -> None:
        self.status = int(message.get("status", 500))
        ctype = encoding = b""
        for name, value in message.get("headers") or ():
            lname = name.lower()
            if lname == b"content-type":
                ctype = value.lower()
            elif lname == b"content-encoding":
                encoding = value.lower().strip()
        if encoding not in (b"", b"identity"):
            return  # compressed: usage cannot be read without decompressing; leave it
        media = ctype.split(b";", 1)[0].strip()
        if media == b"application/json" or media.endswith(b"+json"):
            self.kind = _JSON
        elif media == b"text/event-stream":
            self.kind = _SSE

    def body(self, chunk: bytes) -> None:
        if self.kind == _JSON:
            if len(self.buf) + len(chunk) > self.limit:
                self.kind, self.buf = _OTHER, bytearray()  # too large: passes through unread
            else:
                self.buf += chunk
        elif self.kind == _SSE and chunk:
            if self.pending:
                chunk, self.pending = self.pending + chunk, b""
            if not (chunk.endswith(b"\n\n") or chunk.endswith(b"\r\n\r\n")):
                # Events end with a blank line; the unfinished tail waits for the next chunk.
                cut = max(chunk.rfind(b"\n\n"), chunk.rfind(b"\r\n\r\n"))
                chunk, self.pending = (chunk[:cut], chunk[cut:]) if cut >= 0 else (b"", chunk)
                if len(self.pending) > self.limit:
                    self.pending = b""  # one event larger than the bound: not read
            # The latest complete events that mention usage (OpenAI's chunks carry "usage": null
            # until the last): kept by reference, read once at the end.
            if _USAGE in chunk and len(chunk) <= self.limit:
                self.last_usage = chunk

    def tokens(self) -> tuple[int | None, int | None]:
        if self.kind == _JSON and self.buf:
            return usage_tokens(bytes(self.buf))
        if self.kind == _SSE:
            event = self.last_usage
            if self.pending and _USAGE in self.pending:  # a stream that did not end its event
                event = self.pending
            for line in reversed(event.splitlines()):
                line = line.strip()
                if line.startswith(b"data:") and _USAGE in line:
                    return usage_tokens(line[5:].strip())
        return None, None


class CarbonwatchMiddleware:
    """Records each HTTP request as a call of ``model``: a name, or a callable of the ASGI scope
    (asked once the app has answered, so Starlette's ``path_params`` and ``route`` are there)
    returning one, or None to leave the request unrecorded."""

    def __init__(
        self,
        app: ASGIApp,
        model: str | Callable[[Scope], str | None],
        *,
        client: Client | None = None,
        max_body_bytes: int = 1 << 20,
        route: Callable[[Scope], str] = _route_template,
        tags: Mapping[str, Any] | None = None,
    ) -> None:
        self.app = app
        self.model = model
        self._client = client
        self.max_body_bytes = max_body_bytes
        self.route = route
        self.tags = {str(k): str(v) for k, v in (tags or {}).items()}
        clash = sorted(_RECORD_PARAMS.intersection(self.tags))
        if clash:  # they would reach Client.record as its own arguments, not as tags
            raise ValueError(f"tags: {', '.join(clash)} cannot be a tag name here (a parameter "
                             "of Client.record)")
        if len(self.tags) > 62 or any(len(k) > MAX_MODEL_LEN or len(v) > MAX_TAG_LEN
                                      for k, v in self.tags.items()):
            raise ValueError("tags: at most 62 (route and status are added), keys up to "
                             f"{MAX_MODEL_LEN} and values up to {MAX_TAG_LEN} characters")
        # (route, status) -> the call's tags, built once: routes are templates, statuses few.
        self._tags: dict[tuple[str, int], dict[str, str]] = {}

    @property
    def client(self) -> Client:
        if self._client is None:  # built on first use, from the serving process's environment
            self._client = default_client()
        return self._client

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        response = _Response(self.max_body_bytes)

        async def forward(message: Message) -> None:
            kind = message["type"]
            if kind == "http.response.body":
                response.body(message.get("body", b""))
            elif kind == "http.response.start":
                response.start(message)
            await send(message)

        start_s = time.time()
        try:
            await self.app(scope, receive, forward)
        finally:
            end_s = time.time()
            model = self._model_of(scope)
            if model:
                self._record(model, scope, response, start_s, end_s)

    def _model_of(self, scope: Scope) -> str | None:
        """The model, asked after the app ran: the router has then put the matched route and its
        ``path_params`` in the scope. A callable that fails leaves the request unrecorded."""
        if isinstance(self.model, str):
            return self.model
        try:
            model = self.model(scope)
        except Exception:  # never turn a served request into an error
            log.exception("carbonwatch: the model callable failed; request not recorded")
            return None
        if not model:
            return None
        model = str(model)
        if len(model) > MAX_MODEL_LEN or model.isspace():
            # The daemon would refuse the whole batch for it, with other requests' calls.
            log.warning("carbonwatch: model name %r is not 1-%d characters; request not "
                        "recorded", model[:40], MAX_MODEL_LEN)
            return None
        return model

    def _record(self, model: str, scope: Scope, response: _Response, start_s: float,
                end_s: float) -> None:
        key = (self.route(scope), response.status)
        tags = self._tags.get(key)
        if tags is None:
            if len(self._tags) >= 4096:  # a route callable with unbounded names
                self._tags.clear()
            tags = self._tags[key] = {**self.tags, "route": key[0][:MAX_TAG_LEN],
                                      "status": str(key[1])}
        tokens_in, tokens_out = response.tokens() if response.kind != _OTHER else (None, None)
        try:
            self.client.record(model, start_s, end_s, tokens_in=tokens_in,
                               tokens_out=tokens_out, **tags)
        except (TypeError, ValueError):  # never turn a served request into an error
            log.exception("carbonwatch: request not recorded")
