"""kill -9 at random moments (seeded; the seed is in the figures) during sampling, during
ingestion and around a deferred job's launch, then restart."""

from __future__ import annotations

import os
import random
import sqlite3
import sys
import threading
import time

from .harness import (
    INFER_PID,
    MODEL,
    TRACE,
    ChaosDaemon,
    batches_of,
    fixture_calls,
    replay_args,
)
from .steady import Acks, check, probe_health

FAMILY = "kill -9 and restart"
SEED = int(os.environ.get("CHAOS_SEED", time.time_ns() % 1_000_000))


def _rng(exp, salt: int) -> random.Random:
    exp.figure("seed", SEED)
    return random.Random(SEED * 1000 + salt)


def test_kill_9_during_sampling(tmp_path, experiment):
    """Killed three times at random moments while sampling two replayed GPUs with two jobs
    running, and restarted each time, the daemon resumes the jobs and the replay where the
    store left off: the stored energy per device equals the trace's counter delta exactly (no
    interval lost or counted twice), and the acknowledged jobs and job end are stored."""
    rng = _rng(experiment, 1)
    acks = Acks()
    daemon = ChaosDaemon(tmp_path, *replay_args(speed=4, gpus=2)).start()
    ids = {}
    for name, kind, pid in (("train", "training", 416), ("serve", "inference", INFER_PID)):
        status, body = daemon.request("POST", "/v1/jobs", {"name": name, "kind": kind,
                                                           "model": MODEL, "pid": pid})
        assert status == 201, body
        acks.jobs.add(body["id"])
        ids[name] = body["id"]
    train_id = ids["train"]
    delays = []
    for _ in range(3):
        delays.append(round(rng.uniform(0.3, 1.6), 3))
        time.sleep(delays[-1])
        daemon.kill()
        daemon.start()
    daemon.wait_for(daemon.replay_finished, timeout_s=30)
    status, listed = daemon.request("GET", "/v1/jobs?status=running")
    resumed = {j["id"] for j in listed["jobs"]}
    status, ended = daemon.request("POST", f"/v1/jobs/{train_id}/end", {"exit_code": 0})
    assert status == 200, ended
    acks.ended[train_id] = "finished"
    health = probe_health(daemon)
    assert daemon.stop() == 0
    experiment.figure("kills", len(delays))
    experiment.figure("kill delays (s)", delays)
    experiment.observe(f"killed at {delays} s after each start; after the restarts both jobs "
                       f"were running again ({len(resumed & acks.jobs)}/2 resumed)")
    assert resumed == acks.jobs
    check(experiment, daemon.db, acks, health=health, trace=TRACE,
          counter_devices=["gpu0", "gpu1"])


def test_kill_9_during_ingestion(tmp_path, experiment):
    """Killed twice at random moments while a client streams call batches, the daemon loses no
    acknowledged batch: after restarts (the client resends only what was not acknowledged)
    every acknowledged batch is stored with its calls, every stored call is settled exactly once,
    and the stored energy equals the trace's counter delta."""
    rng = _rng(experiment, 2)
    acks = Acks()
    batches = batches_of(fixture_calls(), 40)
    daemon = ChaosDaemon(tmp_path, *replay_args(speed=3)).start()
    done: set[int] = set()
    stop = threading.Event()

    def stream() -> None:
        while not stop.is_set():
            for index, batch in enumerate(batches):
                if stop.is_set():
                    return
                if index in done:
                    continue
                try:
                    status, body = daemon.request("POST", "/v1/calls", {"calls": batch})
                except OSError:
                    time.sleep(0.05)  # down: not acknowledged, resent later
                    continue
                if acks.batch(status, body):
                    done.add(index)
                time.sleep(0.03)
            if len(done) == len(batches):
                return

    client = threading.Thread(target=stream)
    client.start()
    delays = []
    for _ in range(2):
        delays.append(round(rng.uniform(0.5, 2.0), 3))
        time.sleep(delays[-1])
        before = len(acks.batches)
        daemon.kill()
        time.sleep(0.2)
        daemon.start()
        experiment.observe(f"kill after {delays[-1]} s with {before} batches acknowledged")
    client.join(60)
    stop.set()
    assert len(done) == len(batches), "the client could not deliver every batch"
    daemon.wait_for(daemon.replay_finished, timeout_s=30)
    health = probe_health(daemon)
    assert daemon.stop() == 0
    experiment.figure("kills", len(delays))
    experiment.figure("batches acknowledged", len(acks.batches))
    experiment.figure("calls acknowledged", acks.calls)
    check(experiment, daemon.db, acks, health=health, trace=TRACE, counter_devices=["gpu0"])
    with sqlite3.connect(daemon.db) as conn:
        stored = conn.execute("SELECT COUNT(*), SUM(calls) FROM call_batches").fetchone()
    experiment.figure("batches stored", stored[0])
    experiment.figure("calls stored", stored[1])
    experiment.observe(f"{len(acks.batches)} batches acknowledged, {stored[0]} stored (more "
                       "stored would be a batch committed but cut off before its reply, resent)")


MARKER = (
    "import sys, time\n"
    "open(sys.argv[1], 'a').write(f'{time.time()}\\n')\n"
    "time.sleep(1.5)\n"
)


def test_kill_9_around_a_deferred_launch(tmp_path, experiment):
    """Killed at a random moment within half a second of a deferred job's planned start and
    restarted at once on the same address, the daemon still runs the job exactly once, before
    its deadline, and records it done with its measured job; the acknowledged deferral is
    stored."""
    rng = _rng(experiment, 3)
    acks = Acks()
    daemon = ChaosDaemon(tmp_path, "--backend", "none", keep_port=True).start()
    marker = tmp_path / "ran.txt"
    now = time.time()
    status, view = daemon.request("POST", "/v1/deferred", {
        "command": [sys.executable, "-c", MARKER, str(marker)], "name": "nightly",
        "deadline_s": now + 6.0, "duration_s": 3.0, "provider": "static",
    })
    assert status == 201, view
    acks.deferred.add(view["id"])
    planned_s = view["plan"][0]["start_s"]  # latest safe start: deadline - duration
    kill_s = planned_s + rng.uniform(-0.5, 0.5)
    time.sleep(max(0.0, kill_s - time.time()))
    daemon.kill()
    killed_at = time.time() - planned_s
    daemon.start()
    done = daemon.wait_for(
        lambda: (v := daemon.request("GET", f"/v1/deferred/{view['id']}")[1])["status"]
        in ("done", "failed") and v, timeout_s=30, every_s=0.1)
    job = daemon.request("GET", f"/v1/jobs/{done['job_id']}")[1] if done.get("job_id") else {}
    health = probe_health(daemon)
    assert daemon.stop() == 0
    runs = [float(x) for x in marker.read_text().split()] if marker.exists() else []
    experiment.figure("kill offset from planned start (s)", round(killed_at, 3))
    experiment.figure("times the job ran", len(runs))
    experiment.observe(f"killed {killed_at:+.2f} s from the planned start; the job ran "
                       f"{len(runs)} time(s), status {done['status']}" +
                       (f" ({done['message']})" if done.get("message") else ""))
    experiment.figure("job measured by", "the daemon" if job.get("source") == "api"
                      else f"source {job.get('source')!r}")
    assert len(runs) == 1
    assert done["status"] == "done" and done["job_id"], done
    # Measured once, by the daemon: a wrapper measuring on its own beside it (because the
    # daemon was restarting when it looked) would count the node's energy twice.
    assert job["source"] == "api", job
    assert done["ended_s"] <= view["deadline_s"] + 1.0
    acks.jobs.add(done["job_id"])
    acks.ended[done["job_id"]] = "finished"
    check(experiment, daemon.db, acks, health=health, interval_log=None)


def test_kill_9_while_a_deferred_job_runs(tmp_path, experiment):
    """Killed while a deferred job runs and restarted only after the job has ended, the daemon
    still gets the job's end from its wrapper (which waits for it to come back): the job is
    recorded finished with exit code 0 and the deferred job done, having run once."""
    acks = Acks()
    daemon = ChaosDaemon(tmp_path, "--backend", "none", keep_port=True).start()
    marker = tmp_path / "ran.txt"
    status, view = daemon.request("POST", "/v1/deferred", {
        "command": [sys.executable, "-c", MARKER, str(marker)], "name": "nightly",
        "deadline_s": time.time() + 4.0, "duration_s": 3.0, "provider": "static",
    })
    assert status == 201, view
    acks.deferred.add(view["id"])
    daemon.wait_for(marker.exists, timeout_s=20)  # the job runs (for 1.5 s)
    time.sleep(0.3)
    daemon.kill()
    down_s = 2.5  # past the job's end
    time.sleep(down_s)
    daemon.start()
    done = daemon.wait_for(
        lambda: (v := daemon.request("GET", f"/v1/deferred/{view['id']}")[1])["status"]
        in ("done", "failed") and v, timeout_s=60, every_s=0.1)
    job = daemon.request("GET", f"/v1/jobs/{done['job_id']}")[1] if done.get("job_id") else {}
    health = probe_health(daemon)
    assert daemon.stop() == 0
    runs = [float(x) for x in marker.read_text().split()]
    log = (tmp_path / "deferred-logs" / f"{view['id']}.log").read_text().splitlines()
    said = next((ln for ln in log if "exited" in ln or "error" in ln), log[-1] if log else "")
    experiment.figure("daemon down (s)", down_s)
    experiment.observe(f"deferred job {done['status']} (exit {done['exit_code']}); its job "
                       f"{job.get('status')} with exit code {job.get('exit_code')}; ran "
                       f"{len(runs)} time(s); the wrapper said {said.strip()!r}")
    assert len(runs) == 1
    assert (job.get("status"), job.get("exit_code")) == ("finished", 0), (job, said)
    assert done["status"] == "done", done
    acks.jobs.add(done["job_id"])
    acks.ended[done["job_id"]] = "finished"
    check(experiment, daemon.db, acks, health=health)
