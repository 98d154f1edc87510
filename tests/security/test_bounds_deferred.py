"""Finding 4: deferred jobs' times within a year, no NUL in any string, environment names
without '=', any launch failure fails the job, and a bad stored row is failed at restart."""

from __future__ import annotations

import json
import sqlite3
import time

import pytest
from daemon_helpers import DaemonProcess

from .helpers import ADMIN_TOKEN


def _daemon(tmp_path):
    # Over TCP only the admin token submits deferred jobs (issue 12's scopes): the bounds are
    # checked on requests that would otherwise be accepted.
    daemon = DaemonProcess(tmp_path / "cw.db", "--backend", "none",
                           env={"CARBONWATCH_ADMIN_TOKEN": ADMIN_TOKEN})
    daemon.default_token = ADMIN_TOKEN
    return daemon


@pytest.mark.parametrize(
    ("body", "named"),
    [
        ({"deadline_s": 1e12, "duration_s": 10}, "deadline"),
        ({"deadline": "+99999999d", "duration_s": 10}, "deadline"),
        ({"deadline": "+400d", "duration_s": 10}, "deadline"),
        ({"deadline": "+1h", "duration": "99999999d"}, "duration"),
        ({"deadline_s": -1e300, "duration_s": 10}, "deadline"),
        ({"deadline": "0001-01-01T00:00:00+14:00", "duration_s": 10}, "deadline"),
        ({"deadline": "+1h", "duration_s": 10, "command": ["tr\0ue"]}, "command[0]"),
        ({"deadline": "+1h", "duration_s": 10, "name": "a\0b"}, "name"),
        ({"deadline": "+1h", "duration_s": 10, "cwd": "/tmp\0/x"}, "cwd"),
        ({"deadline": "+1h", "duration_s": 10, "env": {"A": "x\0y"}}, "env.A"),
        ({"deadline": "+1h", "duration_s": 10, "env": {"A\0": "x"}}, "env"),
        ({"deadline": "+1h", "duration_s": 10, "env": {"A=B": "x"}}, "env"),
        ({"deadline": "+1h", "duration_s": 10, "env": {"": "x"}}, "env"),
    ],
)
def test_unbounded_or_unrunnable_submissions_are_refused(tmp_path, body, named):
    with _daemon(tmp_path) as daemon:
        status, answer = daemon.request("POST", "/v1/deferred", {"command": ["true"], **body})
        assert status == 400, answer
        assert named in answer["error"]
        assert daemon.request("GET", "/v1/deferred") == (200, {"deferred": []})
    assert "Traceback" not in "".join(daemon.stderr)


def test_nul_is_refused_in_every_body(tmp_path):
    with _daemon(tmp_path) as daemon:
        status, answer = daemon.request("POST", "/v1/jobs",
                                        {"name": "j", "kind": "other", "model": "m\0"})
        assert (status, answer["error"].split(":")[0]) == (400, "model")
        status, answer = daemon.request(
            "POST", "/v1/calls", {"calls": [{"model": "a\0", "start": 1.0, "end": 2.0}]})
        assert (status, answer["error"].split(":")[0]) == (400, "calls[0].model")
        status, answer = daemon.request(
            "POST", "/v1/calls",
            {"calls": [{"model": "a", "start": 1.0, "end": 2.0, "tags": {"k": "v\0"}}]})
        assert (status, answer["error"].split(":")[0]) == (400, "calls[0].tags.k")
        # the escape of a backslash followed by u0000 is text, not a NUL
        status, _ = daemon.request(
            "POST", "/v1/calls", {"calls": [{"model": "a\\u0000", "start": 1.0, "end": 2.0}]})
        assert status == 200


def _bad_rows(db, now_s: float) -> None:
    """Rows no current daemon stores: a deadline in year 33658, a NUL in argv, an env key with
    '=', a plan that is not JSON numbers; all due now, so the restart tries to launch them."""
    rows = [
        ("far", ["true"], {}, 1e12, [[1e12 - 10, 1e12]]),
        ("nul", ["tr\0ue"], {}, now_s + 60, [[now_s - 5, now_s + 5]]),
        ("env", ["true"], {"A=B": "x"}, now_s + 60, [[now_s - 5, now_s + 5]]),
        ("plan", ["true"], {}, now_s + 60, [["soon", None]]),
    ]
    with sqlite3.connect(db) as conn:
        for name, argv, env, deadline_s, plan in rows:
            conn.execute(
                "INSERT INTO deferred_jobs (id, name, command, env, zone, submitted_s,"
                " deadline_s, duration_s, status, plan, log_path) VALUES"
                " (?, ?, ?, ?, '', ?, ?, 10, ?, ?, ?)",
                [name, name, json.dumps(argv), json.dumps(env), now_s - 20, deadline_s,
                 "launching" if name == "env" else "queued", json.dumps(plan),
                 str(db.parent / f"{name}.log")])


def test_bad_stored_rows_are_failed_at_restart_never_a_crash(tmp_path):
    daemon = _daemon(tmp_path).start()
    assert daemon.stop() == 0
    _bad_rows(daemon.db, time.time())
    daemon.start()
    try:
        status, health = daemon.request("GET", "/healthz")
        assert status == 200, "".join(daemon.stderr)

        def settled():
            status, body = daemon.request("GET", "/v1/deferred")
            assert status == 200, body
            jobs = {j["id"]: j for j in body["deferred"]}
            return jobs if all(j["status"] == "failed" for j in jobs.values()) else None

        jobs = daemon.wait_for(settled, timeout_s=20)
    finally:
        assert daemon.stop() == 0
    assert set(jobs) == {"far", "nul", "env", "plan"}
    assert jobs["far"]["deadline"] is None and jobs["far"]["deadline_s"] == 1e12
    assert "failed at restart" in jobs["far"]["message"]
    assert "could not start the wrapper" in jobs["nul"]["message"]
    err = "".join(daemon.stderr)
    assert "Traceback" not in err
    # and the next start has nothing left to trip on
    daemon.start()
    assert daemon.request("GET", "/healthz")[0] == 200
    assert daemon.stop() == 0


def test_a_running_job_row_with_bad_pids_is_marked_lost_at_restart(tmp_path):
    daemon = _daemon(tmp_path).start()
    assert daemon.stop() == 0
    with sqlite3.connect(daemon.db) as conn:
        for job_id, pids in (("strs", '["x", 5]'), ("huge", "[99999999999999999999]"),
                             ("obj", '{"a": 1}'), ("good", "[]")):
            conn.execute("INSERT INTO jobs (id, name, kind, pids, source, status, started_s)"
                         " VALUES (?, ?, 'other', ?, 'api', 'running', ?)",
                         [job_id, job_id, pids, time.time()])
    daemon.start()
    try:
        jobs = {j["id"]: j["status"] for j in daemon.request("GET", "/v1/jobs")[1]["jobs"]}
    finally:
        assert daemon.stop() == 0
    assert jobs == {"strs": "lost", "huge": "lost", "obj": "lost", "good": "running"}
    assert "Traceback" not in "".join(daemon.stderr)
