"""What the HTTP handlers (``app.py``) need of the daemon, and nothing more: the two intake
services, reads, the views and the configuration the middlewares read. ``server.Daemon`` is one;
a handler never reaches past these names into the daemon's parts."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

if TYPE_CHECKING:
    from carbonwatch.config import Settings
    from carbonwatch.daemon.intake import CallIntake, JobIntake
    from carbonwatch.daemon.metrics import DaemonCollector
    from carbonwatch.pricing import Pricing
    from carbonwatch.scheduler.service import SchedulerService
    from carbonwatch.store import Store

T = TypeVar("T")


class AppDaemon(Protocol):
    settings: Settings
    token: str
    admin_token: str
    pricing: Pricing
    jobs: JobIntake
    calls: CallIntake
    scheduler: SchedulerService
    prometheus: DaemonCollector

    async def read(self, fn: Callable[[Store], T]) -> T: ...

    def device_views(self) -> list[dict[str, Any]]: ...

    def health_view(self) -> dict[str, Any]: ...
