"""Acting as other local users against a real daemon process (the suite runs as root).

A client runs as another uid through ``setpriv --reuid --regid --clear-groups``: a fresh
interpreter holding no root privilege, no supplementary group, nothing inherited but the
environment it is given. Folders another uid must reach live under a world-traversable temporary
folder, since pytest's own are 0700 to root."""

from __future__ import annotations

import functools
import json
import os
import shutil
import site
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from daemon_helpers import DaemonProcess

NOBODY = 65534  # the kernel's overflow uid; present in every Debian/Ubuntu passwd
OTHER = 43210  # a uid with no passwd entry: another user of the node
TOKEN = "ingest-" + "5f0c2d9e8b7a6f5e4d3c2b1a09f8e7d6c5b4a392"  # 47 bytes
ADMIN_TOKEN = "admin-" + "9d8c7b6a5f4e3d2c1b0a99887766554433221100"  # 46 bytes
SETPRIV = shutil.which("setpriv")

needs_root = pytest.mark.skipif(
    os.geteuid() != 0 or SETPRIV is None,
    reason="acting as other users needs root and setpriv (util-linux)",
)

_CLIENT = """
import json, sys
from carbonwatch.daemon.attach import DaemonClient
url, method, path, body, token = json.loads(sys.argv[1])
status, payload = DaemonClient(url, token or "", timeout_s=30).request(method, path, body)
print(json.dumps([status, payload]))
"""


@functools.cache
def public_python() -> str:
    """An interpreter other uids can start. A venv whose base interpreter lives under a 0700
    home (pyenv in /root) cannot be started by another user, and neither could the wrapper of a
    job launched as that user: then the system's python of the same version, given the venv's
    packages on PYTHONPATH (see :func:`user_env`)."""
    probe = [*as_user(NOBODY), "/bin/sh", "-c", 'exec "$0" -c ""']
    for candidate in (sys.executable, f"/usr/bin/python{sys.version_info[0]}."
                      f"{sys.version_info[1]}"):
        if os.path.exists(candidate) and subprocess.run(  # noqa: S603
            [*probe[:-1], probe[-1], candidate], capture_output=True, check=False
        ).returncode == 0:
            return candidate
    pytest.skip("no python interpreter that other users may start")


def as_user(uid: int) -> list[str]:
    assert SETPRIV is not None
    return [SETPRIV, f"--reuid={uid}", f"--regid={uid}", "--clear-groups"]


def user_env(**extra: str) -> dict[str, str]:
    """An environment another uid can use: this tree on PYTHONPATH, no CARBONWATCH_ setting,
    a HOME and data folder of its own."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CARBONWATCH_")}
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).resolve().parents[2]),
                                         *site.getsitepackages()])
    env.update(extra)
    return env


def request_as(uid: int, url: str, method: str, path: str, body: Any = None,
               token: str | None = None) -> tuple[int, Any]:
    """One request to the daemon from a process running as ``uid``."""
    out = subprocess.run(  # noqa: S603
        [*as_user(uid), public_python(), "-c", _CLIENT,
         json.dumps([url, method, path, body, token])],
        capture_output=True, text=True, env=user_env(), timeout=60, check=False,
    )
    assert out.returncode == 0, out.stderr
    status, payload = json.loads(out.stdout)
    return status, payload


class PublicDaemon(DaemonProcess):
    """A real daemon process started with :func:`public_python`, so the jobs it launches as
    other users can start their wrapper."""

    def __init__(self, db: Path, *args: str, env: dict[str, str] | None = None) -> None:
        super().__init__(db, *args, env={**user_env(), **(env or {})})

    def command(self) -> list[str]:
        return [public_python(), *super().command()[1:]]


def spawn_as(uid: int, *argv: str) -> subprocess.Popen[bytes]:
    """A long-running process of ``uid`` (to own pids)."""
    return subprocess.Popen([*as_user(uid), *argv])  # noqa: S603


@contextmanager
def shared_dir() -> Iterator[Path]:
    """A folder every uid may enter and write in (a socket, or what a job writes)."""
    path = Path(tempfile.mkdtemp(prefix="cw-sec-", dir="/tmp"))
    os.chmod(path, 0o777)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
