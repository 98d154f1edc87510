"""The wall clock steps (an NTP correction, a VM resumed, ``date -s``) forward and back while a
job runs and calls are reported: the daemon in-process with a stepping wall clock injected at
its clock seam (``Daemon(clock=...)``), measuring this machine's CPU and RAM."""

from __future__ import annotations

import subprocess
import sys
import time
from typing import Any

from daemon_helpers import InProcessDaemon

from .steady import Acks, check, probe_health, read_interval_log

FAMILY = "clock steps"
STEPS_S = (3600.0, -7200.0, 3600.0)  # forward an hour, back two, forward one: net zero
BUSY = "import time\nwhile True:\n    t = time.time()\n    while time.time() - t < 0.003: pass\n" \
       "    time.sleep(0.007)\n"


class SteppingClock:
    """Wall time that can be stepped; monotonic time that cannot (as on a real machine)."""

    def __init__(self) -> None:
        self.offset_s = 0.0

    def time(self) -> float:
        return time.time() + self.offset_s

    def monotonic(self) -> float:
        return time.monotonic()

    def step(self, seconds: float) -> None:
        self.offset_s += seconds


def test_wall_clock_steps_forward_and_back_while_a_job_runs(tmp_path, experiment):
    """Stepping the wall clock an hour forward, two back and one forward again while a job runs
    and calls are reported, the daemon keeps sampling (no stall), neither invents nor loses
    energy (the RAM model's energy equals its constant power times the real time measured,
    within 5 %, and no interval is longer than a few seconds), the stored energy still equals
    what was measured per device and minute, the job's recorded duration equals the real time
    it ran (the steps cancel out), and every acknowledged call is stored and settled."""
    clock = SteppingClock()
    log = tmp_path / "intervals.jsonl"
    acks = Acks()
    ipd = InProcessDaemon(tmp_path / "cw.db", backend="none",
                          extra={"interval_log": str(log)})
    build = ipd.build
    ipd.build = lambda: build(replay_speed=1.0, node=None, clock=clock)
    busy = subprocess.Popen([sys.executable, "-c", BUSY])
    ages: list[Any] = []
    t_open = time.monotonic()
    try:
        with ipd as d:
            t_start = time.monotonic()
            status, job = d.request("POST", "/v1/jobs", {"name": "train", "kind": "training",
                                                         "pid": busy.pid})
            assert status == 201, job
            acks.jobs.add(job["id"])
            for step_s in (0.0, *STEPS_S):
                clock.step(step_s)
                for _ in range(3):
                    now = clock.time()  # the client's wall clock steps with the daemon's
                    calls = [{"model": "m", "start": now - 0.2 + i * 0.01, "end": now - 0.1
                              + i * 0.01, "pid": busy.pid} for i in range(10)]
                    acks.batch(*d.request("POST", "/v1/calls", {"calls": calls}))
                    time.sleep(0.4)
                status, health = d.request("GET", "/healthz")
                ages.append(max((x["last_sample_age_s"] or 0.0) for x in health["devices"]))
            status, ended = d.request("POST", f"/v1/jobs/{job['id']}/end", {"exit_code": 0})
            assert status == 200, ended
            real_s = time.monotonic() - t_start
            acks.ended[job["id"]] = "finished"
            health = probe_health(d)
        t_closed = time.monotonic()
    finally:
        busy.kill()
        busy.wait()
    intervals = read_interval_log(log)
    longest = max(iv["end_s"] - iv["start_s"] for iv in intervals)
    ram = [iv for iv in intervals if iv["device"] == "ram"]
    ram_s = sum(iv["end_s"] - iv["start_s"] for iv in ram)
    ram_j = sum(iv["energy_j"] for iv in ram)
    ram_w = ram[0]["energy_j"] / (ram[0]["end_s"] - ram[0]["start_s"])
    duration_s = ended["ended_s"] - ended["started_s"]
    experiment.figure("clock steps (s)", list(STEPS_S))
    experiment.figure("longest interval (s)", round(longest, 2))
    alive_s = t_closed - t_open  # the daemon's life: RAM is measured all of it
    experiment.figure("RAM time measured / daemon's real life (s)", f"{ram_s:.1f} / {alive_s:.1f}")
    experiment.figure("RAM energy vs constant power x time", f"{ram_j / (ram_w * ram_s):.4f}")
    experiment.figure("job duration recorded / real (s)", f"{duration_s:.1f} / {real_s:.1f}")
    experiment.figure("max sample age after a step (s)", round(max(ages), 2))
    experiment.observe(f"longest interval {longest:.2f} s; RAM measured over {ram_s:.1f} s of "
                       f"{alive_s:.1f} s real; job recorded {duration_s:.1f} s; sample age after "
                       f"each step {[round(a, 1) for a in ages]} s")
    assert longest < 5.0
    # RAM is measured from the sampler's start (inside the build, after t_open) to the final
    # flush: at most the daemon's life, and at least the time it served (the build itself, 0.8 s
    # once on a loaded machine, is not sampling time).
    served_s = t_closed - t_start
    assert 0.9 * served_s < ram_s <= alive_s
    assert abs(duration_s - real_s) < 1.0
    assert max(ages) < 5.0 and min(ages) >= 0.0
    assert ended["energy_j"] > 0
    check(experiment, tmp_path / "cw.db", acks, health=health, interval_log=log)
