"""Jobs through the API: register, merge ranks by identity, end; calls without a pid; live
process trees; and /healthz turning 503 when the sampler hangs."""

from __future__ import annotations

import subprocess
import sys
import threading
import time

from daemon_helpers import MODEL, InProcessDaemon
from prometheus_client.parser import text_string_to_metric_families


def test_job_lifecycle_identity_merge_and_summary(tmp_path):
    with InProcessDaemon(tmp_path / "cw.db", replay_speed=30) as d:
        status, train = d.request("POST", "/v1/jobs", {
            "name": "llm-pretrain", "kind": "training", "model": "llm", "pid": 416,
            "identity": "slurm-77", "tags": {"team": "nlp"}})
        assert status == 201
        # A second rank of the same Slurm job on this node is the same job, never a second one.
        status, rank = d.request("POST", "/v1/jobs", {
            "name": "llm-pretrain", "kind": "training", "pid": 417, "identity": "slurm-77"})
        assert (status, rank) == (200, {"id": train["id"], "merged": True})
        status, serve = d.request("POST", "/v1/jobs", {"name": "server", "kind": "inference",
                                                       "model": MODEL, "pids": [438]})
        assert status == 201
        # A call without a pid goes to its model's only service.
        status, body = d.request("POST", "/v1/calls", {"calls": [
            {"model": MODEL, "start": 1795697490.0, "end": 1795697490.5},
            {"model": "nobody-serves-this", "start": 1795697490.0, "end": 1795697490.2}]})
        assert status == 200 and body["accepted"] == 2
        d.wait_for(d.replay_finished)
        d.wait_for(lambda: d.request("GET", f"/v1/jobs/{train['id']}")[1]["energy_j"] > 0)

        status, ended = d.request("POST", f"/v1/jobs/{train['id']}/end", {"exit_code": 2})
        assert (ended["status"], ended["exit_code"], ended["pids"]) == ("failed", 2, [416, 417])
        assert ended["energy_j"] > 0 and ended["tags"] == {"team": "nlp"}
        assert ended["provenance"]["energy"] == {"gpu0": "measured (nvml-energy-counter)"}
        status, running = d.request("GET", "/v1/jobs?status=running")
        assert [j["id"] for j in running["jobs"]] == [serve["id"]]
        # The pid is free again once its job ended.
        status, _ = d.request("POST", "/v1/jobs", {"name": "again", "kind": "other", "pid": 416})
        assert status == 201

        status, by_job = d.request("GET", "/v1/summary?group_by=job")
        keys = {g["key"] for g in by_job["groups"]}
        assert {f"job:{train['id']}", f"job:{serve['id']}", "idle"} <= keys
    # Stopped (SIGTERM path): every call settled, the pid-less one with its model's service.
    with InProcessDaemon(tmp_path / "cw.db") as d:
        status, job = d.request("GET", f"/v1/jobs/{serve['id']}")
        assert job["calls"] == 1
        status, by_model = d.request("GET", "/v1/summary?group_by=model")
        calls = {g["key"]: g["calls"] for g in by_model["groups"]}
        assert calls[MODEL] == 1 and calls["nobody-serves-this"] == 1


def test_a_live_job_owns_its_process_tree_and_ends_when_its_processes_are_gone(tmp_path):
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    # A job its opener ends (the Slurm prolog's, tagged ended_by) outlives its processes.
    held = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        with InProcessDaemon(tmp_path / "cw.db", backend="none",
                             housekeeping_every_s=0.2) as d:
            status, job = d.request("POST", "/v1/jobs", {"name": "sleeper", "kind": "other",
                                                         "pid": child.pid})
            assert status == 201
            status, slurm = d.request("POST", "/v1/jobs", {
                "name": "slurm-4242", "kind": "training", "pid": held.pid,
                "identity": "slurm:4242", "tags": {"ended_by": "epilog"}})
            assert status == 201
            for proc in (child, held):
                proc.kill()
                proc.wait()
            d.wait_for(lambda: d.request("GET", f"/v1/jobs/{job['id']}")[1]["status"] == "lost",
                       timeout_s=20)
            assert d.request("GET", f"/v1/jobs/{slurm['id']}")[1]["status"] == "running"
            status, ended = d.request("POST", f"/v1/jobs/{slurm['id']}/end", {"exit_code": 0})
            assert (status, ended["status"]) == (200, "finished")
        # After a restart too (the tag is read back from the store).
        with InProcessDaemon(tmp_path / "cw.db", backend="none",
                             housekeeping_every_s=0.2) as d:
            status, reopened = d.request("POST", "/v1/jobs", {
                "name": "slurm-4243", "kind": "training", "pid": held.pid,
                "tags": {"ended_by": "epilog"}})
            assert status == 201
        with InProcessDaemon(tmp_path / "cw.db", backend="none",
                             housekeeping_every_s=0.2) as d:
            d.wait_for(lambda: d.daemon.loop.last_tick_mono is not None)
            time.sleep(1.0)  # five housekeeping turns
            assert d.request("GET", f"/v1/jobs/{reopened['id']}")[1]["status"] == "running"
    finally:
        child.kill()
        held.kill()


class Hanging:
    """A collector whose reads hang (a wedged driver call) until released."""

    polls = True

    def __init__(self) -> None:
        self.release = threading.Event()

    def devices(self) -> list:
        return []

    def poll(self, now_s: float) -> None:
        self.release.wait(30)

    def collect(self, now_s: float) -> list:
        return []

    def close(self) -> None:
        self.release.set()


def test_a_wrapper_reports_the_end_after_reaping_its_command_and_the_report_wins(tmp_path):
    """The wrapper reaps its command, then reports the end: in between, the job's processes are
    gone. A housekeeping turn falling there must not mark it lost (seen in CI: the wrapper's
    report was refused, the run counted failed), and a report arriving after a "lost" records how
    the job really ended."""
    def register_then_reap(d: InProcessDaemon, name: str) -> dict:
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
        status, job = d.request("POST", "/v1/jobs", {"name": name, "kind": "other",
                                                     "pid": child.pid})
        assert status == 201
        child.kill()
        child.wait()  # reaped, as the wrapper does before it reports
        return job

    with InProcessDaemon(tmp_path / "cw.db", backend="none", housekeeping_every_s=1.0) as d:
        # Grace: two turns (2 s); nothing reports yet.
        job = register_then_reap(d, "late")
        time.sleep(1.2)  # at least one turn saw it gone; a slow machine only makes turns later
        assert d.request("GET", f"/v1/jobs/{job['id']}")[1]["status"] == "running"
        status, ended = d.request("POST", f"/v1/jobs/{job['id']}/end", {"exit_code": 0})
        assert (status, ended["status"], ended["exit_code"]) == (200, "finished", 0)

        # No report within the grace: lost. Then the report comes: it says how the job ended.
        job = register_then_reap(d, "later")
        d.wait_for(lambda: d.request("GET", f"/v1/jobs/{job['id']}")[1]["status"] == "lost",
                   timeout_s=20)
        seen_lost_s = time.time()
        lost = d.request("GET", f"/v1/jobs/{job['id']}")[1]
        ended_s = lost["ended_s"]
        # It ended when its processes were first found gone, the grace (2 s) before it was
        # marked lost, not when it was marked.
        assert lost["started_s"] <= ended_s <= seen_lost_s - 1.9
        status, ended = d.request("POST", f"/v1/jobs/{job['id']}/end", {"exit_code": 3})
        assert (status, ended["status"], ended["exit_code"]) == (200, "failed", 3)
        assert ended["ended_s"] == ended_s  # the report changes how it ended, not when
        # Said once: a second report is a conflict, as for any ended job.
        status, body = d.request("POST", f"/v1/jobs/{job['id']}/end", {"exit_code": 0})
        assert status == 409 and "already ended (status failed)" in body["error"], body


def test_healthz_is_503_while_the_sampler_hangs_and_200_once_it_recovers(tmp_path):
    hanging = Hanging()

    def prepare(daemon) -> None:
        daemon.sampler.collectors.append(hanging)

    ipd = InProcessDaemon(tmp_path / "cw.db", backend="none", prepare=prepare)
    build = ipd.build
    ipd.build = lambda: build(stuck_after_s=0.5)  # real seconds of silence: stuck
    with ipd as d:
        d.wait_for(lambda: d.request("GET", "/healthz")[0] == 503, timeout_s=10)
        status, health = d.request("GET", "/healthz")
        assert health["status"] == "stuck" and not health["ok"]
        status, metrics = d.request("GET", "/metrics")
        families = {f.name: f for f in text_string_to_metric_families(metrics)}
        (up,) = families["carbonwatch_up"].samples
        assert up.value == 0.0
        hanging.release.set()
        d.wait_for(lambda: d.request("GET", "/healthz")[0] == 200, timeout_s=10)
