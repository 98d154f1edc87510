"""The carbon-aware scheduler end to end: a real daemon process, the real CLI, real jobs.

Forecasts are EIA-930 hours (CISO, 2022-01-01) shifted to now and squeezed to a few seconds
each, served by the csv provider, so a plan puts the start seconds ahead. Nothing here depends on
catching a short slot: what is timed to the second (restarts, re-plans, pauses) runs on a
ManualClock in tests/test_scheduler_clock*.py."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from daemon_helpers import DaemonProcess
from forecast_csv import eia_values, shifted_csv

# Appends its start time to the file given (one line per run), then spins for 1.5 s: long
# enough for the daemon's sampler to see it.
MARKER = (
    "import sys, time\n"
    "t = time.time(); open(sys.argv[1], 'a').write(f'{t}\\n')\n"
    "while time.time() - t < 1.5: pass\n"
)
# Writes its pid, then sleeps.
SLEEPER = "import os, sys, time; open(sys.argv[1], 'w').write(str(os.getpid())); time.sleep(120)"


# Over TCP only the admin token launches; the daemon and the CLI both read it from here.
ADMIN_TOKEN = "adm1n" * 8 + "0123456789abcdef"


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CARBONWATCH_")}
    env.update(XDG_CONFIG_HOME=str(tmp_path / "cfg"), XDG_DATA_HOME=str(tmp_path / "data"))
    env["CARBONWATCH_ADMIN_TOKEN"] = ADMIN_TOKEN
    env.update(extra)
    return env


def _cli(env: dict[str, str], *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "carbonwatch", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=90,
        cwd=cwd,
    )


def _ok(out: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert out.returncode == 0, out.stderr
    assert "Traceback" not in out.stderr
    return out


def _refused(out: subprocess.CompletedProcess, text: str) -> None:
    assert out.returncode == 2, (out.returncode, out.stdout, out.stderr)
    assert "Traceback" not in out.stderr
    assert text in out.stderr, out.stderr


def _deferred(daemon: DaemonProcess, job_id: str) -> dict:
    status, view = daemon.request("GET", f"/v1/deferred/{job_id}")
    assert status == 200, view
    return view


def _wait_status(
    daemon: DaemonProcess, job_id: str, statuses: tuple[str, ...], timeout_s: float = 60.0
) -> dict:
    return daemon.wait_for(
        lambda: (v := _deferred(daemon, job_id))["status"] in statuses and v,
        timeout_s,
        every_s=0.1,
    )


def _submit(env: dict[str, str], *args: str) -> dict:
    return json.loads(_ok(_cli(env, "submit", "--json", *args)).stdout)


def test_a_deferred_job_waits_for_the_low_hours_and_its_saving_is_measured(tmp_path):
    """Through a real daemon process and the CLI: planned into the low stretch, run through the
    wrapper, measured, and compared with running at submit. The low stretch is 30 s long, so a
    busy machine starting the job late still runs it there; restarts and re-plans are timed on a
    ManualClock in tests/test_scheduler_clock_restart.py."""
    marker = tmp_path / "started.txt"
    high, low = eia_values(14, 1)[0], eia_values(19, 1)[0]
    # 20 s of evening hours for the daemon to start and the submit to happen in, then 30 s of
    # hour 19. Written before the daemon starts: its own intensity feed reads it then.
    t0 = int(time.time())
    csv = shifted_csv(tmp_path / "ciso.csv", [high] * 10 + [low] * 15 + [high] * 10, t0, 2.0)
    env = _env(
        tmp_path,
        CARBONWATCH_PROVIDER="csv",
        CARBONWATCH_PROVIDER_URL=str(csv),
        CARBONWATCH_ZONE="CISO",
    )
    daemon = DaemonProcess(tmp_path / "cw.db", "--backend", "none", env=env).start()
    try:
        env["CARBONWATCH_DAEMON_URL"] = daemon.url
        view = _submit(env, "--deadline", "+60s", "--duration", "2s", "--name", "marker", "--",
                       sys.executable, "-c", MARKER, str(marker))
        planned_s = view["plan"][0]["start_s"]
        assert view["status"] == "queued" and view["plan_basis"] == "forecast"
        assert view["plan_signal"] == "average"  # the csv series is average intensity
        assert planned_s == pytest.approx(t0 + 20.0), "starting and submitting took over 20 s"
        assert view["expected_saving_pct"] > 40  # vs the evening hours at submit
        done = _wait_status(daemon, view["id"], ("done", "failed"), timeout_s=60)
        # The finished run is history now: "auto" takes its duration, and its energy per
        # second gives an expected gCO2e.
        auto = _submit(
            env, "--deadline", "+1h", "--duration", "auto", "--name", "marker", "--", "true"
        )
        _ok(_cli(env, "cancel", auto["id"]))
    finally:
        daemon.stop()
    assert done["status"] == "done", done
    (started,) = [float(line) for line in marker.read_text().split()]  # ran exactly once
    assert planned_s <= started < view["deadline_s"]
    assert done["ended_s"] < view["deadline_s"]
    # Measured like any other job, and compared with running at submit time.
    assert done["job_id"] and done["realised_co2e_g"] > 0
    # Measured at hour 19's intensity; at submit the evening hours were much dirtier.
    assert done["realised_baseline_co2e_g"] > 1.5 * done["realised_co2e_g"]
    assert done["realised_saving_pct"] > 30
    assert auto["duration_s"] == pytest.approx(done["ended_s"] - done["started_s"], rel=0.5)
    assert auto["expected_co2e_g"] > 0


def test_submit_queue_and_cancel_through_the_cli(tmp_path):
    env = _env(tmp_path)
    with DaemonProcess(tmp_path / "cw.db", "--backend", "none", env=env) as daemon:
        env["CARBONWATCH_DAEMON_URL"] = daemon.url
        # Static provider: no forecast, so the latest start that meets the deadline.
        out = _ok(
            _cli(
                env,
                "submit",
                "--deadline",
                "+3h",
                "--duration",
                "1h",
                "--name",
                "nightly",
                "--",
                "python",
                "train.py",
            )
        )
        assert "queued" in out.stdout and "no usable forecast" in out.stdout
        queue = json.loads(_ok(_cli(env, "queue", "--json")).stdout)
        (job,) = queue
        assert (job["name"], job["status"], job["plan_basis"]) == (
            "nightly",
            "queued",
            "no_forecast",
        )
        assert job["plan"][0]["end_s"] == pytest.approx(job["deadline_s"])
        assert job["command"] == ["python", "train.py"] and "env" not in job
        table = _ok(_cli(env, "queue")).stdout
        assert job["id"] in table and "nightly" in table and job["deadline"] in table

        out = _ok(_cli(env, "cancel", job["id"]))
        assert "cancelled" in out.stdout
        assert _deferred(daemon, job["id"])["status"] == "cancelled"
        _refused(_cli(env, "cancel", job["id"]), "already ended")
        _refused(_cli(env, "cancel", "nosuchjob"), "no deferred job with id 'nosuchjob'")

        # A running job is terminated, its whole tree.
        pid_file = tmp_path / "pid"
        out = _ok(
            _cli(
                env,
                "submit",
                "--json",
                "--deadline",
                "+31s",
                "--duration",
                "30s",
                "--name",
                "sleeper",
                "--",
                sys.executable,
                "-c",
                SLEEPER,
                str(pid_file),
            )
        )
        sleeper = json.loads(out.stdout)
        _wait_status(daemon, sleeper["id"], ("running",), timeout_s=20)
        daemon.wait_for(pid_file.exists, timeout_s=20)
        pid = int(pid_file.read_text())
        cancelled = json.loads(_ok(_cli(env, "cancel", "--json", sleeper["id"])).stdout)
        assert cancelled["status"] == "cancelled"
        with pytest.raises(psutil.NoSuchProcess):
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                raise psutil.NoSuchProcess(pid)

        # Bad input: one clear line, exit 2, never a traceback.
        _refused(
            _cli(env, "submit", "--deadline", "+1h", "--duration", "2h", "--", "true"),
            "before now + 2h",
        )
        _refused(
            _cli(env, "submit", "--deadline", "+1h", "--duration", "banana", "--", "true"),
            "cannot parse duration 'banana'",
        )
        _refused(
            _cli(env, "submit", "--deadline", "tomorrow", "--duration", "1h", "--", "true"),
            "cannot parse time 'tomorrow'",
        )
        _refused(
            _cli(
                env,
                "submit",
                "--deadline",
                "+1h",
                "--duration",
                "auto",
                "--name",
                "never-ran",
                "--",
                "true",
            ),
            "no finished job named 'never-ran'",
        )
        _refused(
            _cli(
                env,
                "submit",
                "--deadline",
                "+1h",
                "--duration",
                "5m",
                "--provider",
                "nope",
                "--",
                "true",
            ),
            "unknown provider 'nope'",
        )


def test_without_a_daemon_the_commands_say_so(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens on it once closed
    env = _env(tmp_path, CARBONWATCH_DAEMON_URL=f"http://127.0.0.1:{port}")
    for args in (
        ("queue",),
        ("cancel", "x"),
        ("submit", "--deadline", "+1h", "--duration", "5m", "--", "true"),
    ):
        _refused(_cli(env, *args), "no carbonwatch daemon answers")


def test_a_job_running_across_a_daemon_restart_is_still_recorded(tmp_path):
    """The wrapper runs in its own session: SIGTERM to the daemon leaves it running, and the
    restarted daemon (same address) watches it to the end and records the run."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = str(s.getsockname()[1])
    env = _env(tmp_path)
    daemon = DaemonProcess(tmp_path / "cw.db", "--backend", "none", "--port", port, env=env)
    daemon.start()
    try:
        env["CARBONWATCH_DAEMON_URL"] = daemon.url
        view = _submit(
            env,
            "--deadline",
            "+10s",
            "--duration",
            "9s",
            "--name",
            "across",
            "--",
            sys.executable,
            "-c",
            "import time; time.sleep(8)",
        )
        _wait_status(daemon, view["id"], ("running",), timeout_s=20)
        assert daemon.stop() == 0
        daemon.start()
        done = _wait_status(daemon, view["id"], ("done", "failed"), timeout_s=30)
        status, job = daemon.request("GET", f"/v1/jobs/{done['job_id']}")
    finally:
        daemon.stop()
    assert done["status"] == "done" and done["exit_code"] == 0, done
    assert status == 200 and job["status"] == "finished" and job["name"] == "across"
    assert done["realised_co2e_g"] == job["co2e_g"]
