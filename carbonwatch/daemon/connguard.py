"""Connection bounds below HTTP: a connection that sends no complete request within
``header_timeout_s`` is closed, and each client may hold at most ``max_per_client`` connections
open. A client is a local user where the kernel says which (SO_PEERCRED on the Unix socket,
sock_diag on loopback TCP: every local user shares 127.0.0.1, so one user holding the cap must not
lock out the others), else the peer's address.

aiohttp closes a connection idle between requests after ``keepalive_timeout``, but a client that
keeps sending a byte of headers now and then is never idle to it, and nothing bounds connections:
260 connections that sent nothing once used every file descriptor a 256 limit allowed, so
``/healthz`` timed out and the collectors lost samples. The guard wraps each connection's protocol
(public asyncio calls only) and learns from a middleware when a request starts and ends."""

from __future__ import annotations

import asyncio
import logging
import socket
import struct
from collections import defaultdict
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from carbonwatch.scheduler.peer import quick_loopback_owner

log = logging.getLogger(__name__)

REFUSED = (b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
           b"Connection: close\r\nContent-Length: %d\r\n\r\n%s")


def client_key(transport: asyncio.BaseTransport) -> str:
    """Who a connection belongs to: the peer's uid on a Unix socket or loopback TCP, else its
    address."""
    sock = transport.get_extra_info("socket")
    if sock is not None and sock.family == socket.AF_UNIX:
        try:
            creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                                    struct.calcsize("3i"))
            return f"uid:{struct.unpack('3i', creds)[1]}"
        except OSError:
            return "unix"
    peer, local = transport.get_extra_info("peername"), transport.get_extra_info("sockname")
    if not peer:
        return "unknown"
    uid = quick_loopback_owner(peer, local) if local else None
    return f"uid:{uid}" if uid is not None else str(peer[0])


class _Conn:
    __slots__ = ("key", "started", "active", "timer", "request", "body_bytes")

    def __init__(self, key: str) -> None:
        self.key = key
        self.started = 0  # requests begun since the timer was armed
        self.active = 0  # requests in the handler now
        self.timer: asyncio.TimerHandle | None = None
        self.request: web.Request | None = None  # the one in the handler, if any
        self.body_bytes = -1  # its body bytes received at the last check


def _body_stalled(conn: _Conn) -> bool:
    """The request in the handler is waiting for a body that made no progress since the last
    check (a trickle of headers is cut by the header deadline; this cuts a body that stops)."""
    request = conn.request
    if request is None or not request.body_exists or request.content.is_eof():
        return False
    received = getattr(request.content, "total_bytes", None)
    if received is None:
        return False
    stalled = received == conn.body_bytes
    conn.body_bytes = received
    return stalled


class ConnectionGuard:
    def __init__(self, header_timeout_s: float, max_per_client: int) -> None:
        self.header_timeout_s = header_timeout_s
        self.max_per_client = max_per_client
        self.per_client: dict[str, int] = defaultdict(int)
        self._conns: dict[asyncio.BaseTransport, _Conn] = {}
        self.closed_idle = 0  # connections closed for sending no request in time
        self.refused = 0  # connections refused over the per-client cap

    # --- the protocol side --------------------------------------------------------------------

    def opened(self, transport: asyncio.BaseTransport) -> bool:
        """Register a new connection; False (and a 503 written) when its client is over the cap."""
        key = client_key(transport)
        if self.per_client[key] >= self.max_per_client:
            self.refused += 1
            body = (b'{"error": "too many open connections from this client (%d); '
                    b'close some or raise max_connections_per_client"}' % self.max_per_client)
            if isinstance(transport, asyncio.WriteTransport):
                transport.write(REFUSED % (len(body), body))
                if transport.can_write_eof():
                    transport.write_eof()
            # Closed a moment later, its request read and dropped meanwhile: closing with
            # unread data would reset the connection and lose the answer.
            asyncio.get_running_loop().call_later(1.0, transport.close)
            if self.per_client[key] == 0:
                del self.per_client[key]
            return False
        self.per_client[key] += 1
        conn = _Conn(key)
        self._conns[transport] = conn
        self._arm(transport, conn)
        return True

    def closed(self, transport: asyncio.BaseTransport) -> None:
        conn = self._conns.pop(transport, None)
        if conn is None:
            return
        if conn.timer is not None:
            conn.timer.cancel()
        self.per_client[conn.key] -= 1
        if self.per_client[conn.key] <= 0:
            del self.per_client[conn.key]

    def _arm(self, transport: asyncio.BaseTransport, conn: _Conn) -> None:
        conn.started = 0
        conn.timer = asyncio.get_running_loop().call_later(
            self.header_timeout_s, self._check, transport, conn)

    def _check(self, transport: asyncio.BaseTransport, conn: _Conn) -> None:
        conn.timer = None
        if self._conns.get(transport) is not conn:
            return
        if (conn.active and not _body_stalled(conn)) or (conn.started and not conn.active):
            # being served, or served since the last check: a full timeout again
            self._arm(transport, conn)
            return
        self.closed_idle += 1
        transport.close()

    # --- the request side ---------------------------------------------------------------------

    @web.middleware
    async def middleware(self, request: web.Request,
                         handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                         ) -> web.StreamResponse:
        conn = self._conns.get(request.transport) if request.transport is not None else None
        if conn is None:
            return await handler(request)
        conn.started += 1
        conn.active += 1
        conn.request, conn.body_bytes = request, -1
        try:
            return await handler(request)
        finally:
            conn.active -= 1
            conn.request = None


class _GuardedProtocol(asyncio.Protocol):
    """aiohttp's protocol for one connection, with the guard told of its opening and closing."""

    def __init__(self, inner: asyncio.Protocol, guard: ConnectionGuard) -> None:
        self._inner = inner
        self._guard = guard
        self._admitted = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._admitted = self._guard.opened(transport)
        self._transport = transport
        if self._admitted:
            self._inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        if self._admitted:
            self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self._inner.eof_received() if self._admitted else None

    def connection_lost(self, exc: Exception | None) -> None:
        if self._admitted:
            self._guard.closed(self._transport)
            self._inner.connection_lost(exc)

    def pause_writing(self) -> None:
        if self._admitted:
            self._inner.pause_writing()

    def resume_writing(self) -> None:
        if self._admitted:
            self._inner.resume_writing()


class OneLineHttpErrors(logging.Filter):
    """aiohttp answers a malformed request (a 9 kB request line, a broken header) with a 400 but
    logs a traceback for each one: any client could fill the log. One line instead."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, HttpProcessingError):
            try:
                said = record.getMessage()
            except (TypeError, ValueError):  # never let the log line fail the request
                said = str(record.msg)
            record.msg, record.args = "%s: %s", (said, " ".join(str(exc).split())[:300])
            record.exc_info = None
            record.exc_text = None
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


def quiet_http_errors() -> None:
    """Install :class:`OneLineHttpErrors` on aiohttp's server logger (once)."""
    logger = logging.getLogger("aiohttp.server")
    if not any(isinstance(f, OneLineHttpErrors) for f in logger.filters):
        logger.addFilter(OneLineHttpErrors())


class GuardedRunner(web.AppRunner):
    """An AppRunner whose sites serve every connection through the guard."""

    def __init__(self, app: web.Application, guard: ConnectionGuard, **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        self.guard = guard
        quiet_http_errors()

    @property
    def server(self) -> Any:
        inner = super().server
        if inner is None:
            return None
        guard = self.guard
        return lambda: _GuardedProtocol(inner(), guard)
