"""``carbonwatch run`` with a daemon running: register the command's process with it instead of
measuring a second time (two samplers on one node would read every counter twice).

Stdlib, ``proc.py`` and ``jobreport.py`` only (http.client), so ``carbonwatch run`` pays for
neither aiohttp nor the daemon's imports. When no daemon answers,
:func:`run_if_daemon` returns None and the wrapper measures on its own. ``daemon_url = "none"``
(``CARBONWATCH_DAEMON_URL=none``) turns the look-up off."""

from __future__ import annotations

import http.client
import json
import os
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import urlsplit

from carbonwatch.config import Settings
from carbonwatch.errors import CarbonwatchError
from carbonwatch.jobreport import JobReport
from carbonwatch.proc import pid_alive, spawn, wait_forwarding

PROBE_TIMEOUT_S = 0.5
# With daemon_url set explicitly (the scheduler sets it for the jobs it launches) a daemon is
# expected: one restarting is waited for this long rather than measured beside, which would
# count the node twice.
EXPLICIT_URL_WAIT_S = 10.0
END_WAIT_S = 60.0  # how long a job's end waits for a daemon that is down (restarting)


class UnixHTTPConnection(http.client.HTTPConnection):
    """HTTP over a Unix socket (the daemon's --socket)."""

    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self._path)


class DaemonClient:
    def __init__(self, url: str, token: str = "", timeout_s: float = 30.0) -> None:
        self.url = url
        self.token = token
        self.timeout_s = timeout_s

    def _connection(self, timeout_s: float) -> http.client.HTTPConnection:
        if self.url.startswith("unix:"):
            return UnixHTTPConnection(self.url[len("unix:"):], timeout_s)
        parts = urlsplit(self.url)
        return http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port or 80,
                                          timeout=timeout_s)

    def request(self, method: str, path: str, body: Any = None,
                timeout_s: float | None = None) -> tuple[int, Any]:
        conn = self._connection(timeout_s or self.timeout_s)
        headers = {"Content-Type": "application/json"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        try:
            conn.request(method, path, body=None if body is None else json.dumps(body),
                         headers=headers)
            resp = conn.getresponse()
            return resp.status, json.loads(resp.read() or b"null")
        finally:
            conn.close()


def daemon_url(settings: Settings) -> str | None:
    if settings.daemon_url.lower() == "none":
        return None
    if settings.daemon_url:
        return settings.daemon_url
    if settings.socket:
        return f"unix:{settings.socket}"
    if settings.local_socket:
        return f"unix:{settings.local_socket}"
    host = "127.0.0.1" if settings.host in ("0.0.0.0", "", "::") else settings.host  # noqa: S104
    return f"http://{host}:{settings.port}"


def find_daemon(settings: Settings, wait_s: float = 0.0) -> DaemonClient | None:
    """A client for the daemon that answers /healthz, or None (nothing listening, after trying
    for ``wait_s``)."""
    url = daemon_url(settings)
    if url is None:
        return None
    client = DaemonClient(url, settings.token)
    deadline = time.monotonic() + wait_s
    while True:
        try:
            status, body = client.request("GET", "/healthz", timeout_s=PROBE_TIMEOUT_S)
        except (OSError, http.client.HTTPException, ValueError):
            status, body = 0, None
        # 401: a daemon that wants a token for its health; a local user's own jobs need none
        if status in (200, 401, 503) and isinstance(body, dict):
            return client
        if time.monotonic() >= deadline:
            return None
        time.sleep(0.2)


class EndNotRecorded(CarbonwatchError):
    """The command ran and exited with ``exit_code``, but the daemon did not record its end. The
    wrapper says so and still exits with the command's code: a scheduler or CI script reading it
    must see how the command ended, not a failure of the accounting."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class DaemonRefused(CarbonwatchError):
    """The daemon would not take the job (or could not be asked). The command already runs and
    is left running: ``child`` is handed to the wrapper, which measures it on its own."""

    def __init__(self, child: subprocess.Popen[Any], reason: str) -> None:
        super().__init__(reason)
        self.child = child
        self.reason = reason


def run_if_daemon(
    argv: Sequence[str],
    *,
    settings: Settings,
    name: str | None,
    kind: str,
    model: str | None,
    identity: str | None = None,
    alive: Callable[[int], bool] | None = None,
) -> JobReport | None:
    """Run ``argv`` as a job of the running daemon; None when no daemon answers (nothing run).

    The command runs in its own process group and SIGINT/SIGTERM/SIGHUP are forwarded to it, as
    in :mod:`carbonwatch.runner`; its exit code is returned (128+N when signal N ended it).

    With ``identity`` the command is one rank of a distributed job: the daemon merges the ranks'
    pids into one job (200 ``merged``), and only the last rank to exit ends it (``alive`` says
    whether another rank's pid still runs), so an early rank does not close the job while the
    others still run; a job whose opener ends it (tag ``ended_by``, e.g. the Slurm epilog) is
    left open."""
    # A rank probes once; only a plain run waits for a restarting daemon at an explicit URL.
    wait_s = EXPLICIT_URL_WAIT_S if settings.daemon_url and not identity else 0.0
    client = find_daemon(settings, wait_s)
    if client is None:
        return None
    argv = list(argv)
    child = spawn(argv)
    payload = {
        "name": name or os.path.basename(argv[0]), "kind": kind, "model": model,
        "pid": child.pid, "command": argv,
    }
    if identity:
        payload["identity"] = identity
    try:
        status, body = client.request("POST", "/v1/jobs", payload)
    except (OSError, http.client.HTTPException, ValueError) as exc:
        raise DaemonRefused(child, f"the daemon at {client.url} did not answer: {exc}") from None
    if status not in (200, 201) or not isinstance(body, dict) or "id" not in body:
        # Never kill the user's command over this: it is measured without the daemon instead.
        detail = body.get("error", body) if isinstance(body, dict) else body
        raise DaemonRefused(child, f"the daemon at {client.url} refused the job ({status}): "
                                   f"{detail}")
    exit_code = wait_forwarding(child)
    if identity:
        job = _end_if_last_rank(client, str(body["id"]), exit_code, child.pid, alive)
    else:
        status, job = _end_waiting(client, str(body["id"]), exit_code)
        if status != 200:
            raise EndNotRecorded(
                f"the daemon at {client.url} could not end job {body['id']}: {job}", exit_code
            )
    return JobReport.from_daemon_job(job, argv, exit_code, client.url)


def _end_waiting(client: DaemonClient, job_id: str, exit_code: int) -> tuple[int, Any]:
    """Report the job's end, waiting up to END_WAIT_S for a daemon that is down (restarting):
    left unreported, the job would stay open and be marked lost."""
    return _request_waiting(
        client, "POST", f"/v1/jobs/{job_id}/end", {"exit_code": exit_code}, job_id, exit_code
    )


def _request_waiting(
    client: DaemonClient, method: str, path: str, body: Any, job_id: str, exit_code: int
) -> tuple[int, Any]:
    """One request of a job's end, retried for up to END_WAIT_S while the daemon is down."""
    deadline = time.monotonic() + END_WAIT_S
    while True:
        try:
            return client.request(method, path, body)
        except (OSError, http.client.HTTPException) as exc:
            if time.monotonic() >= deadline:
                raise EndNotRecorded(
                    f"could not report the end of job {job_id} (exit code {exit_code}) to the "
                    f"daemon at {client.url} for {END_WAIT_S:g} s: {exc}", exit_code
                ) from None
            time.sleep(0.5)


def _end_if_last_rank(
    client: DaemonClient,
    job_id: str,
    exit_code: int,
    own_pid: int,
    alive: Callable[[int], bool] | None,
) -> dict[str, Any]:
    """End a merged job unless another rank still runs or its opener ends it; the job's record.
    Like a plain run's end, each request waits for a daemon that is down (restarting)."""
    alive = alive or pid_alive
    def request(method: str, path: str, body: Any = None) -> tuple[int, Any]:
        return _request_waiting(client, method, path, body, job_id, exit_code)

    job_path = f"/v1/jobs/{job_id}"
    # Our child is reaped now. A rank that checks while another still runs leaves the end to it;
    # of two ranks ending together, the later sees the earlier gone and ends the job.
    status, job = request("GET", job_path)
    others = [p for p in (job.get("pids", []) if status == 200 else []) if p != own_pid]
    opener_ends = (job.get("tags") or {}).get("ended_by") if status == 200 else None
    if (
        status == 200
        and job.get("status") == "running"
        and not opener_ends
        and not any(map(alive, others))
    ):
        status, ended = request("POST", f"{job_path}/end", {"exit_code": exit_code})
        if status not in (200, 409):  # 409: another rank ended it just now
            raise EndNotRecorded(
                f"the daemon at {client.url} could not end job {job_id}: {ended}", exit_code
            )
        status, job = request("GET", job_path)
    return {**job, "ended_s": job.get("ended_s") or time.time()}
