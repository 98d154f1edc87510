"""A real headless Chromium (driven by playwright) and ``carbonwatch dashboard`` servers running
as subprocesses, for the dashboard's browser tests."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync"]
NO_CHROMIUM = ("no Chromium found (install Debian's chromium, or set CARBONWATCH_CHROMIUM to a "
               "Chromium binary); browser tests need a real browser")


def find_chromium() -> str | None:
    for candidate in (os.environ.get("CARBONWATCH_CHROMIUM"), shutil.which("chromium"),
                      shutil.which("chromium-browser"), "/usr/bin/chromium"):
        if candidate and Path(candidate).exists():
            return candidate
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """``carbonwatch dashboard`` in a subprocess, as a user would start it: over the store ``db``
    (None: no --db), with any further arguments (``--prometheus URL``)."""

    def __init__(self, db: Path | None, home: Path, refresh_s: float = 30.0,
                 args: tuple[str, ...] = (), env: Mapping[str, str] | None = None,
                 login: str | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        # wait() logs in with this bearer token when the server asks for a login.
        self.login = login
        # Only the settings a test gives: none leak in from the developer's environment.
        env = {**{k: v for k, v in os.environ.items() if not k.startswith("CARBONWATCH_")},
               **(env or {})}
        env.update(XDG_CONFIG_HOME=str(home), XDG_DATA_HOME=str(home))
        self.log = home / f"dashboard-{self.port}.log"
        command = [sys.executable, "-c", "from carbonwatch.cli import main; main()", "dashboard",
                   "--port", str(self.port), "--refresh", str(refresh_s), *args]
        if db is not None:
            command += ["--db", str(db)]
        self.proc = subprocess.Popen(command, env=env, stdout=self.log.open("w"),  # noqa: S603
                                     stderr=subprocess.STDOUT)

    def wait(self, timeout_s: float = 60.0) -> Server:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"dashboard exited: {self.log.read_text()}")
            try:
                headers = {"Authorization": f"Bearer {self.login}"} if self.login else {}
                request = urllib.request.Request(self.url + "/", headers=headers)
                with urllib.request.urlopen(request, timeout=2) as resp:  # noqa: S310
                    if resp.status == 200:
                        return self
            except OSError:
                time.sleep(0.2)
        raise RuntimeError(f"dashboard did not start: {self.log.read_text()}")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


@contextlib.contextmanager
def serving(started: Mapping[str, Server]) -> Iterator[dict[str, Server]]:
    """Servers started together, waited for together (each spends a second or two importing
    Dash), stopped together however the tests end."""
    try:
        yield {name: server.wait() for name, server in started.items()}
    finally:
        for server in started.values():
            server.stop()


def launch_chromium(playwright, executable: str):
    """Chromium at ``executable``; a broken install skips the tests, saying why, rather than fail
    every one of them."""
    try:
        return playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
    except Exception as exc:
        pytest.skip(f"Chromium at {executable} does not start: {exc}")


def screenshot(page, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"dashboard-{name}.png"), full_page=True)


def no_traceback(page) -> None:
    text = page.inner_text("body")
    assert "Traceback" not in text and "File \"" not in text
