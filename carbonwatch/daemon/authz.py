"""Who is calling, and what they may do (docs/architecture.md, "Owners and scopes").

Three kinds of caller, three scopes:

- **ingest/read**: inference clients and Prometheus. Over TCP with ``token`` configured, every
  request carries it (``Authorization: Bearer <token>``).
- **a node user**: the local uid on the other end, from the kernel (``SO_PEERCRED``) on the unix
  socket, or from ``/proc/net/tcp{,6}`` on loopback TCP (the connecting socket is this host's own,
  and the kernel lists its owner; see :mod:`carbonwatch.scheduler.peer`). A user owns the jobs it
  registers and may end, merge and see the command lines of those only, and register only pids it
  owns. A local user reaches its own jobs over loopback without a token (``carbonwatch run``, and
  the wrapper of a deferred job, carry none: no token is ever put into a job's environment).
- **operator (admin)**: the admin token, or root / the daemon's own uid on the node. Operators end
  and see every job; launching commands needs the admin token over TCP or the unix socket, where
  the command runs as the peer's uid (see :func:`launch_identity`).

A reverse proxy on the node forwards as its own uid: what arrives through it gets that uid's
own-job rights at most; ingest, reads and launches still need the tokens."""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import os
import socket
import struct
import weakref
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web

from carbonwatch.scheduler.peer import loopback_owner

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
CALLER = web.RequestKey("carbonwatch.caller", object)
TOKENS = web.RequestKey("carbonwatch.tokens", object)  # (ingest or admin token, admin token)
PROC = Path("/proc")
# Routes a local user reaches over loopback without a token: what `carbonwatch run` needs to
# register its command, follow it and end it.
OWN_JOB_ROUTES = (
    ("POST", "/v1/jobs"),
    ("GET", "/v1/jobs/{id}"),
    ("POST", "/v1/jobs/{id}/end"),
)
MIN_TOKEN_BYTES = 32
PLACEHOLDERS = frozenset({
    "changeme", "change-me", "change_me", "replaceme", "replace-me", "secret", "s3cret", "token",
    "password", "example", "test", "default", "admin", "xxx", "todo", "fixme", "carbonwatch",
})


def weak_token(token: str) -> str | None:
    """Why ``token`` is unfit to guard a listener off loopback, or None."""
    low = token.strip().lower()
    if low in PLACEHOLDERS or any(word in low for word in ("change-me", "changeme", "replace")):
        return "is a placeholder"
    size = len(token.encode())
    if size < MIN_TOKEN_BYTES:
        return f"is {size} bytes; at least {MIN_TOKEN_BYTES} are needed"
    return None


@dataclass(frozen=True)
class Caller:
    via: str  # "unix" | "tcp"
    uid: int | None  # the local user on the other end; None: unknown (another machine)
    gid: int | None
    token: bool  # presented the ingest or the admin token
    admin_token: bool  # presented the admin token
    daemon_uid: int

    @property
    def admin(self) -> bool:
        """Operator rights: the admin token, or root / the daemon's own user on the node."""
        return self.admin_token or (self.uid is not None and self.uid in (0, self.daemon_uid))

    def may_manage(self, owner_uid: int | None) -> bool:
        """End, merge, cancel, see the command line of a job owned by ``owner_uid``. A job
        registered from another machine (no owner uid) belongs to the token's holders."""
        if self.admin:
            return True
        if owner_uid is None:
            return self.uid is None and self.token
        return owner_uid == self.uid

    def describe(self) -> str:
        return f"uid {self.uid}" if self.uid is not None else "a caller from another machine"


# (via, uid, gid) per connection: its other end does not change while it is open, and the
# look-up (a netlink round trip, or a /proc/net/tcp pass) was 2-3 % of the daemon's CPU under a
# stream of call batches on one keep-alive connection.
_PEERS: weakref.WeakKeyDictionary[asyncio.BaseTransport, tuple[str, int | None, int | None]] = (
    weakref.WeakKeyDictionary())


def _peer(request: web.Request) -> tuple[str, int | None, int | None]:
    """(via, uid, gid) of the connection's other end, looked up once per connection."""
    transport = request.transport
    if transport is None:
        return "tcp", None, None
    try:
        return _PEERS[transport]
    except (KeyError, TypeError):
        pass
    found = _look_up_peer(transport)
    with contextlib.suppress(TypeError):  # one that cannot be weakly referenced: not cached
        _PEERS[transport] = found
    return found


def _look_up_peer(transport: asyncio.BaseTransport) -> tuple[str, int | None, int | None]:
    sock = transport.get_extra_info("socket")
    if sock is None:
        return "tcp", None, None
    if sock.family == socket.AF_UNIX:
        creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        _pid, uid, gid = struct.unpack("3i", creds)
        return "unix", uid, gid
    peer, local = transport.get_extra_info("peername"), transport.get_extra_info("sockname")
    if not peer or not local:
        return "tcp", None, None
    return "tcp", loopback_owner(peer, local), None


def caller(request: web.Request) -> Caller:
    """The request's caller; the peer look-up (a read of /proc/net/tcp on TCP) is made once per
    request and only by the routes that need it."""
    found = request.get(CALLER)
    if isinstance(found, Caller):
        return found
    via, uid, gid = _peer(request)
    scopes = request.get(TOKENS, (False, False))
    found = Caller(via=via, uid=uid, gid=gid, token=scopes[0], admin_token=scopes[1],
                   daemon_uid=os.geteuid())
    request[CALLER] = found
    return found


def _bearer(request: web.Request) -> bytes | None:
    """The raw Authorization header (bytes, never decoded: a non-UTF-8 header is just wrong)."""
    for name, value in request.raw_headers:
        if name.lower() == b"authorization":
            return value
    return None


def _own_job_route(request: web.Request) -> bool:
    route = request.match_info.route.resource
    path = route.canonical if route is not None else None
    return (request.method, path) in OWN_JOB_ROUTES


def error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


def auth_middleware(token: str, admin_token: str) -> Callable[..., Awaitable[web.StreamResponse]]:
    """Check the bearer token (if any is configured) and note the caller's token scopes.

    The unix socket is guarded by its file mode and the kernel's peer credentials, so it needs
    no token; over TCP with ``token`` set every request needs one, except a local user's own-job
    routes on loopback (see the module doc)."""
    expected = (f"Bearer {token}".encode() if token else None,
                f"Bearer {admin_token}".encode() if admin_token else None)

    @web.middleware
    async def check(request: web.Request, handler: Handler) -> web.StreamResponse:
        given = _bearer(request)
        # compare_digest on both, always: the time taken reveals neither which nor how much
        is_token = hmac.compare_digest(given or b"", expected[0] or b"\0")
        is_admin = hmac.compare_digest(given or b"", expected[1] or b"\0")
        if given is not None and (token or admin_token) and not (is_token or is_admin):
            return error(401, "wrong bearer token: send 'Authorization: Bearer <token>'")
        request[TOKENS] = (is_token or is_admin, is_admin)
        if token and not (is_token or is_admin):
            who = caller(request)
            local_user = who.via == "unix" or (who.uid is not None and _own_job_route(request))
            if not local_user:
                return error(401, "missing bearer token: send 'Authorization: Bearer <token>'")
        return await handler(request)

    return check


# --- pids ----------------------------------------------------------------------------------------


def pid_uid(pid: int, proc: Path = PROC) -> int | None:
    """The real uid of process ``pid`` (the ``Uid:`` line of /proc/PID/status), None when there
    is no such process."""
    try:
        text = (proc / str(pid) / "status").read_text()
    except (OSError, ValueError):
        return None
    for line in text.splitlines():
        if line.startswith("Uid:"):
            return int(line.split()[1])
    return None


def check_pids(who: Caller, pids: tuple[int, ...] | list[int], live: bool) -> None:
    """A job may claim only pids its owner owns (operators: any). Raises ApiError 403/400."""
    from carbonwatch.daemon.validation import ApiError

    if who.admin or not live or not pids:
        return  # replayed pids belong to the recording machine: nothing here to check
    if who.uid is None:
        raise ApiError(403, "cannot tell which local user you are, so cannot check who owns "
                            f"pid {pids[0]}: register from the node (unix socket or loopback) "
                            "or with the admin token")
    for pid in pids:
        owner = pid_uid(pid)
        if owner is None:
            raise ApiError(400, f"pid {pid}: no such process on this node")
        if owner != who.uid:
            raise ApiError(403, f"pid {pid} belongs to uid {owner}, not to you (uid {who.uid}); "
                                "a job may only claim its owner's processes")


# --- launching -------------------------------------------------------------------------------


def launch_identity(who: Caller, admin_configured: bool) -> tuple[int, int]:
    """(uid, gid) a command launched for ``who`` runs as; raises ApiError 403 when ``who`` may
    not launch, naming why.

    Over TCP only the admin token launches (without one configured the launch routes are closed
    there); the command runs as the loopback peer's uid, or as the daemon's user for an operator
    on another machine. On the unix socket any user launches, as itself. A root daemon runs the
    command as that uid and gid; another daemon only as its own user."""
    import pwd

    from carbonwatch.daemon.validation import ApiError

    if who.via == "tcp" and not who.admin_token:
        if not admin_configured:
            raise ApiError(403, "launching or cancelling commands over TCP is closed: this daemon "
                                "has no admin token (CARBONWATCH_ADMIN_TOKEN). Use its unix "
                                "socket (--socket), where a command runs as the user who asks")
        raise ApiError(403, "launching or cancelling commands over TCP needs the admin token "
                            "(CARBONWATCH_ADMIN_TOKEN); the ingest token is not enough")
    uid = who.uid if who.uid is not None else who.daemon_uid
    gid = who.gid
    if gid is None:
        try:
            gid = pwd.getpwuid(uid).pw_gid
        except KeyError:
            gid = uid if uid != who.daemon_uid else os.getegid()
    if who.daemon_uid != 0 and uid != who.daemon_uid:
        raise ApiError(403, f"this daemon runs as uid {who.daemon_uid} and cannot run commands as "
                            f"uid {uid}: only a root daemon runs commands as their submitter")
    return uid, gid
