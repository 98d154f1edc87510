"""Crash and restart: kill -9 mid-ingestion loses nothing acknowledged and energy still adds up;
SIGTERM flushes, and a restart resumes the running jobs and the replay where they were."""

from __future__ import annotations

import math
import sqlite3
import threading
import time

from daemon_helpers import FIXTURE, INFER_PID, MODEL, REPLAY, DaemonProcess, fixture_calls

from carbonwatch.collectors.trace import load_trace

TRACE_J = load_trace(FIXTURE).energy_j  # the counter delta over the whole trace


def _energy_by_device_minute(conn: sqlite3.Connection) -> dict[tuple[str, int], float]:
    return {
        (device, minute): energy_j
        for device, minute, energy_j in conn.execute(
            "SELECT device_id, minute_s, SUM(energy_j) FROM energy_minute GROUP BY 1, 2"
        )
    }


def _jobs_equal_their_minutes(conn: sqlite3.Connection) -> None:
    for job_id, energy_j in conn.execute("SELECT id, energy_j FROM jobs"):
        rows_j = conn.execute(
            "SELECT COALESCE(SUM(energy_j), 0) FROM energy_minute WHERE consumer = ?",
            [f"job:{job_id}"],
        ).fetchone()[0]
        assert math.isclose(energy_j, rows_j, rel_tol=1e-9, abs_tol=1e-9)


def test_kill_9_mid_ingestion_loses_no_acknowledged_batch_and_energy_still_adds_up(tmp_path):
    db = tmp_path / "cw.db"
    calls = fixture_calls()
    batches = [calls[i:i + 50] for i in range(0, len(calls), 50)]
    acked: dict[int, int] = {}  # batch id -> calls, as the daemon acknowledged them
    sent: list[int] = []  # indexes of the batches acknowledged
    args = ("--backend", REPLAY, "--replay-speed", "5")

    first = DaemonProcess(db, *args).start()
    stop = threading.Event()

    def post_until_killed() -> None:
        for index, batch in enumerate(batches):
            if stop.is_set():
                return
            try:
                status, body = first.request("POST", "/v1/calls", {"calls": batch})
            except OSError:
                return  # the daemon died mid-request: this batch was not acknowledged
            assert status == 200, body
            acked[body["batch_id"]] = body["accepted"]
            sent.append(index)
            time.sleep(0.08)  # a steady stream, so the kill lands mid-ingestion

    poster = threading.Thread(target=post_until_killed)
    poster.start()
    # Kill once some minute rows are written (a flush happened) and while batches are flowing.
    first.wait_for(lambda: len(acked) >= 5 and first.request(
        "GET", "/v1/summary")[1]["groups"], timeout_s=30)
    first.kill()
    stop.set()
    poster.join()
    assert 5 <= len(acked) < len(batches)

    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        stored = dict(conn.execute("SELECT id, calls FROM call_batches"))
        assert {b: stored.get(b) for b in acked} == acked  # every acknowledged batch is there
        # Conservation in what the crash left: the written minutes are whole intervals, from the
        # trace's start to where the last committed flush ended.
        until_s = conn.execute(
            "SELECT value FROM meta WHERE key LIKE 'replay_until_s:%'").fetchone()[0]
        written_j = math.fsum(_energy_by_device_minute(conn).values())
        _jobs_equal_their_minutes(conn)
    trace = load_trace(FIXTURE)
    counter_mj = [mj for t, mj in zip(trace.energy_t_s, trace.energy_mj, strict=True)
                  if t <= float(until_s)][-1]
    assert math.isclose(written_j, (counter_mj - trace.energy_mj[0]) / 1000, rel_tol=1e-9)

    # Restart: the replay resumes where the store ends; the client resends what was not acked.
    with DaemonProcess(db, *args) as second:
        for index, batch in enumerate(batches):
            if index not in sent:
                status, body = second.request("POST", "/v1/calls", {"calls": batch})
                assert status == 200, body
        second.wait_for(second.replay_finished)
        status, listed = second.request("GET", "/v1/jobs")
    assert second.proc.returncode == 0
    (service,) = listed["jobs"]  # the service registered before the crash, resumed
    assert (service["status"], service["model"], service["pids"]) == ("running", MODEL,
                                                                      [INFER_PID])

    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        by_minute = _energy_by_device_minute(conn)
        _jobs_equal_their_minutes(conn)
        settled = conn.execute("SELECT SUM(calls) FROM call_minute").fetchone()[0]
        batched, pending = conn.execute(
            "SELECT SUM(calls), COUNT(pending) FROM call_batches").fetchone()
    # The fixture lies within one minute: that minute's energy, summed over consumers, is the
    # device's counter delta over the whole trace, across the crash and the restart.
    assert list(by_minute) == [("gpu0", int(trace.start_s // 60 * 60))]
    assert math.isclose(by_minute[("gpu0", int(trace.start_s // 60 * 60))], TRACE_J,
                        rel_tol=1e-9)
    # Every stored call settled exactly once; a batch committed but not acknowledged when the
    # daemon died may have been resent, so a stored batch can hold a call twice, never zero.
    assert pending == 0
    assert settled == batched >= len(calls)


def test_sigterm_flushes_and_a_restart_continues_the_job_totals(tmp_path):
    db = tmp_path / "cw.db"
    with DaemonProcess(db, "--backend", REPLAY, "--replay-speed", "4") as first:
        status, created = first.request(
            "POST", "/v1/jobs", {"name": "train", "kind": "training", "model": "mlp-8192",
                                 "pid": 416})
        assert status == 201, created
        first.wait_for(lambda: first.request(
            "GET", f"/v1/jobs/{created['id']}")[1]["energy_j"] > 0)
    assert first.proc.returncode == 0
    with sqlite3.connect(db) as conn:
        (before_j,) = conn.execute("SELECT energy_j FROM jobs").fetchone()
        written_j = math.fsum(_energy_by_device_minute(conn).values())

    with DaemonProcess(db, "--backend", REPLAY, "--replay-speed", "20") as second:
        second.wait_for(second.replay_finished)
        status, job = second.request("GET", f"/v1/jobs/{created['id']}")
        assert job["status"] == "running" and job["energy_j"] >= before_j
        status, ended = second.request("POST", f"/v1/jobs/{created['id']}/end",
                                       {"exit_code": 0})
        assert status == 200 and ended["status"] == "finished" and ended["exit_code"] == 0
    with sqlite3.connect(db) as conn:
        (after_j,) = conn.execute("SELECT energy_j FROM jobs").fetchone()
        total_j = math.fsum(_energy_by_device_minute(conn).values())
        _jobs_equal_their_minutes(conn)
    assert written_j < TRACE_J  # the first run stopped mid-trace ...
    assert after_j > before_j  # ... and the job's total went on from where it was
    assert math.isclose(total_j, TRACE_J, rel_tol=1e-9)
