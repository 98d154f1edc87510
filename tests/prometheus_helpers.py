"""A real Prometheus server on 127.0.0.1 for the fleet tests: free port, storage in a temporary
folder, the shipped scrape job and recording rules with test targets and a 1 s scrape interval."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy" / "prometheus"
PROMETHEUS = shutil.which("prometheus")
PROMTOOL = shutil.which("promtool")
MISSING = "prometheus is not installed (scripts/system-deps.sh installs Debian's package)"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_targets(path: Path, targets: list[str]) -> None:
    """A file_sd targets file, replaced atomically (Prometheus watches it)."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps([{"targets": targets}]))
    tmp.replace(path)


def scrape_config(targets_file: Path, token_file: Path, interval_s: int = 1) -> dict[str, Any]:
    """deploy/prometheus/prometheus.yml's carbonwatch job, its targets read from
    ``targets_file`` (see :func:`write_targets`) so a test can move a daemon to another port."""
    shipped = yaml.safe_load((DEPLOY / "prometheus.yml").read_text())
    (job,) = [j for j in shipped["scrape_configs"] if j["job_name"] == "carbonwatch"]
    job = {k: v for k, v in job.items() if k != "static_configs"}
    job = {
        **job,
        "file_sd_configs": [{"files": [str(targets_file)], "refresh_interval": "1s"}],
        "authorization": {**job["authorization"], "credentials_file": str(token_file)},
    }
    return {
        "global": {
            "scrape_interval": f"{interval_s}s",
            "scrape_timeout": f"{interval_s}s",
            "evaluation_interval": f"{interval_s}s",
        },
        "rule_files": [str(DEPLOY / f) for f in shipped["rule_files"]],
        "scrape_configs": [job],
    }


class PrometheusProcess:
    def __init__(self, config: dict[str, Any], workdir: Path) -> None:
        assert PROMETHEUS is not None, MISSING
        self.workdir = workdir
        self.config_path = workdir / "prometheus.yml"
        self.config_path.write_text(yaml.safe_dump(config))
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = workdir / "prometheus.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> PrometheusProcess:
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen(  # noqa: S603
                [
                    PROMETHEUS,
                    f"--config.file={self.config_path}",
                    f"--storage.tsdb.path={self.workdir / 'data'}",
                    f"--web.listen-address=127.0.0.1:{self.port}",
                    "--storage.tsdb.retention.time=1h",
                    "--log.level=warn",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=1) as r:  # noqa: S310
                    if r.status == 200:
                        return self
            except OSError:
                if self.proc.poll() is not None:
                    break
            time.sleep(0.1)
        self.__exit__()
        raise RuntimeError("prometheus did not start:\n" + self.log.read_text())

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
