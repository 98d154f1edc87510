"""The dashboard's login: a WSGI wrapper that lets a request through only with the read token
(``CARBONWATCH_TOKEN``) or the admin token (``CARBONWATCH_ADMIN_TOKEN``), sent as
``Authorization: Bearer <token>`` (scripts) or as the password of HTTP basic auth (browsers; the
user name is not checked). Everything else, malformed headers included, gets 401 with a basic-auth
challenge, so a browser asks for the login.

The dashboard is read-only, so either token is enough: both scopes may read the store. The
comparison is on the header's raw bytes, with ``hmac.compare_digest`` against every token (not
stopping at the first match), so the time taken does not reveal how much of a token matched.
"""

from __future__ import annotations

import base64
import binascii
import hmac
from collections.abc import Callable, Iterable, Sequence
from typing import Any

# Values that are plainly not secrets (examples from docs, defaults of other tools). A token
# must also be long enough that guessing it over the network is hopeless.
PLACEHOLDERS = frozenset({"change-me", "changeme", "change_me", "secret", "s3cret", "token",
                          "password", "admin", "test", "example", "replace-me", "xxx"})
MIN_TOKEN_BYTES = 32
REALM = "carbonwatch"

WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


def token_problem(name: str, token: str) -> str | None:
    """Why ``token`` is not fit to guard the dashboard, or None. ``name`` is the setting."""
    if token.strip().lower() in PLACEHOLDERS:
        return f"{name} is a placeholder ({token!r}): set a real secret"
    if len(token.encode()) < MIN_TOKEN_BYTES:
        return (f"{name} is {len(token.encode())} bytes; a login token needs at least "
                f"{MIN_TOKEN_BYTES} (e.g. `openssl rand -hex 32`)")
    return None


def _split_scheme(raw: bytes) -> tuple[bytes, bytes]:
    scheme, _, rest = raw.strip().partition(b" ")
    return scheme.lower(), rest.strip()


def credentials(raw: bytes) -> bytes | None:
    """The secret an ``Authorization`` header carries (a bearer token, or basic auth's
    password), or None when the header is missing or malformed."""
    scheme, rest = _split_scheme(raw)
    if scheme == b"bearer" and rest:
        return rest
    if scheme == b"basic" and rest:
        try:
            decoded = base64.b64decode(rest, validate=True)
        except (binascii.Error, ValueError):
            return None
        _user, colon, password = decoded.partition(b":")
        return password if colon else None
    return None


class RequireLogin:
    """Wraps the dashboard's WSGI app: requests without a valid token get 401."""

    def __init__(self, app: WsgiApp, tokens: Sequence[str]) -> None:
        secrets = [t.encode() for t in tokens if t]
        if not secrets:
            raise ValueError("RequireLogin needs at least one token")
        self.app = app
        self._secrets = secrets

    def allowed(self, raw: bytes) -> bool:
        given = credentials(raw)
        if given is None:
            return False
        # Every token is compared, whichever matches: no early exit to time.
        matches = [hmac.compare_digest(given, secret) for secret in self._secrets]
        return any(matches)

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]
                 ) -> Iterable[bytes]:
        # PEP 3333: header values arrive as latin-1 str, i.e. the raw bytes one for one.
        raw = environ.get("HTTP_AUTHORIZATION", "").encode("latin-1", "replace")
        if self.allowed(raw):
            return self.app(environ, start_response)
        body = (b"401: this dashboard needs a login. In a browser: any user name, and the read "
                b"token (CARBONWATCH_TOKEN) or the admin token (CARBONWATCH_ADMIN_TOKEN) as the "
                b"password. From a script: 'Authorization: Bearer <token>'.\n")
        start_response("401 Unauthorized", [
            ("Content-Type", "text/plain; charset=utf-8"),
            ("Content-Length", str(len(body))),
            ("WWW-Authenticate", f'Basic realm="{REALM}", charset="UTF-8"'),
            ("Cache-Control", "no-store"),
        ])
        return [body]
