"""Who used a shared GPU interval's active energy (the idle baseline is in ``gpuidle``).

Kept out of :mod:`carbonwatch.collectors.gpu` so the collector stays about reading devices.
NVML's per-process SM samples are sparse (one per process every ~0.4-0.6 s, some lost) and
time-based (a bursty, light process looks as busy as a heavy one). :class:`ShareTracker` makes
each process's activity at time ``t`` the SM fraction of the sample whose window covers ``t``;
past the newest sample the last one is carried for ``window_s``. A process alone on the GPU owns
all the active energy (``solo``). Where several are active, power is regressed on their activity
(:class:`~carbonwatch.powerfit.ActivityFit`, the idle baseline as fixed intercept) over two kinds
of rows: each counter interval's exact mean power, and the 10 Hz power readings grouped per
sample window, shifted back by the reading's lag (estimated from the counter,
:func:`estimate_power_lag`). Each process gets its fitted marginal watts x its activity
(``power-fit``); where the fit is not trusted yet, SM time shares (``sm-share``); where no process
shows activity, equal weights over those holding a context (``even``).
"""

from __future__ import annotations

import bisect
import logging
import math
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from carbonwatch.collectors.gpuactivity import (
    FIRST_SAMPLE_WINDOW_S,
    activity_at,
    covering,
    mean_activity,
    tail_uncovered,
)
from carbonwatch.collectors.gpuidle import MIN_IDLE_INTERVAL_S, parse_idle_setting
from carbonwatch.collectors.gpushape import PowerReadings, estimate_power_lag

if TYPE_CHECKING:
    from carbonwatch.collectors.gpu import ProcessSample
    from carbonwatch.config import Settings
    from carbonwatch.powerfit import ActivityFit, Fit

log = logging.getLogger(__name__)

SPLIT_SOLO = "solo"
SPLIT_POWER_FIT = "power-fit"
SPLIT_SM_SHARE = "sm-share"
SPLIT_EVEN = "even"
SPLIT_NONE = "none"  # nobody present: the active energy is unattributed
# How shared intervals may be split: the full method (power-fit, falling back to SM shares), SM
# shares only, or evenly (the last two for comparison, as in benchmarks/bench_accuracy.py).
SPLIT_MODES = (SPLIT_POWER_FIT, SPLIT_SM_SHARE, SPLIT_EVEN)

# one sample window of it each).
MIN_FIT_SUPPORT = 3
# A fitted marginal power (W per unit of SM activity) above this multiple of the largest active
# power seen is implausible, and the fit is not used.
MAX_COEF_OVER_PEAK = 1.5
# The power reading's lag is re-estimated every LAG_EVERY intervals from the last LAG_READINGS
# readings and LAG_INTERVALS counter intervals, among shifts of 0 to 2 s.
LAG_EVERY = 5
LAG_EVERY_LATER = 30
# A solved fit is reused for up to this long while rows trickle in (a solve costs ~0.1 ms on a
# cold cache, once a second per shared GPU otherwise).
REFIT_EVERY_S = 3.0
LAG_READINGS = 1200
LAG_INTERVALS = 60
# Besides one row per power reading group, each counter interval makes a row of its exact mean
# power (immune to the reading's lag), weighted as this many readings.
COUNTER_ROW_WEIGHT = 5.0
# A per-process sample reaches the collector within ~1 s of the time it covers (one sample
# period, one process poll); one not there after this long was lost.
SAMPLE_OVERDUE_S = 2.0


@dataclass(frozen=True)
class GpuOptions:
    """How the GPU collector splits and baselines, from settings and the store.

    ``idle_w``: one configured idle power for every GPU; ``idle_w_by_uuid``: per GPU (wins).
    ``stored_idle_w``: baselines learned earlier, by UUID. ``on_idle_learned(uuid, idle_w,
    learned_s)`` is called when a device's learned baseline settles or moves (to persist it)."""

    idle_w: float | None = None
    idle_w_by_uuid: Mapping[str, float] = field(default_factory=dict)
    stored_idle_w: Mapping[str, float] = field(default_factory=dict)
    share_window_s: float = 5.0
    split_mode: str = SPLIT_POWER_FIT
    on_idle_learned: Callable[[str, float, float], None] | None = None


def gpu_options(
    settings: Settings,
    stored_idle_w: Mapping[str, float] | None = None,
    on_idle_learned: Callable[[str, float, float], None] | None = None,
) -> GpuOptions:
    """GpuOptions from the settings (validated there) and the baselines the store holds."""
    idle_w, by_uuid = parse_idle_setting(settings.gpu_idle_power_w)
    return GpuOptions(
        idle_w=idle_w,
        idle_w_by_uuid=by_uuid,
        stored_idle_w=dict(stored_idle_w or {}),
        share_window_s=settings.gpu_share_window_s,
        on_idle_learned=on_idle_learned,
    )


@dataclass(frozen=True)
class ShareResult:
    shares: dict[int | str, float]
    method: str


class ShareTracker:
    """Per-process activity from sparse SM samples, and the split of each interval (one per GPU)."""

    def __init__(
        self,
        window_s: float = 5.0,
        *,
        mode: str = SPLIT_POWER_FIT,
        fit_rows: int = 300,
        min_fit_rows: int = 4,
        min_r2: float = 0.3,
        power_align_s: float = 0.1,
    ) -> None:
        if mode not in SPLIT_MODES:
            raise ValueError(f"split mode must be one of {', '.join(SPLIT_MODES)}, got {mode!r}")
        self.window_s = window_s
        self.mode = mode
        self._last = ShareResult({}, SPLIT_NONE)
        # pid -> ascending sample times (s) and SM fractions
        self._ts: dict[int, list[float]] = {}
        self._frac: dict[int, list[float]] = {}
        self._pending: deque[tuple[float, float]] = deque()  # power readings awaiting activity
        # (start, end, the pids present, ascending): the fit's rows are built in pid order
        self._presence: deque[tuple[float, float, tuple[int, ...]]] = deque()
        # Intervals come in order, disjoint: readings are looked up from the newest (see below).
        self._presence_ordered = True
        # numpy (under the fit) loads with the first GPU, not with every `carbonwatch run`.
        from carbonwatch.powerfit import ActivityFit

        self.fit: ActivityFit[int] = ActivityFit(
            max_rows=fit_rows, min_rows=min_fit_rows, min_r2=min_r2
        )
        # A reading polled at t is the mean over the 100 ms before the device's last update,
        # itself up to 100 ms old: it describes activity centred about 100 ms before t.
        self.power_align_s = power_align_s
        self.last_fit_r2: float | None = None
        self._max_power_w = 0.0  # highest mean power of any fit row
        self._counter_rows: deque[tuple[float, float, float, frozenset[int]]] = deque()
        # For estimating how far the power reading lags: recent readings and counter intervals.
        self._readings = PowerReadings(LAG_READINGS)
        self._counter_energy: deque[tuple[float, float, float]] = deque(maxlen=LAG_INTERVALS)
        self._since_lag_estimate = 0
        self._lag_estimates = 0
        self._rows_added = 0  # rows ever given to the fit (a solve is reused until it moves)
        self._fit_cache: tuple[Fit[int] | None, float, int, float] | None = None
        # Consecutive readings under one activity vector (one SM sample window) make one fit row,
        # their mean power: power within a window moves with kernels the samples cannot see.
        # (sample windows, activity, power sum, readings, last reading time)
        self._group: tuple[tuple[object, ...], dict[int, float], float, int, float] | None = None

    # -- inputs --

    def add_samples(self, samples: Iterable[ProcessSample]) -> None:
        for s in samples:
            ts_s = s.ts_us / 1e6
            times = self._ts.setdefault(s.pid, [])
            fracs = self._frac.setdefault(s.pid, [])
            frac = min(max(float(s.sm_pct), 0.0), 100.0) / 100.0
            i = bisect.bisect_left(times, ts_s)
            if i < len(times) and times[i] == ts_s:
                fracs[i] = frac
                continue
            times.insert(i, ts_s)
            fracs.insert(i, frac)

    def add_power(self, t_s: float, power_w: float) -> None:
        self._pending.append((t_s, power_w))
        self._readings.append(t_s, power_w)

    # -- activity --

    def activity(self, pid: int, t_s: float) -> tuple[float | None, bool]:
        """(SM fraction at t_s, covered): see :func:`gpuactivity.activity_at`."""
        return activity_at(self._ts.get(pid, []), self._frac.get(pid, []), self.window_s, t_s)

    def mean_activity(self, pid: int, start_s: float, end_s: float) -> tuple[float | None, float]:
        """(mean SM fraction over the interval, None if nothing is known; the fraction of the
        interval covered by samples rather than carried)."""
        times = self._ts.get(pid)
        if not times:
            return None, 0.0
        return mean_activity(times, self._frac[pid], self.window_s, start_s, end_s)

    # -- the split --

    def split(
        self,
        start_s: float,
        end_s: float,
        present: Iterable[int] | None,
        idle_w: float | None,
        present_at_start: Iterable[int] | None = None,
        active_j: float | None = None,
        busy_at_start: bool = False,
        energy_j: float | None = None,
    ) -> ShareResult:
        """Weights for one interval. ``present`` / ``present_at_start``: pids holding a compute
        context at its end / start (None: unknown, then the pids with samples stand in);
        ``active_j``: the interval's energy above idle (the power-fit split needs it);
        ``busy_at_start``: the device was in use right up to start_s."""
        present_set = set(present or ()) | set(present_at_start or ())
        consumers = present_set | {p for p in self._ts if self._ran_in(p, start_s, end_s)}
        if self._presence and start_s < self._presence[-1][1]:
            self._presence_ordered = False
        self._presence.append((start_s, end_s, tuple(sorted(consumers))))
        if energy_j is not None:
            self._counter_energy.append((start_s, end_s, energy_j))
            self._since_lag_estimate += 1
            # Early and often while it is unknown, then every LAG_EVERY_LATER intervals.
            every = LAG_EVERY if self._lag_estimates < 3 else LAG_EVERY_LATER
            if self._since_lag_estimate >= every and len(self._counter_energy) >= LAG_EVERY:
                self._since_lag_estimate = 0
                self._lag_estimates += 1
                lag_s = estimate_power_lag(self._readings, self._counter_energy, self.power_align_s)
                if abs(lag_s - self.power_align_s) > 0.1:
                    # Rows built on the old alignment would teach the fit the wrong shape.
                    self.fit.clear()
                    self._group = None
                    self._rows_added += 1
                self.power_align_s = lag_s
        if energy_j is not None and end_s - start_s >= MIN_IDLE_INTERVAL_S and consumers:
            self._counter_rows.append((start_s, end_s, energy_j / (end_s - start_s),
                                       frozenset(consumers)))
        self._feed_counter_rows(end_s)
        self._feed_fit(end_s)
        self._forget(end_s)
        result = self._split(start_s, end_s, consumers, idle_w, active_j, busy_at_start)
        self._last = result
        return result

    def _split(
        self,
        start_s: float,
        end_s: float,
        consumers: set[int],
        idle_w: float | None,
        active_j: float | None,
        busy_at_start: bool,
    ) -> ShareResult:
        if not consumers:
            if busy_at_start and self._last.shares:
                # The counter read at start_s may be ~100 ms old: this interval still holds the
                # tail of the last one's work, which belongs to the processes that did it.
                return self._last
            return ShareResult({}, SPLIT_NONE)
        if len(consumers) == 1:
            return ShareResult({next(iter(consumers)): 1.0}, SPLIT_SOLO)
        if self.mode == SPLIT_EVEN:
            return ShareResult(dict.fromkeys(sorted(consumers), 1.0), SPLIT_EVEN)
        acts = {pid: self.mean_activity(pid, start_s, end_s) for pid in sorted(consumers)}
        busy = {pid: a for pid, (a, _) in acts.items() if a}
        unknown = [pid for pid, (a, _) in acts.items() if a is None]
        # The fit is asked even when the samples show one process busy: a sample carried over a
        # lost one can say 0 % for a process that is busy again.
        if self.mode == SPLIT_POWER_FIT and idle_w is not None and active_j is not None \
                and end_s > start_s:
            fit = self._solve(idle_w, end_s)
            if fit is not None:
                weights = _fit_weights(fit.coef_w, acts, max(active_j, 0.0) / (end_s - start_s))
                if weights:
                    return ShareResult(weights, SPLIT_POWER_FIT)
        if len(busy) == 1 and not unknown:
            return ShareResult(dict(busy), SPLIT_SOLO)
        if not busy:
            return ShareResult({pid: 1.0 for pid in unknown or sorted(consumers)}, SPLIT_EVEN)
        # Without a fit, a process not sampled yet (just launched) gets no share beside sampled
        # ones: at launch it is mostly loading, and the next intervals see its samples.
        return ShareResult(dict(busy), SPLIT_SM_SHARE)

    def _solve(self, idle_w: float, now_s: float) -> Fit[int] | None:
        """The fit, re-solved only when it may have moved: new rows since the last solve and
        ``REFIT_EVERY_S`` passed (or no usable fit yet), or the idle baseline moved."""
        cached = self._fit_cache
        if cached is not None and abs(cached[3] - idle_w) <= 0.005 * idle_w:
            fit, solved_s, rows_then, _ = cached
            if rows_then == self._rows_added or (
                fit is not None and now_s - solved_s < REFIT_EVERY_S
            ):
                return fit
        self.fit.fixed_base_w = idle_w
        fit = self.fit.solve(min_support=MIN_FIT_SUPPORT)
        if fit is not None and not self._plausible(fit.coef_w, idle_w):
            fit = None
        self.last_fit_r2 = fit.r2 if fit is not None else None
        self._fit_cache = (fit, now_s, self._rows_added, idle_w)
        return fit

    def _ran_in(self, pid: int, start_s: float, end_s: float) -> bool:
        """Whether a sample with activity covers part of [start_s, end_s] (a process that exited
        before the compute list was read still ran in the interval)."""
        times, fracs = self._ts[pid], self._frac[pid]
        i = bisect.bisect_right(times, start_s)
        return i < len(times) and fracs[i] > 0 and (i == 0 or times[i - 1] < end_s)

    def _present_at(self, t_s: float) -> tuple[float, float, tuple[int, ...]] | None:
        """The presence interval (start, end, pids) holding t_s, None if none does."""
        if self._presence_ordered:
            # Ascending and disjoint: the newest interval starting before t_s is the only one
            # that can hold it (readings looked up are recent: one or two steps back).
            for entry in reversed(self._presence):
                if entry[0] < t_s:
                    return entry if t_s <= entry[1] else None
            return None
        for entry in self._presence:
            if entry[0] < t_s <= entry[1]:
                return entry
        return None

    def _feed_fit(self, now_s: float) -> None:
        """Turn pending power readings into fit rows once every present process's activity at
        their time is known (its covering sample arrived) or can no longer arrive."""
        pending, align_s, window_s = self._pending, self.power_align_s, self.window_s
        ts, fracs = self._ts, self._frac
        # Readings come ~5 to a sample window: while one falls in the same presence interval and
        # in every process's same sample window as the last, its row is the last one's. Those
        # windows hold t_s iff lo < t_s <= hi and top - t_s <= window_s (lo, hi, top: the latest
        # window start, the earliest and latest window end), the very tests of
        # gpuactivity.covering per process. Intervals out of order (rare): the full path always.
        # A span that ends in a process's time before its first sample (``drop_until``: a
        # process starting up; the readings of its first seconds) drops its readings alike.
        span: tuple[float, float, float, float, float, tuple[object, ...], dict[int, float],
                    float | None] | None = None
        while pending:
            read_s, power_w = pending[0]
            t_s = read_s - align_s
            if span is not None and span[0] < t_s <= span[1] and span[2] < t_s <= span[3] \
                    and span[4] - t_s <= window_s:
                if span[7] is None:
                    pending.popleft()
                    self._add_row(t_s, span[5], span[6], power_w)
                    continue
                if t_s <= span[7]:
                    pending.popleft()
                    continue
            span = None
            entry = self._present_at(t_s)
            if entry is None:
                if t_s > now_s:
                    break
                pending.popleft()  # before the first interval or between gaps: unusable
                continue
            row: dict[int, float] = {}
            windows = []
            ready = usable = True
            lo, hi, top = -math.inf, math.inf, -math.inf
            for pid in entry[2]:
                times = ts.get(pid)
                i = covering(times, t_s, window_s) if times else -1
                if i < 0:
                    # Wait for the sample that covers t_s; once it is overdue it was lost (or
                    # t_s lies before the first one): a carried figure would teach the fit a
                    # guess, so the reading is not used.
                    before_first = bool(times) and t_s <= times[0] - FIRST_SAMPLE_WINDOW_S
                    ready = before_first or now_s - t_s >= SAMPLE_OVERDUE_S
                    usable = False
                    if before_first and self._presence_ordered:
                        drop_until = times[0] - FIRST_SAMPLE_WINDOW_S  # type: ignore[index]
                        span = (entry[0], entry[1], lo, hi, top, (), {}, drop_until)
                    break
                end_s = times[i]  # type: ignore[index]
                row[pid] = fracs[pid][i]
                windows.append((pid, end_s))  # the sample window: rows in one are grouped
                lo = max(lo, times[i - 1] if i else end_s - FIRST_SAMPLE_WINDOW_S)  # type: ignore[index]
                hi, top = min(hi, end_s), max(top, end_s)
            if not ready:
                break
            pending.popleft()
            if usable:
                key = tuple(windows)
                if self._presence_ordered:
                    span = (entry[0], entry[1], lo, hi, top, key, row, None)
                self._add_row(t_s, key, row, power_w)

    def _feed_counter_rows(self, now_s: float) -> None:
        """One fit row per counter interval (exact energy, no power-reading lag) once every
        process's samples cover it."""
        while self._counter_rows:
            start_s, end_s, power_w, consumers = self._counter_rows[0]
            row = {}
            ok = True
            for pid in consumers:
                times = self._ts.get(pid)
                if not times or tail_uncovered(times[-1], start_s, end_s):
                    ok = False  # the usual wait, for the samples of the interval's end
                    break
                x, covered = self.mean_activity(pid, start_s, end_s)
                if covered < 0.95:
                    ok = False
                    break
                row[pid] = x or 0.0
            if not ok and now_s - end_s < SAMPLE_OVERDUE_S:
                break
            self._counter_rows.popleft()
            if ok and any(v > 0 for v in row.values()):
                self.fit.add(row, power_w, weight=COUNTER_ROW_WEIGHT)
                self._rows_added += 1
                self._max_power_w = max(self._max_power_w, power_w)

    def _add_row(self, t_s: float, key: tuple[object, ...], row: dict[int, float],
                 power_w: float) -> None:
        group = self._group
        if group is not None and group[0] == key and t_s - group[4] < 0.5:
            self._group = (key, group[1], group[2] + power_w, group[3] + 1, t_s)
            return
        if group is not None and any(v > 0 for v in group[1].values()):
            self.fit.add(group[1], group[2] / group[3], weight=float(group[3]))
            self._rows_added += 1
            self._max_power_w = max(self._max_power_w, group[2] / group[3])
        self._group = (key, row, power_w, 1, t_s)

    def _plausible(self, coef_w: Mapping[int, float], idle_w: float) -> bool:
        """A process fully busy cannot add much more than the most the device was ever seen to
        draw above idle: a fit that says so was fooled by a few coincidences (on the H200
        recording, three samples of a light service priced it at 1.1 kW)."""
        limit_w = MAX_COEF_OVER_PEAK * max(self._max_power_w - idle_w, 0.0)
        return all(c <= limit_w for c in coef_w.values())

    def _forget(self, now_s: float) -> None:
        keep_s = now_s - 2 * self.window_s - 60.0
        for pid in list(self._ts):
            times = self._ts[pid]
            cut = bisect.bisect_left(times, keep_s)
            if cut:
                del times[:cut]
                del self._frac[pid][:cut]
            if not times:
                del self._ts[pid], self._frac[pid]
        while self._presence and self._presence[0][1] < keep_s:
            self._presence.popleft()


def _fit_weights(
    coef_w: Mapping[int, float],
    acts: Mapping[int, tuple[float | None, float]],
    active_w: float,
) -> dict[int | str, float] | None:
    """Each process's estimated watts in one interval, from the fit and the measured active power.

    A process whose activity is sampled over the interval is credited its fitted marginal watts
    x its activity. Where a process's activity is carried (its sample has not arrived, or was
    lost) the carried figure can be stale by a whole burst; the measured power less the others'
    predictions (the residual) then says more, so each process's estimate blends the two by how
    much of the interval its samples cover. Processes the fit cannot price (just launched, never
    varied) share the residual. None when nothing can be estimated."""
    pred: dict[int, tuple[float, float]] = {}
    unpriced: dict[int, float] = {}
    for pid, (x, covered) in acts.items():
        if x is None or pid not in coef_w:
            unpriced[pid] = x or 0.0
        else:
            pred[pid] = (coef_w[pid] * x, covered)
    known_w = math.fsum(w for w, _ in pred.values())
    est: dict[int | str, float] = {}
    if unpriced:
        est.update({pid: w for pid, (w, _) in pred.items()})
        left_w = max(0.0, active_w - known_w)
        total_x = math.fsum(unpriced.values())
        for pid, x in unpriced.items():
            est[pid] = left_w * (x / total_x if total_x > 0 else 1.0 / len(unpriced))
    else:
        for pid, (w, covered) in pred.items():
            residual_w = max(0.0, active_w - (known_w - w))
            est[pid] = covered * w + (1.0 - covered) * residual_w
    est = {pid: w for pid, w in est.items() if w > 0}
    return est if est else None
