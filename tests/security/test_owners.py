"""Finding 2: a shared node's users cannot harm each other through the daemon.

Against a real daemon process on loopback with no token (the default). Root (this suite) is the
operator; uid 65534 and 43210 are two other users, each a separate process run through setpriv.
On the old code every refusal below was a 201/200: any local user could register a job over
other users' pids (pid 1 included), end other users' jobs, read their command lines, and a
refused ``carbonwatch run`` exited 2 and killed its command."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

from daemon_helpers import DaemonProcess

from .helpers import (
    NOBODY,
    OTHER,
    as_user,
    needs_root,
    public_python,
    request_as,
    shared_dir,
    spawn_as,
    user_env,
)

pytestmark = needs_root
SECRET_ARGV = ["python", "train.py", "--hf-token=hf_SECRET123"]


def _job(name: str, pid: int, **extra: object) -> dict[str, object]:
    return {"name": name, "kind": "training", "pid": pid, **extra}


def _no_pid() -> int:
    """A pid no process has now."""
    pid = int(open("/proc/sys/kernel/pid_max").read()) - 7  # noqa: SIM115
    while subprocess.run(["kill", "-0", str(pid)], capture_output=True).returncode == 0:
        pid -= 1
    return pid


def test_a_user_claims_only_its_own_pids(tmp_path):
    root_proc = subprocess.Popen(["sleep", "60"])
    mine = spawn_as(NOBODY, "sleep", "60")
    try:
        with DaemonProcess(tmp_path / "cw.db", "--backend", "none") as daemon:
            for pid in (1, root_proc.pid):
                status, body = request_as(NOBODY, daemon.url, "POST", "/v1/jobs",
                                          _job("squat", pid))
                assert status == 403, body
                assert f"pid {pid} belongs to uid 0, not to you (uid {NOBODY})" in body["error"]
            ghost = _no_pid()
            status, body = request_as(NOBODY, daemon.url, "POST", "/v1/jobs", _job("g", ghost))
            assert status == 400 and f"pid {ghost}: no such process" in body["error"]
            status, body = request_as(NOBODY, daemon.url, "POST", "/v1/jobs",
                                      _job("mine", mine.pid))
            assert status == 201, body
            # Nothing was registered over root's processes: root still registers its own.
            status, body = daemon.request("POST", "/v1/jobs", _job("root", root_proc.pid))
            assert status == 201, body
            status, listing = daemon.request("GET", "/v1/jobs")
            owners = {j["name"]: j["owner_uid"] for j in listing["jobs"]}
            assert owners == {"mine": NOBODY, "root": 0}
    finally:
        for proc in (root_proc, mine):
            proc.kill()
            proc.wait()


def test_only_the_owner_or_an_operator_ends_or_merges_a_job_and_sees_its_command(tmp_path):
    root_proc = subprocess.Popen(["sleep", "60"])
    mine = spawn_as(NOBODY, "sleep", "60")
    try:
        with DaemonProcess(tmp_path / "cw.db", "--backend", "none") as daemon:
            status, root_job = daemon.request("POST", "/v1/jobs", _job(
                "root-train", root_proc.pid, command=SECRET_ARGV, identity="slurm-7"))
            assert status == 201, root_job
            rid = root_job["id"]
            # Another user may not end it, nor merge into it by naming its identity.
            status, body = request_as(NOBODY, daemon.url, "POST", f"/v1/jobs/{rid}/end", {})
            assert status == 403 and "only its owner or an operator" in body["error"]
            status, body = request_as(NOBODY, daemon.url, "POST", "/v1/jobs",
                                      _job("rank", mine.pid, identity="slurm-7"))
            assert status == 403 and "merge" in body["error"]
            # ... nor read its command line, by listing or by id; totals stay visible.
            for path in ("/v1/jobs", f"/v1/jobs/{rid}"):
                status, body = request_as(NOBODY, daemon.url, "GET", path)
                assert status == 200 and "hf_SECRET123" not in json.dumps(body)
            status, seen = request_as(NOBODY, daemon.url, "GET", f"/v1/jobs/{rid}")
            assert seen["command"] is None and seen["status"] == "running"
            assert "energy_j" in seen
            status, own_view = daemon.request("GET", f"/v1/jobs/{rid}")
            assert own_view["command"] == SECRET_ARGV  # its owner (and operators) see it
            # Its own job, a user ends; an operator ends anyone's.
            status, body = request_as(NOBODY, daemon.url, "POST", "/v1/jobs",
                                      _job("mine", mine.pid, command=["mine"]))
            assert status == 201, body
            status, ended = request_as(NOBODY, daemon.url, "POST",
                                       f"/v1/jobs/{body['id']}/end", {"exit_code": 0})
            assert status == 200 and ended["status"] == "finished"
            status, ended = daemon.request("POST", f"/v1/jobs/{rid}/end", {"exit_code": 0})
            assert status == 200 and ended["status"] == "finished"
    finally:
        for proc in (root_proc, mine):
            proc.kill()
            proc.wait()


def test_a_pid_squatted_through_a_call_goes_back_to_its_owner(tmp_path):
    """Calls may name any pid (a service is registered by its first call); the pid's real owner
    registering it takes it over instead of meeting a 409."""
    victim = spawn_as(OTHER, "sleep", "60")
    try:
        with DaemonProcess(tmp_path / "cw.db", "--backend", "none") as daemon:
            now = time.time()
            call = {"model": "squat", "start": now - 1, "end": now - 0.5, "pid": victim.pid}
            status, body = request_as(NOBODY, daemon.url, "POST", "/v1/calls",
                                      {"calls": [call]})
            assert status == 200, body
            status, body = request_as(OTHER, daemon.url, "POST", "/v1/jobs",
                                      _job("victim", victim.pid))
            assert status == 201, body
            status, listing = daemon.request("GET", "/v1/jobs")
            pids = {j["name"]: j["pids"] for j in listing["jobs"]}
            assert pids["victim"] == [victim.pid]
            assert pids[f"squat (pid {victim.pid})"] == []
    finally:
        victim.kill()
        victim.wait()


def test_a_refused_run_measures_on_its_own_and_never_kills_the_command(tmp_path):
    """A daemon refusing the job (here: a name over the API's 256 characters, so the old code
    refused it too) no longer makes ``carbonwatch run`` exit 2 and kill the command: the command
    finishes, with its own exit code, measured by the wrapper itself."""
    name = "n" * 300
    with shared_dir() as shared, DaemonProcess(tmp_path / "cw.db", "--backend", "none") as daemon:
        marker = shared / "finished"
        script = (f"import sys, time; time.sleep(1.0); open({str(marker)!r}, 'w').write('ok'); "
                  "sys.exit(3)")
        env = user_env(CARBONWATCH_DAEMON_URL=daemon.url, HOME=str(shared),
                       XDG_DATA_HOME=str(shared / "data"), XDG_CONFIG_HOME=str(shared / "cfg"))
        out = subprocess.run(  # noqa: S603
            [*as_user(NOBODY), public_python(), "-m", "carbonwatch", "run", "--name", name,
             "--", public_python(), "-c", script],
            capture_output=True, text=True, env=env, timeout=60, check=False)
        assert out.returncode == 3, out.stderr
        assert marker.read_text() == "ok"
        assert "refused the job (400)" in out.stderr
        assert "measuring the command here instead" in out.stderr
        assert f"carbonwatch: {name} (other) exited 3" in out.stderr
        assert "Traceback" not in out.stderr
        status, listing = daemon.request("GET", "/v1/jobs")
        assert status == 200 and listing["jobs"] == []


def test_the_slurm_prolog_opens_the_users_job_and_only_that_users_ranks_join_it(tmp_path):
    """The prolog runs as root and opens the job for SLURM_JOB_UID: that user's ranks merge into
    it; another user's process naming the same identity does not."""
    slurm = Path(__file__).resolve().parents[2] / "deploy" / "slurm"
    rank = spawn_as(NOBODY, "sleep", "60")
    intruder = spawn_as(OTHER, "sleep", "60")
    try:
        with DaemonProcess(tmp_path / "cw.db", "--backend", "none") as daemon:
            env = {"PATH": "/usr/bin:/bin", "CARBONWATCH_URL": daemon.url,
                   "CARBONWATCH_TOKEN_FILE": "/nonexistent",
                   "CARBONWATCH_SLURM_ENV": "/nonexistent",
                   "CARBONWATCH_SLURM_STATE": str(tmp_path / "state"), "SLURM_JOB_ID": "77",
                   "SLURM_JOB_UID": str(NOBODY), "SLURM_JOB_USER": "nobody"}
            done = subprocess.run(  # noqa: S603
                [str(slurm / "prolog.sh")], env=env, capture_output=True, text=True, timeout=30,
                check=False)
            assert done.returncode == 0 and not done.stderr, done.stderr
            job_id = (tmp_path / "state" / "77").read_text().strip()
            status, opened = daemon.request("GET", f"/v1/jobs/{job_id}")
            assert opened["owner_uid"] == NOBODY
            status, body = request_as(OTHER, daemon.url, "POST", "/v1/jobs",
                                      _job("intruder", intruder.pid, identity="slurm:77"))
            assert status == 403, body
            status, body = request_as(NOBODY, daemon.url, "POST", "/v1/jobs",
                                      _job("rank0", rank.pid, identity="slurm:77"))
            assert (status, body) == (200, {"id": job_id, "merged": True})
            status, body = request_as(OTHER, daemon.url, "POST", "/v1/jobs",
                                      _job("spoof", intruder.pid, owner_uid=NOBODY))
            assert status == 403 and "on another user's behalf" in body["error"]
    finally:
        for proc in (rank, intruder):
            proc.kill()
            proc.wait()
