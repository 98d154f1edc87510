"""The one HTTP seam every grid provider goes through.

Timeouts, bounded retries with exponential backoff, ``Retry-After`` honoured up to a ceiling, and
every failure mapped to ProviderError. Credentials travel in headers or basic auth and are never
put in an error message or a log line: messages name the provider and the URL path only."""

from __future__ import annotations

import asyncio
import base64
import email.utils
import json
import math
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from carbonwatch.errors import ProviderError

Sleep = Callable[[float], Awaitable[None]]

# Statuses worth another try: the server may answer later. 4xx other than 408/429 will not change.
_RETRYABLE = frozenset({408, 429, 500, 502, 503, 504})


class CredentialsRejected(ProviderError):
    """HTTP 401/403: a cached login token may have expired; a fresh login can cure it."""


@dataclass(frozen=True)
class HttpPolicy:
    """How patient a provider call is. Defaults suit a daemon refreshing every few minutes."""

    timeout_s: float = 10.0
    max_attempts: int = 3
    backoff_s: float = 0.5  # first retry delay; doubles each attempt
    max_backoff_s: float = 8.0
    # A Retry-After above this is not waited for: the call fails now and the fallback chain
    # answers instead, so a rate-limited provider cannot stall accounting for an hour.
    max_retry_after_s: float = 30.0


def _path_of(url: str) -> str:
    # Only scheme, host and path: query strings may carry tokens for some providers.
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}{parts.path}"


def basic_auth(username: str, password: str) -> dict[str, str]:
    """An HTTP basic-auth header (built here: aiohttp's BasicAuth is deprecated in 3.14)."""
    raw = f"{username}:{password}".encode()
    return {"Authorization": "Basic " + base64.b64encode(raw).decode("ascii")}


def retry_after_s(value: str | None, now_s: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or HTTP-date); None if absent."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        seconds = when.timestamp() - (time.time() if now_s is None else now_s)
    if not math.isfinite(seconds):
        return None
    return max(0.0, seconds)


async def fetch_json(
    provider: str,
    url: str,
    *,
    session: aiohttp.ClientSession | None = None,
    params: Mapping[str, str] | None = None,
    headers: Mapping[str, str] | None = None,
    policy: HttpPolicy = HttpPolicy(),
    sleep: Sleep = asyncio.sleep,
) -> Any:
    """GET ``url`` and return its parsed JSON, or raise ProviderError saying what went wrong."""
    if session is None:
        async with aiohttp.ClientSession() as own:
            return await fetch_json(
                provider,
                url,
                session=own,
                params=params,
                headers=headers,
                policy=policy,
                sleep=sleep,
            )
    where = f"{provider} {_path_of(url)}"
    last_error = "no attempt made"
    for attempt in range(1, max(1, policy.max_attempts) + 1):
        wait_s = min(policy.max_backoff_s, policy.backoff_s * 2 ** (attempt - 1))
        try:
            timeout = aiohttp.ClientTimeout(total=policy.timeout_s)
            async with session.get(url, params=params, headers=headers, timeout=timeout) as resp:
                if resp.status == 200:
                    body = await resp.read()
                    return _parse(body, where)
                last_error = f"HTTP {resp.status}"
                if resp.status in (401, 403):
                    raise CredentialsRejected(
                        f"{where}: HTTP {resp.status}, credentials rejected "
                        "(check the token / username and password in settings)"
                    )
                if resp.status not in _RETRYABLE:
                    raise ProviderError(f"{where}: HTTP {resp.status}")
                asked_s = retry_after_s(resp.headers.get("Retry-After"))
                if asked_s is not None:
                    if asked_s > policy.max_retry_after_s:
                        raise ProviderError(
                            f"{where}: HTTP {resp.status}, server asks to retry after "
                            f"{asked_s:.0f} s (more than the {policy.max_retry_after_s:.0f} s "
                            "allowed); giving up for now"
                        )
                    wait_s = asked_s
                if resp.status == 429:
                    last_error = "HTTP 429 (rate limited)"
        except TimeoutError:
            last_error = f"timed out after {policy.timeout_s:g} s"
        except aiohttp.ClientError as exc:
            # The exception text can include the full URL; keep only its class.
            last_error = f"connection failed ({type(exc).__name__})"
        if attempt < policy.max_attempts:
            await sleep(wait_s)
    raise ProviderError(f"{where}: {last_error} after {policy.max_attempts} attempt(s)")


def _parse(body: bytes, where: str) -> Any:
    try:
        # NaN/Infinity are not JSON; Python accepts them by default, so refuse them here.
        return json.loads(body, parse_constant=_reject_constant)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ProviderError(f"{where}: response is not valid JSON (truncated?): {exc}") from exc
    except ValueError as exc:
        raise ProviderError(f"{where}: {exc}") from exc


def _reject_constant(name: str) -> float:
    raise ValueError(f"response contains the non-number {name}")
