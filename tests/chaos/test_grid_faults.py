"""The grid provider fails in the middle of a plan: outage, slowness, garbage, a wrong shape,
then no forecast at all at launch time (a real aiohttp server on 127.0.0.1, switched between
modes while the daemon plans and launches deferred jobs)."""

from __future__ import annotations

import sys
import time

from .harness import ChaosDaemon, FakeGrid
from .steady import Acks, check, probe_health

FAMILY = "grid provider faults"
SLOT_S = 2.0
LOW_SLOT = 7  # the one low-carbon slot: t0 + 14 s .. t0 + 16 s
# A mode stays on past its window's end (at most this long) until the daemon has asked the
# provider in it: one refresh can be busy for longer than a window (a 503 retried with backoff,
# or a slow answer of slow_s, then the next 1 s tick), so fixed windows alone left a mode
# unexercised by chance, on old code as on new.
MODE_GRACE_S = 3.0
MARKER = (
    "import sys, time\n"
    "open(sys.argv[1], 'a').write(f'{time.time()}\\n')\n"
    "time.sleep(1.0)\n"
)


def _submit(daemon, acks, tmp_path, name, deadline_s, **extra):
    status, view = daemon.request("POST", "/v1/deferred", {
        "command": [sys.executable, "-c", MARKER, str(tmp_path / f"{name}.txt")],
        "name": name, "deadline_s": deadline_s, "duration_s": 2.0, **extra})
    assert status == 201, view
    acks.deferred.add(view["id"])
    return view


def test_provider_outage_slowness_and_garbage_mid_plan(tmp_path, experiment):
    """With the provider going down, slow, answering garbage and then with no forecast at all
    at launch time, the daemon keeps answering (/healthz well under a second), keeps the plans
    it made (from the provider, or from its cache when the provider is down), plans a job in a
    zone with no forecast for its latest safe start, and launches every job exactly once, on
    time (within 2 s of its planned start, the wrapper's start-up included) and before its
    deadline."""
    t0 = float(int(time.time()))
    slots = [(t0 + i * SLOT_S, t0 + (i + 1) * SLOT_S, 120.0 if i == LOW_SLOT else 450.0)
             for i in range(40)]
    acks = Acks()
    with FakeGrid(slots, slow_s=2.0) as grid:
        daemon = ChaosDaemon(tmp_path, "--backend", "none", config={
            "provider": "carbonaware", "provider_url": grid.url, "zone": "eastus",
            "scheduler_refresh_s": 1, "intensity_refresh_s": 1}).start()
        low_s = t0 + LOW_SLOT * SLOT_S
        a = _submit(daemon, acks, tmp_path, "fresh", t0 + 30)  # planned on the live forecast
        grid.mode = "down"
        b = _submit(daemon, acks, tmp_path, "cached", t0 + 25)  # the provider is down: cache
        c = _submit(daemon, acks, tmp_path, "noforecast", t0 + 9, zone="westus")  # nothing
        healthz_ms: list[float] = []
        modes = [("down", t0 + 3), ("slow", t0 + 6), ("garbage", t0 + 8), ("wrong", t0 + 10),
                 ("missing", low_s + 2)]  # missing from before the launches to the end
        for mode, until_s in modes:
            grid.mode = mode
            while time.time() < until_s or (
                    not grid.hits.get(mode) and time.time() < until_s + MODE_GRACE_S):
                t_req = time.monotonic()
                status, _ = probe_health(daemon)
                healthz_ms.append((time.monotonic() - t_req) * 1000)
                assert status == 200
                time.sleep(0.1)
            if mode == "wrong":
                plans_before_launch = {
                    v["id"]: daemon.request("GET", f"/v1/deferred/{v['id']}")[1]["plan"][0]
                    ["start_s"] for v in (a, b, c)}
        views = {v["name"]: daemon.wait_for(
            lambda v=v: (x := daemon.request("GET", f"/v1/deferred/{v['id']}")[1])["status"]
            in ("done", "failed") and x, timeout_s=20, every_s=0.1) for v in (a, b, c)}
        health = probe_health(daemon)
        assert daemon.stop() == 0
    experiment.figure("provider answers by mode", dict(grid.hits))
    experiment.figure("max /healthz latency (ms)", round(max(healthz_ms), 1))
    ran = {}
    for sub in (a, b, c):
        name = sub["name"]
        view = views[name]
        starts = [float(x) for x in (tmp_path / f"{name}.txt").read_text().split()]
        ran[name] = starts
        planned = sub["plan"][0]["start_s"]
        experiment.observe(
            f"{name}: planned on {sub['forecast_via']} ({sub['plan_basis']}) for "
            f"t0+{planned - t0:.0f} s, kept through the faults "
            f"({plans_before_launch[sub['id']] == planned}), ran {len(starts)}x at "
            f"t0+{starts[0] - t0:.2f} s, {view['status']} before its deadline "
            f"({view['ended_s'] <= sub['deadline_s']})")
        experiment.figure(f"{name}: start delay vs plan (s)", round(starts[0] - planned, 2))
        assert len(starts) == 1 and view["status"] == "done", view
        assert plans_before_launch[sub["id"]] == planned
        assert planned - 0.05 <= starts[0] <= planned + 2.0  # + the wrapper's start-up
        assert view["ended_s"] <= sub["deadline_s"]
        acks.jobs.add(view["job_id"])
        acks.ended[view["job_id"]] = "finished"
    assert (a["forecast_via"], a["plan"][0]["start_s"]) == ("provider", low_s)
    assert (b["forecast_via"], b["plan"][0]["start_s"]) == ("cache", low_s)
    assert c["plan_basis"] == "no_forecast" and c["plan"][0]["end_s"] == c["deadline_s"]
    assert max(healthz_ms) < 1000
    assert all(grid.hits.get(m) for m in ("down", "slow", "garbage", "wrong", "missing"))
    check(experiment, daemon.db, acks, health=health, interval_log=daemon.interval_log)
