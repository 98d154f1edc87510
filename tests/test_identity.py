"""Job identity from the environment and the cgroup, and ranks of one job recorded once."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time
from urllib.parse import urlsplit

import pytest
from daemon_helpers import DaemonProcess

from carbonwatch.identity import (
    identity_from_env,
    identity_of_pid,
    pod_uid_from_cgroup,
    slurm_job_from_cgroup,
)
from carbonwatch.ranks import JOIN_TAG, claim_job
from carbonwatch.store import open_store

UID = "0f4b6c2e-3a1d-4e5f-9a8b-7c6d5e4f3a2b"
CGROUP_V1_CGROUPFS = f"""12:memory:/kubepods/burstable/pod{UID}/0123456789abcdef
11:cpu,cpuacct:/kubepods/burstable/pod{UID}/0123456789abcdef
"""
CGROUP_V1_SYSTEMD = (
    "4:memory:/kubepods.slice/kubepods-burstable.slice/"
    f"kubepods-burstable-pod{UID.replace('-', '_')}.slice/cri-containerd-abc.scope\n"
)
CGROUP_V2_GUARANTEED = (
    f"0::/kubepods.slice/kubepods-pod{UID.replace('-', '_')}.slice/cri-containerd-abc.scope\n"
)
CGROUP_V2_SLURM = "0::/system.slice/slurmstepd.scope/job_4242/step_0/user/task_0\n"
CGROUP_V1_SLURM = "4:memory:/slurm/uid_1000/job_77/step_batch/task_0\n"
TORCHRUN = {
    "RANK": "1",
    "LOCAL_RANK": "1",
    "WORLD_SIZE": "2",
    "MASTER_ADDR": "10.0.0.5",
    "MASTER_PORT": "29500",
    "TORCHELASTIC_RUN_ID": "none",
}


def _cgroup(tmp_path, text: str):
    path = tmp_path / "cgroup"
    path.write_text(text)
    return path


@pytest.mark.parametrize("text", [CGROUP_V1_CGROUPFS, CGROUP_V1_SYSTEMD, CGROUP_V2_GUARANTEED])
def test_pod_uid_is_read_from_v1_and_v2_cgroup_paths_of_both_drivers(tmp_path, text):
    assert pod_uid_from_cgroup(text) == UID
    found = identity_from_env({}, _cgroup(tmp_path, text))
    assert found is not None and found.key == f"k8s-pod:{UID}" and found.source == "kubernetes"


def test_no_identity_outside_a_job(tmp_path):
    assert pod_uid_from_cgroup("0::/user.slice/user-1000.slice/session-3.scope\n") is None
    assert identity_from_env({}, _cgroup(tmp_path, "0::/\n")) is None
    assert identity_from_env({}, tmp_path / "missing") is None  # unreadable: no identity, no error
    assert identity_from_env({"RANK": "0", "WORLD_SIZE": "2"}, None) is None  # no rendezvous


def test_slurm_job_from_env_keeps_the_step_as_a_detail(tmp_path):
    found = identity_from_env({"SLURM_JOB_ID": "4242", "SLURM_STEP_ID": "3"}, None)
    assert found is not None and found.key == "slurm:4242"
    assert found.details == {"job_id": "4242", "step_id": "3"}
    assert identity_from_env({"SLURM_JOBID": "9"}, None).key == "slurm:9"


@pytest.mark.parametrize(("text", "job"), [(CGROUP_V2_SLURM, "4242"), (CGROUP_V1_SLURM, "77")])
def test_slurm_job_from_its_cgroup_when_the_environment_is_not_readable(tmp_path, text, job):
    assert slurm_job_from_cgroup(text) == job
    assert identity_from_env({}, _cgroup(tmp_path, text)).key == f"slurm:{job}"


def test_torchrun_run_id_else_master_address_and_port():
    by_id = identity_from_env({**TORCHRUN, "TORCHELASTIC_RUN_ID": "ft-7"}, None)
    assert by_id.key == "torchrun:ft-7" and by_id.details["rank"] == "1"
    # torchrun's default run id "none" is shared by every job: the rendezvous address is not
    assert identity_from_env(TORCHRUN, None).key == "torchrun:10.0.0.5:29500"
    rank0 = identity_from_env({**TORCHRUN, "RANK": "0", "LOCAL_RANK": "0"}, None)
    assert rank0.key == identity_from_env(TORCHRUN, None).key


def test_slurm_wins_over_torchrun_which_wins_over_the_pod(tmp_path):
    pod = _cgroup(tmp_path, CGROUP_V1_CGROUPFS)
    assert identity_from_env({**TORCHRUN, "SLURM_JOB_ID": "5"}, pod).key == "slurm:5"
    assert identity_from_env(TORCHRUN, pod).key == "torchrun:10.0.0.5:29500"
    assert identity_from_env({"CARBONWATCH_POD_UID": UID}, None).key == f"k8s-pod:{UID}"


def test_an_explicit_identity_overrides_and_none_turns_it_off(tmp_path):
    pod = _cgroup(tmp_path, CGROUP_V1_CGROUPFS)
    assert identity_from_env({"CARBONWATCH_IDENTITY": "sweep-3", **TORCHRUN}, pod).key == "sweep-3"
    assert identity_from_env({"CARBONWATCH_IDENTITY": "none", **TORCHRUN}, pod) is None


def test_identity_of_a_pid_reads_its_environ_and_cgroup_under_a_proc_root(tmp_path):
    proc = tmp_path / "proc" / "1234"
    proc.mkdir(parents=True)
    (proc / "environ").write_bytes(b"PATH=/bin\0SLURM_JOB_ID=88\0SLURM_STEP_ID=0\0")
    (proc / "cgroup").write_text(CGROUP_V1_CGROUPFS)
    assert identity_of_pid(1234, tmp_path / "proc").key == "slurm:88"
    (proc / "environ").write_bytes(b"")  # another user's process: only the cgroup is readable
    assert identity_of_pid(1234, tmp_path / "proc").key == f"k8s-pod:{UID}"


def test_a_running_job_whose_leader_died_is_not_joined(tmp_path):
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],  # noqa: S603
        capture_output=True,
        text=True,
        check=True,
    )
    row = {
        "name": "t",
        "kind": "training",
        "source": "run",
        "status": "running",
        "started_s": time.time(),
        "pids": [],
    }
    with open_store(tmp_path / "cw.db") as store:
        first = claim_job(store, "torchrun:x", row)
        assert first.leader
        tags = {JOIN_TAG: {"leader": {"pid": int(dead.stdout), "started": 0.0}, "members": []}}
        store.update_job(first.job_id, tags=tags)  # as if its wrapper was killed -9
        second = claim_job(store, "torchrun:x", row)
        joined = claim_job(store, "torchrun:x", row)
        assert second.leader and second.job_id != first.job_id
        assert not joined.leader and joined.job_id == second.job_id


# --- two ranks, each started through `carbonwatch run` -------------------------------------------

# Rank 0 leads but only waits for rank 1 to start, then exits; rank 1 joins and burns CPU after
# rank 0's command is gone. The job has energy only if the leader charged the member's tree and
# kept measuring it.
RANK0 = (
    "import os, sys, time\n"
    "t = time.time()\n"
    "while not os.path.exists(sys.argv[1]) and time.time() - t < 30: time.sleep(0.02)\n"
)
RANK1 = (
    "import pathlib, sys, time\n"
    "pathlib.Path(sys.argv[1]).touch()\n"
    "t = time.time()\n"
    "while time.time() - t < 1.5: pass\n"
)


def _rank_env(tmp_path, rank: int, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CARBONWATCH_")}
    env.update(
        TORCHRUN,
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT="29555",
        CARBONWATCH_DB=str(tmp_path / "cw.db"),
        CARBONWATCH_BACKEND="none",
        XDG_CONFIG_HOME=str(tmp_path / "cfg"),
    )
    return {**env, **extra}


def _start_rank(tmp_path, rank: int, code: str, **extra: str):
    return subprocess.Popen(  # noqa: S603
        [
            sys.executable,
            "-m",
            "carbonwatch",
            "run",
            "--json",
            "--name",
            "ddp",
            "--kind",
            "training",
            "--",
            sys.executable,
            "-c",
            code,
            str(tmp_path / "rank1-started"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_rank_env(tmp_path, rank, **extra),
    )


def _wait_for_row(db, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if db.exists():
            try:
                with sqlite3.connect(db) as conn:
                    if conn.execute("SELECT COUNT(*) FROM jobs").fetchone()[0]:
                        return
            except sqlite3.OperationalError:  # schema being created
                pass
        time.sleep(0.05)
    raise TimeoutError("rank 0 recorded no job")


def test_two_ranks_of_one_torchrun_job_are_recorded_once_with_the_energy_of_both(tmp_path):
    db = tmp_path / "cw.db"
    rank0 = _start_rank(tmp_path, 0, RANK0)
    _wait_for_row(db)
    rank1 = _start_rank(tmp_path, 1, RANK1)
    out1, err1 = rank1.communicate(timeout=60)
    out0, err0 = rank0.communicate(timeout=60)
    assert rank0.returncode == 0 and rank1.returncode == 0, err0 + err1
    leader, member = json.loads(out0), json.loads(out1)
    with sqlite3.connect(db) as conn:
        conn.row_factory = sqlite3.Row
        (job,) = conn.execute("SELECT * FROM jobs").fetchall()
        minutes_j = conn.execute(
            "SELECT SUM(energy_j) FROM energy_minute WHERE consumer = ?", [f"job:{job['id']}"]
        ).fetchone()[0]
    assert job["identity"] == "torchrun:127.0.0.1:29555" and job["status"] == "finished"
    assert leader["job_id"] == member["job_id"] == job["id"]
    # Rank 0's own command only slept: the CPU energy is rank 1's, charged by rank 0's wrapper,
    # which went on measuring after its own command exited.
    assert job["energy_by_device"] and json.loads(job["energy_by_device"])["cpu"] > 0
    assert job["energy_j"] == pytest.approx(minutes_j) and job["energy_j"] > 0
    assert job["ended_s"] - job["started_s"] >= 1.5
    assert set(member["pids"]) <= set(json.loads(job["pids"]))  # both ranks' trees
    assert len(json.loads(job["pids"])) >= 2
    assert member["provenance"]["joined"]["leader_pid"] == rank0.pid
    assert member["energy_j"] == pytest.approx(job["energy_j"])  # the whole job's figures


def test_a_failing_rank_that_joined_fails_the_job(tmp_path):
    db = tmp_path / "cw.db"
    rank0 = _start_rank(tmp_path, 0, RANK0)
    _wait_for_row(db)
    rank1 = _start_rank(
        tmp_path, 1, "import pathlib, sys; pathlib.Path(sys.argv[1]).touch(); sys.exit(5)"
    )
    rank1.communicate(timeout=60)
    rank0.communicate(timeout=60)
    assert (rank0.returncode, rank1.returncode) == (0, 5)
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT status FROM jobs").fetchall() == [("failed",)]


def test_two_ranks_through_a_daemon_are_one_daemon_job_ended_by_the_last(tmp_path):
    with DaemonProcess(tmp_path / "daemon.db", "--backend", "none") as daemon:
        port = str(urlsplit(daemon.url).port)
        extra = {"CARBONWATCH_PORT": port, "CARBONWATCH_BACKEND": ""}
        rank0 = _start_rank(tmp_path, 0, RANK0, **extra)
        daemon.wait_for(lambda: daemon.request("GET", "/v1/jobs")[1]["jobs"])
        rank1 = _start_rank(tmp_path, 1, RANK1, **extra)
        out0, err0 = rank0.communicate(timeout=60)
        out1, err1 = rank1.communicate(timeout=60)
        assert rank0.returncode == 0 and rank1.returncode == 0, err0 + err1
        status, body = daemon.request("GET", "/v1/jobs")
    (job,) = body["jobs"]
    assert json.loads(out0)["job_id"] == json.loads(out1)["job_id"] == job["id"]
    assert job["identity"] == "torchrun:127.0.0.1:29555" and job["status"] == "finished"
    assert len(job["pids"]) == 2 and job["energy_j"] > 0
    assert job["ended_s"] - job["started_s"] >= 1.5  # rank 0 left the end to rank 1
    assert not (tmp_path / "cw.db").exists()  # the wrappers did not measure
