"""A bounded property-based fuzz of every route in the daemon's own ``/v1/openapi.json``, with
schemathesis, against a live ``carbonwatch daemon`` process: no answer is a 5xx, no traceback
reaches the daemon's log, and the daemon stops cleanly and starts again on the same store.

Each operation gets schemathesis's positive cases (valid by the schema) and negative ones
(violating it). The schema cannot say everything a handler checks (a deferred job needs a deadline
*and* a duration, a job a live pid), so half the positive cases are laid over a request the
handler accepts: the fuzzed fields replace its own, and the request reaches the code behind the
validation. Routes with an ``{id}`` are fuzzed with ids the run created and one that does not
exist. Requests carry the admin token where the daemon knows one (so the launch routes are
reachable over TCP), else the read token. Failures are collected, not stopped at, so one run
lists every 5xx with the curl command that reproduces it.

Bounded: ``CARBONWATCH_FUZZ_EXAMPLES`` examples per operation and mode (default 100) and a time
budget for the whole fuzz (``CARBONWATCH_FUZZ_BUDGET_S``, default 75 s): about a minute on two
cores. The fuzzed daemon runs commands that requests choose (``POST /v1/deferred``), so under root
it runs as ``nobody``, in a folder of its own.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import pytest
from daemon_helpers import DaemonProcess
from hypothesis import HealthCheck, Phase, Verbosity, given, settings
from hypothesis import strategies as st

schemathesis = pytest.importorskip("schemathesis", reason="schemathesis is not installed")

TOKEN = "fuzz-read-" + "0123456789abcdef" * 3  # 58 bytes
ADMIN_TOKEN = "fuzz-admin-" + "fedcba9876543210" * 3
EXAMPLES = int(os.environ.get("CARBONWATCH_FUZZ_EXAMPLES", "100"))
BUDGET_S = float(os.environ.get("CARBONWATCH_FUZZ_BUDGET_S", "75"))
NOBODY = 65534
MISSING_ID = "0000000000000000"


class _Unprivileged(DaemonProcess):
    """The daemon as nobody:nogroup when the tests run as root (setpriv, util-linux)."""

    def command(self) -> list[str]:
        if os.geteuid() != 0:
            return super().command()
        drop = ["setpriv", "--reuid", str(NOBODY), "--regid", str(NOBODY), "--clear-groups"]
        return [*drop, *super().command()]


@pytest.fixture
def home() -> Iterator[Path]:
    """A folder the unprivileged daemon may use (pytest's tmp_path is closed to nobody)."""
    base = Path(tempfile.mkdtemp(prefix="cw-fuzz-"))
    base.chmod(0o755)
    try:
        if os.geteuid() == 0:
            if shutil.which("setpriv") is None:
                pytest.skip("running as root without setpriv (util-linux): the fuzzed daemon "
                            "must not run commands as root")
            os.chown(base, NOBODY, NOBODY)
        yield base
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _daemon(home: Path) -> DaemonProcess:
    env = {"CARBONWATCH_TOKEN": TOKEN, "CARBONWATCH_ADMIN_TOKEN": ADMIN_TOKEN,
           "XDG_CONFIG_HOME": str(home),
           "XDG_DATA_HOME": str(home), "HOME": str(home)}
    return _Unprivileged(home / "cw.db", "--backend", "none", env=env)


def _valid_bodies(now_s: float, pid: int) -> dict[tuple[str, str], dict[str, Any]]:
    """A request each body-taking handler accepts, for the fuzzed fields to be laid over."""
    return {
        ("POST", "/v1/jobs"): {"name": "fuzz", "kind": "training", "pid": pid},
        ("POST", "/v1/calls"): {"calls": [{"model": "fuzz-model", "start": now_s - 2.0,
                                           "end": now_s - 1.0}]},
        ("POST", "/v1/jobs/{id}/end"): {"exit_code": 0},
        # Planned within the hour; /bin/true if it ever runs, as nobody.
        ("POST", "/v1/deferred"): {"command": ["/bin/true"], "deadline_s": now_s + 3600.0,
                                   "duration_s": 60.0},
    }


class _Spent(Exception):
    """This run's share of the time budget is used up: stop generating."""


def _strongest_token(daemon: DaemonProcess) -> str:
    """The admin token where the daemon has admin scopes (then every route, launching
    included, is reachable over TCP), else the read token."""
    status, _ = daemon.request("GET", "/v1/jobs", token=ADMIN_TOKEN)
    return ADMIN_TOKEN if status == 200 else TOKEN


@dataclass
class Fuzz:
    url: str
    budget_end: float
    bases: dict[tuple[str, str], dict[str, Any]]
    token: str
    run_end: float = 0.0

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}
    ids: dict[str, list[str]] = field(default_factory=lambda: {"jobs": [], "deferred": []})
    failures: list[str] = field(default_factory=list)
    sent: dict[str, int] = field(default_factory=dict)

    def send(self, op: Any, case: Any) -> None:
        if time.monotonic() > self.run_end:
            raise _Spent
        self.sent[op.label] = self.sent.get(op.label, 0) + 1
        try:
            resp = case.call(base_url=self.url, headers=self.auth, timeout=30)
        except Exception as exc:  # no answer at all is a failure too (a crash, a hang)
            self.failures.append(f"{op.label}: no answer ({type(exc).__name__}: {exc})\n  "
                                 + case.as_curl_command(headers=self.auth, base_url=self.url))
            return
        if resp.status_code >= 500:
            self.failures.append(
                f"{op.label}: HTTP {resp.status_code} {resp.text[:200]!r}\n  "
                + case.as_curl_command(headers=self.auth, base_url=self.url))
        elif resp.status_code == 201 and case.method == "POST":
            created = resp.json().get("id")
            kind = "deferred" if "deferred" in op.path else "jobs"
            if isinstance(created, str) and len(self.ids[kind]) < 3:
                self.ids[kind].append(created)

    def run(self, op: Any, runs_left: int, path_parameters: dict[str, str] | None = None
            ) -> None:
        """Fuzz one operation in its share of what is left of the budget: a slow machine fuzzes
        every route less, rather than some routes not at all."""
        now = time.monotonic()
        self.run_end = now + max(self.budget_end - now, 0.0) / max(runs_left, 1)
        base = self.bases.get((op.method.upper(), op.path))
        modes = [schemathesis.GenerationMode.POSITIVE]
        if len(op.query) or len(op.body):  # something to violate (a path id is any string)
            modes.append(schemathesis.GenerationMode.NEGATIVE)
        for mode in modes:
            strategy = op.as_strategy(generation_mode=mode, path_parameters=path_parameters)
            over_valid = base is not None and mode is schemathesis.GenerationMode.POSITIVE
            # Bodies laid over a valid request reach the most code: three times the examples.
            examples = EXAMPLES * 3 if over_valid else EXAMPLES

            @given(case=strategy, lay_over=st.booleans() if over_valid else st.just(False))
            @settings(max_examples=examples, deadline=None, database=None,
                      phases=[Phase.explicit, Phase.generate], verbosity=Verbosity.quiet,
                      suppress_health_check=list(HealthCheck))
            def fuzz(case: Any, lay_over: bool) -> None:
                if lay_over and isinstance(case.body, dict):
                    case.body = {**base, **case.body}
                self.send(op, case)

            # The first request of a run is always sent: every route is fuzzed at least once.
            self.run_end = max(self.run_end, time.monotonic() + 0.5)
            with contextlib.suppress(_Spent):
                fuzz()


@contextlib.contextmanager
def _as_daemon_user() -> Iterator[None]:
    """The fuzz's connections made as the daemon's own user (nobody, under root).

    A launch runs as the loopback peer's uid, and a daemon that is not root runs commands as no
    uid but its own: submissions from root's sockets would all be refused (403), and no deferred
    job would exist for the ``{id}`` routes. A socket's owner (what the daemon reads from
    sock_diag or /proc/net/tcp) is the file-system uid of the thread creating it: that uid is
    switched for the ``socket()`` call alone (``setfsuid``), so the test process keeps reading
    its own files and modules as root. Not around all of urllib3's create_connection: that
    imports the idna codec on first use, which as nobody (no CAP_DAC_OVERRIDE, /root closed)
    fails with LookupError, and then no request was ever sent."""
    if os.geteuid() != 0:
        yield  # the daemon already runs as this user
        return
    import ctypes
    import socket
    import types

    from urllib3.util import connection

    libc = ctypes.CDLL(None, use_errno=True)

    def socket_as_daemon_user(*args: Any, **kwargs: Any) -> socket.socket:
        libc.setfsuid(NOBODY)
        try:
            return socket.socket(*args, **kwargs)
        finally:
            libc.setfsuid(0)

    # urllib3 reaches socket.socket through its module's ``socket`` name: that name alone is
    # replaced, by the socket module with ``socket`` swapped.
    module = types.SimpleNamespace(**vars(socket))
    module.socket = socket_as_daemon_user
    connection.socket = module  # type: ignore[assignment]
    try:
        yield
    finally:
        connection.socket = socket


def _tracebacks(log: str) -> list[str]:
    """The log's tracebacks, one line per kind: the exception (the first of its kind), the
    innermost carbonwatch frame, and how many times."""
    kinds: dict[tuple[str, str], list[str]] = {}
    for block in log.split("Traceback (most recent call last):")[1:]:
        lines = block.splitlines()[1:]
        # Frames and source are indented; the exception is the first line that is not.
        error = next((line for line in lines if line and not line[0].isspace()), "?")
        ours = [line.strip() for line in lines if line.lstrip().startswith("File ")
                and "/carbonwatch/" in line]
        where = "carbonwatch/" + ours[-1].split("/carbonwatch/", 1)[1] if ours else "elsewhere"
        kinds.setdefault((error.split(":", 1)[0], where), []).append(error)
    return [f"{errors[0]} ({len(errors)}x)  [{where}]"
            for (_kind, where), errors in sorted(kinds.items())]


def _children(proc: psutil.Process) -> list[psutil.Process]:
    with contextlib.suppress(psutil.Error):
        return proc.children(recursive=True)
    return []


def _end(processes: list[psutil.Process]) -> None:
    """Jobs the fuzzed daemon launched (in sessions of their own, so they outlive it)."""
    for p in processes:
        with contextlib.suppress(psutil.Error):
            p.kill()
    psutil.wait_procs(processes, timeout=10)


def test_every_route_fuzzed_gives_no_5xx_no_traceback_and_the_daemon_restarts(home):
    daemon = _daemon(home).start()
    launched: list[psutil.Process] = []
    sleeper = None
    try:
        # A live pid for jobs to claim, owned by the daemon's user.
        sleeper = psutil.Popen(["sleep", "600"], **({"user": NOBODY, "group": NOBODY}  # noqa: S607
                                                   if os.geteuid() == 0 else {}))
        # The document as the daemon serves it (from_url would leave its own route out).
        status, document = daemon.request("GET", "/v1/openapi.json", token=TOKEN)
        assert status == 200
        operations = [result.ok() for result in
                      schemathesis.openapi.from_dict(document).get_all_operations()]
        documented = {(op.method.upper(), op.path) for op in operations}
        assert documented == {(method.upper(), path) for path, ops in document["paths"].items()
                              for method in ops}
        assert len(documented) >= 14 and ("POST", "/v1/deferred") in documented

        fuzz = Fuzz(daemon.url, time.monotonic() + BUDGET_S,
                    _valid_bodies(time.time(), sleeper.pid), _strongest_token(daemon))
        # Routes that create first, so the {id} routes get real ids (up to 3, and a missing one).
        ordered = sorted(operations, key=lambda o: "{id}" in o.path)
        with _as_daemon_user():
            for i, op in enumerate(ordered):
                later = sum(4 if "{id}" in o.path else 1 for o in ordered[i + 1:])
                if "{id}" not in op.path:
                    fuzz.run(op, 1 + later)
                    continue
                ids = fuzz.ids["deferred" if "deferred" in op.path else "jobs"]
                targets = [*ids, MISSING_ID]
                for j, job_id in enumerate(targets):
                    fuzz.run(op, len(targets) - j + later, {"id": job_id})
                launched += _children(psutil.Process(daemon.proc.pid))
        assert set(fuzz.sent) == {op.label for op in operations}, "a route was never fuzzed"
        assert fuzz.ids["jobs"] and fuzz.ids["deferred"], "nothing was created: fuzz too shallow"
        status, health = daemon.request("GET", "/healthz", token=TOKEN)
        assert status in (200, 503) and "status" in health  # still answering
        launched += _children(psutil.Process(daemon.proc.pid))
        exit_code = daemon.stop()
    finally:
        if daemon.proc is not None and daemon.proc.poll() is None:
            daemon.kill()
        _end(launched)
        if sleeper is not None:
            sleeper.kill()
            sleeper.wait()
    log = "".join(daemon.stderr)
    problems = list(fuzz.failures)
    problems += [f"traceback in the daemon's log: {t}" for t in _tracebacks(log)]
    if exit_code != 0:
        problems.append(f"the daemon exited {exit_code} on SIGTERM")

    # The same store again: the daemon starts, answers, and stops cleanly.
    again = _daemon(home)
    try:
        again.start()
        answers = {path: again.request("GET", path, token=TOKEN)[0]
                   for path in ("/healthz", "/v1/jobs", "/v1/deferred", "/v1/summary")}
        launched_again = _children(psutil.Process(again.proc.pid))
        restarted_exit = again.stop()
        _end(launched_again)
    except RuntimeError:  # did not start
        answers, restarted_exit = {}, None
        problems.append("the daemon does not start again on the fuzzed store: "
                        + (again.stderr[-1].strip() if again.stderr else "no output"))
    finally:
        if again.proc is not None and again.proc.poll() is None:
            again.kill()
    if answers and (set(answers.values()) - {200} or restarted_exit != 0):
        problems.append(f"after a restart on the same store: {answers}, exit {restarted_exit}")
    problems += [f"traceback in the restarted daemon's log: {t}"
                 for t in _tracebacks("".join(again.stderr))]
    sent = sum(fuzz.sent.values())
    assert not problems, f"{len(problems)} problem(s) in {sent} requests:\n\n" + "\n\n".join(
        problems)


def _auth_answer(url: str, header: bytes) -> int:
    host, port = url.removeprefix("http://").rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        conn.putrequest("GET", "/v1/jobs")
        conn.putheader("Authorization", header)
        conn.endheaders()
        resp = conn.getresponse()
        resp.read()
        return resp.status
    finally:
        conn.close()


# Any header value http.client will send (it refuses CR, LF and NUL: request smuggling), with or
# without the scheme, non-UTF-8 bytes included.
_HEADER_BYTES = st.binary(min_size=0, max_size=200).map(
    lambda b: b.replace(b"\r", b"").replace(b"\n", b"").replace(b"\0", b"").strip(b" \t"))
# RFC 9110 field-value bytes: HTAB, SP, visible ASCII, obs-text (0x80-0xFF). A value with any
# other control byte may be refused by the HTTP parser itself (400) before auth sees it.
_FIELD_VALUE = frozenset([0x09, *range(0x20, 0x7F), *range(0x80, 0x100)])


def test_any_authorization_header_but_the_token_gets_401_never_a_5xx(home):
    with _daemon(home) as daemon:
        wrong: list[tuple[int, bytes]] = []

        @given(header=st.one_of(_HEADER_BYTES, _HEADER_BYTES.map(lambda b: b"Bearer " + b)))
        @settings(max_examples=EXAMPLES * 3, deadline=None, database=None,
                  phases=[Phase.explicit, Phase.generate],
                  suppress_health_check=list(HealthCheck))
        def fuzz(header: bytes) -> None:
            status = _auth_answer(daemon.url, header)
            allowed = {401} if set(header) <= _FIELD_VALUE else {400, 401}
            if status not in allowed and len(wrong) < 20:
                wrong.append((status, header))

        fuzz()
        assert _auth_answer(daemon.url, f"Bearer {TOKEN}".encode()) == 200
    problems = [f"Authorization: {header!r} -> HTTP {status}" for status, header in wrong]
    problems += [f"traceback in the daemon's log: {t}" for t in _tracebacks("".join(daemon.stderr))]
    assert not problems, "\n".join(problems)
