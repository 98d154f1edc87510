"""``build_daemon`` builds every part in order and hands them to a frozen ``Daemon``; a build that
fails part-way closes what it had opened (issue 13: no two-phase set-up)."""

from __future__ import annotations

import dataclasses
import os
import threading
from pathlib import Path

import pytest

from carbonwatch.config import Settings
from carbonwatch.daemon.build import build_daemon
from carbonwatch.daemon.trace_clock import ReplayClock
from carbonwatch.errors import ProviderError
from carbonwatch.grid.static import StaticSource, world_average
from carbonwatch.grid.types import IntensityPoint

FIXTURE = Path(__file__).parent / "fixtures" / "h200-shared-gpu"


def daemon_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("carbonwatch-")]


def open_paths() -> set[str]:
    fds = Path("/proc/self/fd")
    out = set()
    for fd in fds.iterdir():
        try:
            out.add(os.readlink(fd))
        except OSError:
            continue  # closed meanwhile (the listing's own fd)
    return out


class GridDown:
    """An intensity source whose provider cannot answer (the IntensitySource seam)."""

    def intensity_at(self, t_s: float) -> IntensityPoint:
        raise ProviderError("grid: provider unreachable")


def test_a_build_that_fails_part_way_closes_the_store_threads_and_the_interval_log(tmp_path):
    log = tmp_path / "intervals.jsonl"
    settings = Settings(db=str(tmp_path / "cw.db"), backend="none", port=0,
                        extra={"interval_log": str(log)}).validate()
    before = daemon_threads()
    # The provenance step asks the grid, after the writer, reader, collectors and the interval
    # log are open.
    with pytest.raises(ProviderError, match="unreachable") as failed:
        build_daemon(settings, intensity=GridDown())
    # ``failed`` holds the traceback, so its frames' parts are not yet collected: what is shut
    # was closed by the build, not by the garbage collector.
    assert failed.traceback
    assert log.exists()  # it had been opened: the failure came after it
    assert str(log) not in open_paths()
    assert str(tmp_path / "cw.db") not in open_paths()
    assert daemon_threads() == before


def test_a_replay_daemon_s_parts_all_read_the_trace_clock(tmp_path):
    settings = Settings(db=str(tmp_path / "cw.db"), backend=f"replay:{FIXTURE}", port=0).validate()
    daemon = build_daemon(settings, intensity=StaticSource(world_average()), replay_speed=50)
    try:
        clock = daemon.clock
        assert isinstance(clock, ReplayClock)  # the wall clock replaced before any part used it
        assert daemon.loop.clock is clock and daemon.jobs.clock is clock
        assert daemon.calls.clock is clock and daemon.scraper.clock is clock
        assert daemon.health.clock is clock and daemon.prometheus.now == clock.time
        assert daemon.loop.end_s is not None and daemon.health.replay
        with pytest.raises(dataclasses.FrozenInstanceError):
            daemon.scheduler = None  # type: ignore[misc]
    finally:
        daemon.close()
    assert str(tmp_path / "cw.db") not in open_paths()


def test_a_live_daemon_labels_in_wall_time_and_measures_on_a_steady_clock(tmp_path):
    settings = Settings(db=str(tmp_path / "cw.db"), backend="none", port=0).validate()
    daemon = build_daemon(settings, intensity=StaticSource(world_average()))
    try:
        assert daemon.loop.steady is not daemon.clock and daemon.loop.clock is daemon.clock
        assert daemon.loop.end_s is None and not daemon.health.replay
        assert daemon.health_view()["connections"] == {"open": 0, "closed_idle": 0,
                                                       "refused": 0}
    finally:
        daemon.close()


def test_close_stops_sampling_and_closes_the_collectors(tmp_path):
    """Daemon.close() closes what the build opened, the collectors too: a replay of 2 GPUs reads
    its counters on a pool, whose threads must not outlive the daemon."""
    settings = Settings(db=str(tmp_path / "cw.db"), backend=f"replay:{FIXTURE}", port=0).validate()
    before = daemon_threads()
    daemon = build_daemon(settings, intensity=StaticSource(world_average()), replay_speed=50,
                          replay_gpus=2)
    try:
        daemon.loop.start()
        for _ in range(200):  # until a counter round has run on the pool
            if any(n.startswith("carbonwatch-counter") for n in daemon_threads()):
                break
            threading.Event().wait(0.05)
        assert any(n.startswith("carbonwatch-counter") for n in daemon_threads())
    finally:
        daemon.close()
    assert daemon_threads() == before
    assert str(tmp_path / "cw.db") not in open_paths()
