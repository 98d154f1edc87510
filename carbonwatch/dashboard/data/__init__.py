"""Every query the dashboard makes, one function per view; callbacks hold no SQL.

Each function opens its own read-only snapshot (``reader.read_snapshot``) and returns plain data:
numbers in joules, grams, the store's currency and Unix seconds. Formatting and figures live in
``figures``/``components``. A store with nothing recorded raises ``DataUnavailable(kind='empty')``
so every page can show the same first-run help. The fleet view (``fleet``) reads Prometheus
through ``carbonwatch.fleet.FleetClient`` instead of a store.

Time ranges are anchored at the latest recorded minute, not the wall clock: "last 24 hours" of a
live store is the last 24 hours, and of an archived store the last 24 hours it recorded.
"""

from carbonwatch.dashboard.data.common import (
    METRICS,
    PHASES,
    RANGES,
    StoreStatus,
    Window,
    choose_bucket,
    resolve_window,
    store_status,
)
from carbonwatch.dashboard.data.devices import DeviceSeries, DevicesView, devices
from carbonwatch.dashboard.data.fleet import FleetModel, FleetNode, FleetView, fleet
from carbonwatch.dashboard.data.grid import GridView, ZoneSeries, grid
from carbonwatch.dashboard.data.jobs import JobDetail, job_detail, jobs
from carbonwatch.dashboard.data.usage import (
    Crossover,
    ModelCurve,
    ModelRow,
    ModelsView,
    ModelTrend,
    Overview,
    crossover,
    model_trend,
    models,
    overview,
)

__all__ = [
    "METRICS", "PHASES", "RANGES", "Crossover", "DeviceSeries", "DevicesView", "FleetModel",
    "FleetNode", "FleetView", "GridView", "JobDetail", "ModelCurve", "ModelRow", "ModelTrend",
    "ModelsView", "Overview", "StoreStatus", "Window", "ZoneSeries", "choose_bucket", "crossover",
    "devices", "fleet", "grid", "job_detail", "jobs", "model_trend", "models", "overview",
    "resolve_window", "store_status",
]
