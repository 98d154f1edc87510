"""Who used a GPU interval's active energy: the idle baseline and the split among processes.

Two questions the counter alone cannot answer, kept out of :mod:`carbonwatch.collectors.gpu` so
the collector stays about reading devices:

- **Idle baseline** (:class:`IdleBaseline`). Learned from the *energy counter* over intervals in
  which no process holds a compute context and the device reports ~0 % utilisation: the counter
  delta over such an interval divided by its length. Not from the lowest power reading, which lags
  (right after activity an H200 read 113 W while its counter showed 80 W). A configured value
  overrides it; one learned earlier (kept per GPU UUID in the store) stands in until this run has
  seen a process-free interval; without either, the lowest power reading is the last resort, and
  says so.
- **Split** (:class:`ShareTracker`). NVML's per-process SM samples are sparse (one per process
  every ~0.4-0.6 s, some lost) and time-based. Each process's activity at time ``t`` is the SM
  fraction of the sample whose window covers ``t``; past the newest sample the last one is carried
  for ``window_s``. A process alone on the GPU owns all the active energy (``solo``). Where several
  are active, the power readings are regressed on their activity (:class:`ActivityFit` with the
  idle baseline as fixed intercept) and each gets its fitted marginal watts x its activity
  (``power-fit``); where the fit is not trusted, SM time shares (``sm-share``); where no process
  shows activity, equal weights over those holding a context (``even``).
"""

from __future__ import annotations

import bisect
import math
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from carbonwatch.collectors.gpu import ProcessSample
    from carbonwatch.config import Settings
    from carbonwatch.powerfit import ActivityFit

SPLIT_SOLO = "solo"
SPLIT_POWER_FIT = "power-fit"
SPLIT_SM_SHARE = "sm-share"
SPLIT_EVEN = "even"
SPLIT_NONE = "none"  # nobody present: the active energy is unattributed

IDLE_CONFIGURED = "configured"
IDLE_LEARNED = "learned-from-counter"
IDLE_LOWEST_POWER = "lowest-power-reading"
IDLE_UNKNOWN = "unknown"

# A process-free interval counts towards the idle baseline only if utilisation stayed at or below
# this (NVML reports whole percent; 1 % tolerates one stray sample).
IDLE_MAX_UTIL_PCT = 1.0
# The counter moves every ~100 ms: a reading may lag the read by that much. An interval is
# process-free only if nothing was seen busy for this long before it began.
COUNTER_STALE_S = 0.2
MIN_IDLE_INTERVAL_S = 0.5
# NVML does not say when a process's first sample window began; it is taken as one sample period.
FIRST_SAMPLE_WINDOW_S = 0.5
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


def parse_idle_setting(value: str) -> tuple[float | None, dict[str, float]]:
    """``gpu_idle_power_w``: ``""`` (learn), ``"80"`` (all GPUs) or ``"GPU-ab..=80,GPU-cd..=95"``.

    Raises ValueError naming the faulty part."""
    text = value.strip()
    if not text:
        return None, {}
    if "=" not in text:
        return _watts(text, "gpu_idle_power_w"), {}
    by_uuid: dict[str, float] = {}
    for part in text.split(","):
        uuid, sep, watts = part.partition("=")
        if not sep or not uuid.strip():
            raise ValueError(f"gpu_idle_power_w: expected UUID=W, got {part.strip()!r}")
        by_uuid[uuid.strip()] = _watts(watts, f"gpu_idle_power_w for {uuid.strip()}")
    return None, by_uuid


def _watts(text: str, what: str) -> float:
    try:
        w = float(text)
    except ValueError:
        raise ValueError(f"{what}: {text.strip()!r} is not a number of watts") from None
    if not (math.isfinite(w) and w >= 0):
        raise ValueError(f"{what}: must be a finite number of watts >= 0, got {text.strip()!r}")
    return w


class IdleBaseline:
    """One GPU's idle power and where it came from (see the module docstring)."""

    def __init__(
        self,
        configured_w: float | None = None,
        stored_w: float | None = None,
        window_s: float = 60.0,
    ) -> None:
        self.configured_w = configured_w
        self.stored_w = stored_w
        self.window_s = window_s
        self._idle: deque[tuple[float, float]] = deque()  # (duration_s, energy_j), newest last
        self._idle_s = 0.0
        self.learned_s = 0.0  # process-free seconds seen this run
        self.min_power_w: float | None = None

    def observe_idle(self, duration_s: float, energy_j: float) -> None:
        """A process-free interval measured by the counter. The most recent ``window_s`` of such
        intervals make the baseline (idle power drifts with temperature)."""
        # A sliver of an interval (the last one at shutdown) carries up to a whole counter step
        # (~100 ms of energy) in a few ms: it would skew the mean, so it is not used.
        if duration_s < MIN_IDLE_INTERVAL_S or not math.isfinite(energy_j) or energy_j < 0:
            return
        self._idle.append((duration_s, energy_j))
        self._idle_s += duration_s
        self.learned_s += duration_s
        while len(self._idle) > 1 and self._idle_s - self._idle[0][0] >= self.window_s:
            self._idle_s -= self._idle.popleft()[0]

    def note_power(self, power_w: float) -> None:
        if self.min_power_w is None or power_w < self.min_power_w:
            self.min_power_w = power_w

    @property
    def learned_w(self) -> float | None:
        if not self._idle:
            return None
        return math.fsum(e for _, e in self._idle) / math.fsum(d for d, _ in self._idle)

    def current(self) -> tuple[float | None, str]:
        """(idle power, source): configured > learned this run > stored > lowest power > unknown."""
        if self.configured_w is not None:
            return self.configured_w, IDLE_CONFIGURED
        learned = self.learned_w
        if learned is not None:
            return learned, IDLE_LEARNED
        if self.stored_w is not None:
            return self.stored_w, IDLE_LEARNED
        if self.min_power_w is not None:
            return self.min_power_w, IDLE_LOWEST_POWER
        return None, IDLE_UNKNOWN

    def describe(self) -> str:
        value, source = self.current()
        if value is None:
            return "idle baseline unknown (no process-free interval or power reading yet)"
        how = {
            IDLE_CONFIGURED: "configured (gpu_idle_power_w)",
            IDLE_LOWEST_POWER: "lowest power reading so far, until a process-free interval is seen",
        }.get(source)
        if how is None:
            how = (f"learned from the energy counter over {self.learned_s:.0f} s without processes"
                   if self.learned_w is not None else "learned from the energy counter earlier")
        return f"idle baseline {value:.1f} W {source}: {how}"


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
        fit_rows: int = 300,
        min_fit_rows: int = 4,
        min_r2: float = 0.3,
        power_align_s: float = 0.1,
    ) -> None:
        self.window_s = window_s
        # pid -> ascending sample times (s) and SM fractions
        self._ts: dict[int, list[float]] = {}
        self._frac: dict[int, list[float]] = {}
        self._pending: deque[tuple[float, float]] = deque()  # power readings awaiting activity
        self._presence: deque[tuple[float, float, frozenset[int]]] = deque()
        # numpy (under the fit) loads with the first GPU, not with every `carbonwatch run`.
        from carbonwatch.powerfit import ActivityFit

        self.fit: ActivityFit[int] = ActivityFit(
            max_rows=fit_rows, min_rows=min_fit_rows, min_r2=min_r2
        )
        # A reading averages the ~100 ms before it: it describes activity about half that earlier.
        self.power_align_s = power_align_s
        self.last_fit_r2: float | None = None
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
        self._pending.append((t_s - self.power_align_s, power_w))

    # -- activity --

    def activity(self, pid: int, t_s: float) -> tuple[float | None, bool]:
        """(SM fraction at t_s, covered): the sample whose window holds t_s (covered), else the
        newest earlier sample carried up to ``window_s`` (not covered), else None."""
        times = self._ts.get(pid)
        if not times:
            return None, False
        i = bisect.bisect_left(times, t_s)
        if i == 0 and t_s <= times[0] - FIRST_SAMPLE_WINDOW_S:
            return None, False  # before its first sample window (or that sample was lost)
        if i < len(times):
            start = times[i - 1] if i > 0 else times[i] - FIRST_SAMPLE_WINDOW_S
            if t_s > start and times[i] - t_s <= self.window_s:
                return self._frac[pid][i], True
        if i > 0 and t_s - times[i - 1] <= self.window_s:
            return self._frac[pid][i - 1], False
        return None, False

    def mean_activity(self, pid: int, start_s: float, end_s: float) -> tuple[float | None, float]:
        """(mean SM fraction over the interval, None if nothing is known; the fraction of the
        interval covered by samples rather than carried)."""
        n = max(4, math.ceil((end_s - start_s) / 0.05))
        step = (end_s - start_s) / n
        seen = [self.activity(pid, start_s + (j + 0.5) * step) for j in range(n)]
        known = [x for x, _ in seen if x is not None]
        covered = sum(1 for _, c in seen if c) / n
        return (math.fsum(known) / n if known else None), covered

    # -- the split --

    def split(
        self,
        start_s: float,
        end_s: float,
        present: Iterable[int] | None,
        idle_w: float | None,
        present_at_start: Iterable[int] | None = None,
        active_j: float | None = None,
    ) -> ShareResult:
        """Weights for one interval. ``present`` / ``present_at_start``: pids holding a compute
        context at its end / start (None: unknown, then the pids with samples stand in);
        ``active_j``: the interval's energy above idle (the power-fit split needs it)."""
        present_set = set(present or ()) | set(present_at_start or ())
        consumers = present_set | {p for p in self._ts if self._ran_in(p, start_s, end_s)}
        self._presence.append((start_s, end_s, frozenset(consumers)))
        self._feed_fit(end_s)
        self._forget(end_s)
        if not consumers:
            return ShareResult({}, SPLIT_NONE)
        if len(consumers) == 1:
            return ShareResult({next(iter(consumers)): 1.0}, SPLIT_SOLO)
        if len(consumers) == 1:
            return ShareResult({next(iter(consumers)): 1.0}, SPLIT_SOLO)
        acts = {pid: self.mean_activity(pid, start_s, end_s) for pid in sorted(consumers)}
        busy = {pid: a for pid, (a, _) in acts.items() if a}
        unknown = [pid for pid, (a, _) in acts.items() if a is None]
        # The fit is asked even when the samples show one process busy: a sample carried over a
        # lost one can say 0 % for a process that is busy again.
        if idle_w is not None and active_j is not None and end_s > start_s:
            self.fit.fixed_base_w = idle_w
            fit = self.fit.solve()
            self.last_fit_r2 = fit.r2 if fit is not None else None
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

    def _ran_in(self, pid: int, start_s: float, end_s: float) -> bool:
        """Whether a sample with activity covers part of [start_s, end_s] (a process that exited
        before the compute list was read still ran in the interval)."""
        times, fracs = self._ts[pid], self._frac[pid]
        i = bisect.bisect_right(times, start_s)
        return i < len(times) and fracs[i] > 0 and (i == 0 or times[i - 1] < end_s)

    def _present_at(self, t_s: float) -> frozenset[int] | None:
        for a, b, pids in self._presence:
            if a < t_s <= b:
                return pids
        return None

    def _feed_fit(self, now_s: float) -> None:
        """Turn pending power readings into fit rows once every present process's activity at
        their time is known (its covering sample arrived) or can no longer arrive."""
        while self._pending:
            t_s, power_w = self._pending[0]
            present = self._present_at(t_s)
            if present is None:
                if t_s > now_s:
                    break
                self._pending.popleft()  # before the first interval or between gaps: unusable
                continue
            row: dict[int, float] = {}
            windows = []
            ready = usable = True
            for pid in sorted(present):
                frac, covered = self.activity(pid, t_s)
                if not covered:
                    # Wait for the sample that covers t_s; once it is overdue it was lost (or
                    # t_s lies before the first one): a carried figure would teach the fit a
                    # guess, so the reading is not used.
                    times = self._ts.get(pid)
                    before_first = bool(times) and t_s <= times[0] - FIRST_SAMPLE_WINDOW_S
                    ready = before_first or now_s - t_s >= SAMPLE_OVERDUE_S
                    usable = False
                    break
                row[pid] = frac or 0.0
                windows.append((pid, self._window_of(pid, t_s)))
            if not ready:
                break
            self._pending.popleft()
            if usable:
                self._add_row(t_s, tuple(windows), row, power_w)

    def _window_of(self, pid: int, t_s: float) -> float:
        times = self._ts[pid]
        return times[min(bisect.bisect_left(times, t_s), len(times) - 1)]

    def _add_row(self, t_s: float, key: tuple[object, ...], row: dict[int, float],
                 power_w: float) -> None:
        group = self._group
        if group is not None and group[0] == key and t_s - group[4] < 0.5:
            self._group = (key, group[1], group[2] + power_w, group[3] + 1, t_s)
            return
        if group is not None and any(v > 0 for v in group[1].values()):
            self.fit.add(group[1], group[2] / group[3], weight=float(group[3]))
        self._group = (key, row, power_w, 1, t_s)

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
