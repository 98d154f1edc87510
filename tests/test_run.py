"""`carbonwatch run` over real process trees: CPU time of the whole tree, exit codes, signals."""

import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time

import pytest

WORKER = "import time\nt = time.time()\nwhile time.time() - t < {s}: pass\n"
# Busy work that reports its own CPU time, so the check holds on a loaded machine too.
COUNTER = (
    "import sys, time\nt = time.time()\n"
    "while time.time() - t < 1.5: sum(range(10_000))\n"
    "open(sys.argv[1], 'a').write(f'{time.process_time()}\\n')\n"
)


def _env(tmp_path, **extra):
    env = dict(os.environ)
    env.update(
        CARBONWATCH_DB=str(tmp_path / "cw.db"),
        CARBONWATCH_BACKEND="none",
        CARBONWATCH_ENERGY_PRICE_PER_KWH="0.2",
        CARBONWATCH_COUNTRY="FRA",
        XDG_CONFIG_HOME=str(tmp_path / "cfg"),
    )
    env.update(extra)
    return env


def _run(tmp_path, *cmd, **kw):
    return subprocess.run(
        [sys.executable, "-m", "carbonwatch", "run", *cmd],
        capture_output=True,
        text=True,
        env=_env(tmp_path),
        timeout=120,
        **kw,
    )


def test_a_shell_with_two_python_workers_is_one_job(tmp_path):
    worker, log = tmp_path / "worker.py", tmp_path / "cpu.log"
    worker.write_text(COUNTER)
    script = f"{sys.executable} {worker} {log} & {sys.executable} {worker} {log} & wait"
    out = _run(
        tmp_path, "--json", "--name", "two-workers", "--kind", "training", "--", "sh", "-c", script
    )
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["exit_code"] == 0 and result["kind"] == "training"
    assert len(result["pids"]) >= 3  # the shell and both workers
    # Both workers' CPU time lands on the job, whatever else the machine is doing.
    workers_cpu_s = [float(x) for x in log.read_text().split()]
    assert len(workers_cpu_s) == 2
    assert result["cpu_time_s"] >= 0.95 * sum(workers_cpu_s)
    assert result["energy_j_by_device"]["cpu"] > 0
    for key in ("duration_s", "energy_j", "co2e_g", "cost", "currency", "provenance"):
        assert key in result
    assert result["provenance"]["energy"]["cpu"].startswith(("estimated", "measured"))
    assert result["cost"] > 0 and result["currency"] == "USD"
    with sqlite3.connect(tmp_path / "cw.db") as db:
        row = db.execute("SELECT status, energy_j, exit_code FROM jobs").fetchone()
    assert row[0] == "finished" and row[1] == pytest.approx(result["energy_j"]) and row[2] == 0


def test_more_cpu_time_means_more_energy(tmp_path):
    short = json.loads(
        _run(tmp_path, "--json", "--", sys.executable, "-c", WORKER.format(s=0.3)).stdout
    )
    long = json.loads(
        _run(tmp_path, "--json", "--", sys.executable, "-c", WORKER.format(s=2.5)).stdout
    )
    assert long["energy_j_by_device"]["cpu"] > 2 * short["energy_j_by_device"]["cpu"]


def test_exit_code_passes_through(tmp_path):
    out = _run(tmp_path, "--", sys.executable, "-c", "import sys; sys.exit(7)")
    assert out.returncode == 7
    assert "exited 7" in out.stderr


def test_missing_command_is_a_clear_error(tmp_path):
    out = _run(tmp_path, "--", "definitely-not-a-command-xyz")
    assert out.returncode == 127
    assert "definitely-not-a-command-xyz" in out.stderr and "Traceback" not in out.stderr


def test_the_command_is_not_run_through_a_shell(tmp_path):
    marker = tmp_path / "pwned"
    out = _run(tmp_path, "--", "echo", f"hello; touch {marker}")
    assert out.returncode == 0
    assert not marker.exists()


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_to_the_wrapper_stops_the_tree_and_the_record_is_written(tmp_path, sig):
    child = tmp_path / "child.py"
    child.write_text(
        textwrap.dedent("""
        import signal, sys, time
        print("ready", flush=True)
        try:
            time.sleep(60)
        except KeyboardInterrupt:
            sys.exit(130)
    """)
    )
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "carbonwatch",
            "run",
            "--json",
            "--name",
            "sleepy",
            "--",
            "sh",
            "-c",
            f"{sys.executable} {child}; echo after",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(tmp_path),
    )
    assert proc.stdout.readline().strip() == "ready"
    time.sleep(0.5)
    t0 = time.monotonic()
    proc.send_signal(sig)
    stdout, stderr = proc.communicate(timeout=30)
    assert time.monotonic() - t0 < 10  # the 60 s sleep did not run out
    assert proc.returncode != 0
    result = json.loads(stdout[stdout.index("{") :])
    assert result["exit_code"] == proc.returncode
    with sqlite3.connect(tmp_path / "cw.db") as db:
        status, ended = db.execute("SELECT status, ended_s FROM jobs").fetchone()
    assert status == "interrupted" and ended is not None


def test_a_shared_children_map_finds_the_same_tree_as_psutil(tmp_path):
    from carbonwatch.proc import ProcessTree, children_map

    shell = subprocess.Popen(["sh", "-c", "sleep 5 & sleep 5 & wait"])
    try:
        deadline = time.monotonic() + 5
        while len(ProcessTree(shell.pid).refresh()) < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        by_psutil = ProcessTree(shell.pid).refresh()
        by_map = ProcessTree(shell.pid).refresh(children_map())
        assert len(by_psutil) == 3 and by_map == by_psutil
    finally:
        shell.kill()
        shell.wait()
