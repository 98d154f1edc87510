"""What ``/healthz``, ``/v1/devices`` and the ``/metrics`` health gauges show: read from the
sampler, the shared state and the sampling loop at request time. Built by
:func:`~carbonwatch.daemon.build.build_daemon` once the loop exists, before the Prometheus
collector that reads it."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from carbonwatch.clock import Clock
from carbonwatch.daemon.connguard import ConnectionGuard
from carbonwatch.daemon.metrics import Health
from carbonwatch.daemon.sampling import SamplingLoop
from carbonwatch.daemon.scraping import Target
from carbonwatch.daemon.state import DaemonState
from carbonwatch.sampler import Sampler


def stuck_after_s(counter_interval_s: float, speed: float) -> float:
    """Real seconds of silence after which the sampler counts as stuck (a hung driver call):
    three counter intervals, at least 10 s."""
    return max(10.0, 3 * counter_interval_s / speed)


class HealthViews:
    """The daemon's health, devices and connection counts, as the API and the gauges show them."""

    def __init__(
        self, *, node: str, clock: Clock, speed: float, replay: bool, state: DaemonState,
        sampler: Sampler, loop: SamplingLoop, guard: ConnectionGuard,
        scrape_targets: Sequence[Target], stuck_after_s: float,
    ) -> None:
        self.node, self.clock, self.speed, self.replay = node, clock, speed, replay
        self.state, self.sampler, self.loop, self.guard = state, sampler, loop, guard
        self.scrape_targets, self.stuck_after_s = scrape_targets, stuck_after_s

    def devices(self) -> list[dict[str, Any]]:
        now_s = self.clock.time()
        with self.state.lock:
            status = dict(self.state.devices)
        out = []
        for d in self.sampler.devices():
            st = status.get(d.device_id)
            out.append({
                "device_id": d.device_id,
                "class": d.device_class.value,
                "name": d.name,
                "method": d.method,
                "provenance": d.provenance.value,
                "state": d.state.value,
                "detail": d.detail,
                "uuid": d.uuid,
                # GPUs: the idle baseline in use and where it came from (learned-from-counter,
                # configured, lowest-power-reading, unknown)
                "idle_power_w": d.idle_power_w,
                "idle_source": d.idle_source or None,
                # real seconds, also when replaying faster than real time
                "last_sample_age_s": (now_s - st.last_end_s) / self.speed if st else None,
                "power_w": st.power_w if st else None,
            })
        return out

    def sampling_status(self) -> tuple[bool, str]:
        """(healthy, status): unhealthy when the sampling thread died or has not turned for
        ``stuck_after_s`` (a hung driver call)."""
        loop = self.loop
        if not loop.alive():
            return False, "stopped"
        tick = loop.last_tick_mono
        if tick is None or time.monotonic() - tick > self.stuck_after_s:
            return False, "stuck"
        if not loop.sampling:
            return True, "replay finished" if self.replay else "not sampling"
        return True, "sampling"

    def view(self) -> dict[str, Any]:
        ok, status = self.sampling_status()
        devices = [{k: d[k] for k in ("device_id", "state", "last_sample_age_s")}
                   for d in self.devices()]
        view = {"ok": ok, "status": status, "node": self.node,
                "collector_errors": self.sampler.errors,
                "pending_calls": self.state.pending_calls(),
                "calls_apportioned": self.state.apportioned(), "devices": devices,
                "connections": self.connections()}
        if self.scrape_targets:
            view["scrape"] = [t.view() for t in self.scrape_targets]
        return view

    def connections(self) -> dict[str, int]:
        guard = self.guard
        return {"open": sum(guard.per_client.values()), "closed_idle": guard.closed_idle,
                "refused": guard.refused}

    def gauges(self) -> Health:
        """What the Prometheus collector reads at each scrape."""
        devices = self.devices()
        return Health(
            up=self.sampling_status()[0],
            collector_errors=self.sampler.errors,
            device_power_w={d["device_id"]: d["power_w"] for d in devices
                            if d["power_w"] is not None},
            device_age_s={d["device_id"]: d["last_sample_age_s"] for d in devices
                          if d["last_sample_age_s"] is not None},
        )
