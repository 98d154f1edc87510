"""Where the daemon listens, and what it refuses to listen on: off loopback only with a strong
token; unix sockets created owner-only and widened once bound."""

from __future__ import annotations

import os
from pathlib import Path

from aiohttp import web

from carbonwatch.config import Settings, is_loopback
from carbonwatch.daemon.authz import MIN_TOKEN_BYTES, weak_token
from carbonwatch.errors import ConfigError


def check_bind(settings: Settings) -> None:
    """Off loopback the API must be authenticated: refuse to start without a token, or with one
    too short or a known placeholder (``change-me``) that anyone could guess."""
    if settings.socket:
        return  # a Unix socket is guarded by its file permissions
    if is_loopback(settings.host):
        return
    if not settings.token:
        raise ConfigError(
            f"refusing to listen on {settings.host}:{settings.port} without a token: off loopback "
            "every request must carry one. Set CARBONWATCH_TOKEN (or token in the config file), "
            "or listen on 127.0.0.1"
        )
    for name, value in (("CARBONWATCH_TOKEN", settings.token),
                        ("CARBONWATCH_ADMIN_TOKEN", settings.admin_token)):
        why = weak_token(value) if value else None
        if why:
            raise ConfigError(
                f"refusing to listen on {settings.host}:{settings.port}: {name} {why}. Off "
                f"loopback a token must be a secret of at least {MIN_TOKEN_BYTES} random bytes, "
                "e.g. `openssl rand -hex 32`"
            )


async def unix_site(runner: web.AppRunner, path: Path, mode: int) -> None:
    """Listen on the unix socket ``path`` with ``mode``: created owner-only and widened once
    bound, so no one connects in between under a looser umask."""
    if path.is_socket():
        path.unlink()  # a stale socket from a previous run
    old = os.umask(0o177)
    try:
        await web.UnixSite(runner, str(path)).start()
    finally:
        os.umask(old)
    os.chmod(path, mode)


def url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host
