"""``DeferredJob``: a ``deferred_jobs`` row typed, stored with the encoding the table always had
(a real SQLite store, read back with plain SQL), and the one place status changes are checked."""

from __future__ import annotations

import json

import pytest

from carbonwatch.scheduler.job import ACTIVE, FINAL, BadTransition, DeferredJob, Status
from carbonwatch.store import Store, deferred


def _job() -> DeferredJob:
    return DeferredJob(
        id="j1", name="nightly", command=["python", "train.py"], submitted_s=1000.0,
        deadline_s=5000.0, duration_s=600.0, status=Status.QUEUED,
        plan=[(1200.0, 1500.0), (2000.0, 2300.0)], interruptible=True, env={"A": "b"},
        owner_uid=1000, provider="csv", plan_intensity_g_per_kwh=100.0,
        baseline_intensity_g_per_kwh=250.0,
    )


def test_a_job_round_trips_through_the_store_in_the_tables_encoding(tmp_path):
    job = _job()
    with Store(tmp_path / "cw.db") as store:
        with store.transaction():
            deferred.insert(store.conn, job.to_row())
        raw = store.conn.execute(
            "SELECT status, plan, command, env, interruptible, runs, ran_s FROM deferred_jobs"
        ).fetchone()
        back = DeferredJob.from_row(deferred.get(store.conn, "j1"))
        running = back.moved(status=Status.LAUNCHING).moved(
            status=Status.RUNNING, runs=[[1200.0, None]], wrapper_pid=42)
        with store.transaction():
            deferred.update(store.conn, "j1", **{k: running.to_row()[k]
                                                 for k in ("status", "runs", "wrapper_pid")})
        again = DeferredJob.from_row(deferred.get(store.conn, "j1"))
    assert raw == ("queued", "[[1200.0, 1500.0], [2000.0, 2300.0]]",
                   '["python", "train.py"]', '{"A": "b"}', 1, "[]", 0)
    assert back == job and back.status is Status.QUEUED
    assert again == running and again.runs == [[1200.0, None]]
    view = again.view()
    assert view["status"] == "running" and "env" not in view
    assert view["expected_saving_pct"] == pytest.approx(60.0)
    assert view["plan"][1] == {"start": "1970-01-01T00:33:20Z", "end": "1970-01-01T00:38:20Z",
                               "start_s": 2000.0, "end_s": 2300.0}
    assert json.loads(json.dumps(view)) == view  # what the API serves


@pytest.mark.parametrize(
    ("old", "new"),
    [(Status.QUEUED, Status.PAUSED), (Status.RUNNING, Status.LAUNCHING),
     (Status.PAUSED, Status.QUEUED), *[(f, n) for f in FINAL for n in Status]],
)
def test_a_status_its_life_does_not_allow_is_refused(old, new):
    job = DeferredJob(id="j", name="n", command=["x"], submitted_s=0.0, deadline_s=1.0,
                      duration_s=1.0, status=old, plan=[(0.0, 1.0)])
    with pytest.raises(BadTransition, match=f"{old} cannot become {new}"):
        job.moved(status=new)


def test_every_active_job_may_end_and_a_launch_may_repeat():
    for old in ACTIVE:
        for end in FINAL:
            job = DeferredJob(id="j", name="n", command=["x"], submitted_s=0.0, deadline_s=1.0,
                              duration_s=1.0, status=old, plan=[(0.0, 1.0)])
            assert job.moved(status=end).status is end
    launching = _job().moved(status="launching")  # a stored string is taken as its Status
    assert launching.moved(status=Status.LAUNCHING).status is Status.LAUNCHING
    with pytest.raises(TypeError, match="not a deferred_jobs column: nope"):
        _job().moved(nope=1)
