"""What the HTTP handlers (``app.py``) need of the daemon, and nothing more: the two intake
services, reads, the views and the configuration the middlewares read. ``server.Daemon`` (a
frozen set of parts) is one; a handler never reaches past these names into the daemon's parts.
Read-only: a handler replaces none of them."""

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
    @property
    def settings(self) -> Settings: ...  # tokens, limits; the store's path for footprints

    @property
    def pricing(self) -> Pricing: ...

    @property
    def jobs(self) -> JobIntake: ...

    @property
    def calls(self) -> CallIntake: ...

    @property
    def scheduler(self) -> SchedulerService: ...  # for the deferred-job routes

    @property
    def prometheus(self) -> DaemonCollector: ...

    async def read(self, fn: Callable[[Store], T]) -> T: ...

    def device_views(self) -> list[dict[str, Any]]: ...

    def health_view(self) -> dict[str, Any]: ...
