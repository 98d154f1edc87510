"""The intensity feed accounting uses, built from settings; and the correction when actuals arrive.

- ``provider = "static"`` (the default): the static yearly average. Nothing is fetched and no
  thread is started, so ``carbonwatch run`` pays nothing for it.
- A time-series provider: a SeriesSource over that provider's points for the zone (an actual
  beats a forecast, a newer fetch beats an older one), loaded from the store's cache at start and
  refreshed by a background thread every ``refresh_every_s`` (and soon after accounting asks for
  a time no point covers). Where no point covers a time, the static average answers. Accounting
  never waits on the network: ``intensity_at`` reads the current snapshot, so a slow or failing
  provider cannot stall sampling; its errors are kept in ``errors``.

Each interval is costed with its own point (the Ledger multiplies interval energy by that
interval's intensity), and each minute row records the kind it was costed with. Minutes costed
with a forecast are corrected by :func:`update_with_actuals` once actuals for them are cached:
``co2e_g`` becomes the actual figure and the forecast figure is kept in ``co2e_g_forecast``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from carbonwatch.clock import Clock, SystemClock
from carbonwatch.config import Settings
from carbonwatch.errors import ConfigError, ProviderError, StoreError, UnknownZone
from carbonwatch.grid import static
from carbonwatch.grid.series import SeriesSource, mean_over, normalise
from carbonwatch.grid.types import IntensityPoint, IntensitySource
from carbonwatch.model import J_PER_KWH
from carbonwatch.store.intensity import save_points

if TYPE_CHECKING:
    from carbonwatch.grid.provider import Provider
    from carbonwatch.store import Store

log = logging.getLogger(__name__)

_MINUTE_S = 60


def static_point(settings: Settings, zone: str | None = None) -> IntensityPoint:
    """The configured country or cloud region; else the zone read as a country (``DE``,
    ``US-CAL-CISO`` -> US); else the world average. The point's provider says which."""
    zone = settings.zone if zone is None else zone
    if settings.country or settings.cloud_provider or settings.cloud_region:
        return static.resolve_static(
            settings.country, settings.cloud_provider, settings.cloud_region
        )
    for code in dict.fromkeys([zone, zone.split("-")[0]]):
        if code.isalpha() and len(code) in (2, 3):
            with contextlib.suppress(UnknownZone):
                return static.country_intensity(code)
    return static.world_average()


def cached_points(
    store: Store, zone: str, provider: str, start_s: float, end_s: float
) -> list[IntensityPoint]:
    """Every cached point of ``provider`` for ``zone`` overlapping [start_s, end_s), best first
    per time (see :func:`carbonwatch.grid.series.normalise`)."""
    from carbonwatch.grid.cache import IntensityCache

    return IntensityCache(store.db).points(zone, provider, start_s, end_s)


class AccountingSource:
    """IntensitySource over a provider's series with a static fallback (see the module doc).

    ``cache_path``: the store whose ``intensity_points`` are read at start and to which fetched
    points are added. Fetched points are written through a short-lived connection of this
    source's own: one small transaction per fetch, which WAL and the store's busy timeout let
    run beside the daemon's writer thread."""

    def __init__(
        self,
        provider: Provider,
        zone: str,
        fallback: IntensitySource,
        *,
        cache_path: Path | None = None,
        clock: Clock | None = None,
        refresh_every_s: float = 900.0,
        min_refetch_s: float = 60.0,
        keep_s: float = 2 * 86400.0,
    ) -> None:
        self.provider = provider
        self.zone = zone
        self.fallback = fallback
        self.cache_path = cache_path
        self.clock = clock or SystemClock()
        self.refresh_every_s = refresh_every_s
        self.min_refetch_s = min_refetch_s
        self.keep_s = keep_s
        self.errors: list[str] = []  # the latest few, newest last
        self.last_fetch_s: float | None = None
        self._points: list[IntensityPoint] = []
        self._series = SeriesSource([], fallback)
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # --- IntensitySource ----------------------------------------------------------------------

    def intensity_at(self, t_s: float) -> IntensityPoint:
        point = self._series.intensity_at(t_s)  # one reference read: the swap is atomic
        if point.kind == "static" and self._thread is not None:
            self._wake.set()  # no point covers t: fetch sooner than the period
        return point

    # --- loading and refreshing ---------------------------------------------------------------

    def _merge(self, points: Iterable[IntensityPoint]) -> None:
        horizon_s = self.clock.time() - self.keep_s
        kept = [p for p in (*self._points, *points) if p.end_s > horizon_s]
        self._points = normalise(kept)
        self._series = SeriesSource(self._points, self.fallback)

    def _note(self, message: str) -> None:
        log.warning("intensity for accounting: %s", message)
        self.errors = [*self.errors[-9:], message]

    def load_cached(self) -> int:
        """Read the cached points around now; returns how many."""
        if self.cache_path is None or not self.cache_path.exists():
            return 0
        from carbonwatch.store import Store

        now_s = self.clock.time()
        try:
            with Store(self.cache_path, read_only=True) as store:
                points = cached_points(
                    store, self.zone, self.provider.name, now_s - self.keep_s, now_s + self.keep_s
                )
        except (StoreError, sqlite3.Error) as exc:
            self._note(f"cache: could not read: {exc}")
            return 0
        self._merge(points)
        return len(points)

    def refresh(self) -> bool:
        """Fetch the current point and the forecast now (blocking); True if anything came."""
        fetched: list[IntensityPoint] = []

        async def fetch() -> None:
            for call in (self.provider.latest, self.provider.forecast):
                try:
                    got = await call(self.zone)
                except ProviderError as exc:
                    self._note(str(exc))
                    continue
                fetched.extend(got if isinstance(got, list) else [got])

        asyncio.run(fetch())
        self.last_fetch_s = self.clock.time()
        if not fetched:
            return False
        self._merge(fetched)
        self._save(fetched)
        return True

    def _save(self, points: list[IntensityPoint]) -> None:
        if self.cache_path is None:
            return
        from carbonwatch.store import Store

        try:
            with Store(self.cache_path) as store, store.transaction():
                save_points(store.conn, points)
        except (StoreError, sqlite3.Error) as exc:
            self._note(f"cache: could not save points: {exc}")

    def covers_now(self) -> bool:
        return self._series.intensity_at(self.clock.time()).kind != "static"

    # --- the background thread ----------------------------------------------------------------

    def start(self, first_fetch_timeout_s: float = 5.0) -> AccountingSource:
        """Load the cache; unless it covers now with a fetch younger than the period, fetch once
        (waiting up to ``first_fetch_timeout_s``); then refresh in the background."""
        self.load_cached()
        newest = max((p.fetched_at_s or 0.0 for p in self._points), default=0.0)
        fresh = self.covers_now() and self.clock.time() - newest < self.refresh_every_s
        first_done = threading.Event()

        def run() -> None:
            if not fresh:
                self._refresh_logged()
            first_done.set()
            self._loop()

        self._thread = threading.Thread(target=run, name="carbonwatch-intensity", daemon=True)
        self._thread.start()
        first_done.wait(first_fetch_timeout_s)
        return self

    def _refresh_logged(self) -> None:
        try:
            self.refresh()
        except Exception as exc:  # noqa: BLE001 - a refresh must never kill the thread
            self._note(f"refresh failed: {type(exc).__name__}: {exc}")

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._wake.clear()
            period_end = time.monotonic() + self.refresh_every_s
            # A wake (a time no point covers) fetches early, but not more often than this.
            if self._stop.wait(self.min_refetch_s):
                return
            self._wake.wait(max(0.0, period_end - time.monotonic()))
            if self._stop.is_set():
                return
            self._refresh_logged()

    def close(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=5.0)


def accounting_source(
    settings: Settings, *, clock: Clock | None = None, background: bool = True
) -> IntensitySource:
    """The IntensitySource accounting uses for these settings (see the module doc).

    ``background=False`` builds the source without a thread or a first fetch (tests, and callers
    that call ``refresh()`` themselves)."""
    fallback = static.StaticSource(static_point(settings))
    name = settings.provider.strip().lower()
    if name in ("", "static"):
        return fallback
    from carbonwatch.grid.build import make_provider  # aiohttp: only when a provider is set

    provider = make_provider(settings, clock=clock)
    if provider is None:
        return fallback
    if not settings.zone:
        raise ConfigError(
            f"provider {provider.name!r} needs a zone to cost energy: set 'zone' in the config "
            "or CARBONWATCH_ZONE"
        )
    source = AccountingSource(
        provider,
        settings.zone,
        fallback,
        cache_path=settings.db_path,
        clock=clock,
        refresh_every_s=settings.intensity_refresh_s,
    )
    return source.start() if background else source


# --- correcting forecast-costed minutes ------------------------------------------------------


def update_with_actuals(store: Store, zone: str, provider: str, *, pue: float = 1.0) -> int:
    """Recompute the carbon of minutes costed with a forecast, where actuals now cover them.

    For each ``energy_minute`` row of kind 'forecast' in ``zone`` ('' rows are the node's
    configured zone, which the caller passes) whose whole minute the cached *actual* points of
    ``provider`` cover: ``co2e_g`` becomes energy × PUE × the actual mean over that minute
    (scaled from the forecast figure, so the PUE it was costed with is kept), the forecast
    figure moves to ``co2e_g_forecast``, the kind becomes 'actual', and the owning job's
    ``co2e_g`` total moves by the same difference. Rows of kind 'mixed' (part forecast, part
    something else within one minute) are left as they are. Returns the rows corrected.

    Runs inside the caller's transaction if one is open (a daemon writer task), else in its own.
    """
    conn = store.conn
    own = not conn.in_transaction
    if own:
        conn.execute("BEGIN IMMEDIATE")
    try:
        changed = _correct(conn, store, zone, provider, pue)
        if own:
            conn.execute("COMMIT")
    except BaseException:
        if own and conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    return changed


def _correct(conn: sqlite3.Connection, store: Store, zone: str, provider: str, pue: float) -> int:
    rows = conn.execute(
        "SELECT minute_s, device_id, consumer, energy_j, co2e_g, intensity_g_per_kwh"
        " FROM energy_minute WHERE intensity_kind = 'forecast' AND zone IN (?, '')"
        " ORDER BY minute_s",
        [zone],
    ).fetchall()
    if not rows:
        return 0
    first_s, last_s = rows[0][0], rows[-1][0] + _MINUTE_S
    actuals = [
        p for p in cached_points(store, zone, provider, first_s, last_s) if p.kind == "actual"
    ]
    if not actuals:
        return 0
    by_job: dict[str, float] = {}
    changed = 0
    for minute_s, device_id, consumer, energy_j, co2e_g, intensity in rows:
        actual = mean_over(actuals, minute_s, minute_s + _MINUTE_S)
        if actual is None:
            continue
        if intensity > 0:
            new_g = co2e_g * actual / intensity
        else:
            new_g = energy_j / J_PER_KWH * pue * actual
        conn.execute(
            # SET expressions see the row's old values: co2e_g_forecast takes the old co2e_g.
            "UPDATE energy_minute SET co2e_g_forecast = COALESCE(co2e_g_forecast, co2e_g),"
            " co2e_g = ?, intensity_g_per_kwh = ?, intensity_kind = 'actual'"
            " WHERE minute_s = ? AND device_id = ? AND consumer = ?",
            [new_g, actual, minute_s, device_id, consumer],
        )
        changed += 1
        if consumer.startswith("job:"):
            job_id = consumer[len("job:") :]
            by_job[job_id] = by_job.get(job_id, 0.0) + (new_g - co2e_g)
    for job_id, delta_g in by_job.items():
        conn.execute("UPDATE jobs SET co2e_g = co2e_g + ? WHERE id = ?", [delta_g, job_id])
    return changed
