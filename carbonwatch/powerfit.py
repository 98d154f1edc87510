"""How power follows activity: one small fit shared by device attribution and per-call splits.

Model (docs/architecture.md, "Shared GPU"): over a window of recent readings,

    power_w(t) ~= base_w + sum_k coef_w[k] * x_k(t),    base_w >= 0, coef_w[k] >= 0

where ``x_k(t)`` is consumer ``k``'s activity at the time of the reading: a process's SM busy
fraction on a GPU, the number of an inference service's running calls, the work (batch size,
tokens) of those calls. ``coef_w[k]`` is then the watts one unit of ``k``'s activity adds, its
*marginal power*. The device attribution uses it to split a shared interval by the power each
process causes rather than by SM time alone (a bursty, light process is busy often but draws
little); the per-call split uses it to give a batch-64 call more than a batch-1 call.

Non-negative least squares, because a consumer cannot draw negative power: an unconstrained fit on
collinear activity happily returns +900 W and -700 W. The fit is only trusted when it explains the
readings (``r2``) over enough rows with enough movement in every used regressor; callers fall back
to time shares otherwise and say so in the provenance.

Pure and small: numpy only, a bounded ring of rows per fit, O(rows x k^2) per solve with k (the
consumers present) small: one weighted product of the rows gives the k x k normal equations,
solved by the same active set in plain Python (:func:`nnls_gram`; :func:`nnls` on the rows where
columns are nearly collinear). Not thread-safe; each owner keeps its own.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Hashable, Mapping
from dataclasses import dataclass
from typing import Generic, TypeVar

import numpy as np

K = TypeVar("K", bound=Hashable)


@dataclass(frozen=True)
class Fit(Generic[K]):
    """One solved fit. ``coef_w``: watts per unit of each regressor's activity (>= 0)."""

    base_w: float
    coef_w: dict[K, float]
    r2: float
    rows: int

    def power_w(self, activity: Mapping[K, float]) -> float:
        """Predicted power for one activity vector (regressors the fit never saw add 0 W)."""
        return self.base_w + math.fsum(self.coef_w.get(k, 0.0) * x for k, x in activity.items())


def nnls(a: np.ndarray, b: np.ndarray, tol: float = 1e-10) -> np.ndarray:
    """Lawson-Hanson non-negative least squares: argmin ||a x - b|| subject to x >= 0.

    For the handful of columns a fit has (one per consumer present), the textbook active-set loop is
    exact and fast; scipy is not a dependency for this one function."""
    _, n = a.shape
    x = np.zeros(n)
    passive = np.zeros(n, dtype=bool)
    w = a.T @ (b - a @ x)
    for _ in range(3 * n + 3):
        candidates = ~passive & (w > tol)
        if not candidates.any():
            break
        passive[int(np.argmax(np.where(candidates, w, -np.inf)))] = True
        while True:
            z = np.zeros(n)
            z[passive] = np.linalg.lstsq(a[:, passive], b, rcond=None)[0]
            if (z[passive] > tol).all():
                x = z
                break
            # Step from x towards z until the first passive coefficient reaches zero, drop it.
            blocking = passive & (z <= tol)
            alpha = float(np.min(x[blocking] / np.maximum(x[blocking] - z[blocking], 1e-300)))
            x = x + alpha * (z - x)
            passive &= x > tol
            x[~passive] = 0.0
        w = a.T @ (b - a @ x)
    return x


# A passive set whose Cholesky pivot falls below this fraction of its column's own weight is nearly
# collinear (singular values apart by more than ~1e3): the normal equations would lose digits there.
GRAM_MIN_PIVOT = 1e-6


def _solve_spd(g: list[list[float]], b: list[float]) -> list[float] | None:
    """g z = b for a small symmetric positive definite g, by Cholesky; None when nearly singular."""
    m = len(b)
    low = [[0.0] * m for _ in range(m)]
    for i in range(m):
        row = low[i]
        for j in range(i + 1):
            s = g[i][j] - math.fsum(row[k] * low[j][k] for k in range(j))
            if i == j:
                if not s > GRAM_MIN_PIVOT * g[i][i]:
                    return None
                row[i] = math.sqrt(s)
            else:
                row[j] = s / low[j][j]
    z = [0.0] * m
    for i in range(m):  # low u = b
        z[i] = (b[i] - math.fsum(low[i][k] * z[k] for k in range(i))) / low[i][i]
    for i in reversed(range(m)):  # low^T z = u
        z[i] = (z[i] - math.fsum(low[k][i] * z[k] for k in range(i + 1, m))) / low[i][i]
    return z


def nnls_gram(gram: list[list[float]], atb: list[float], tol: float = 1e-10) -> list[float] | None:
    """:func:`nnls` from the normal equations: ``gram`` = a^T a, ``atb`` = a^T b (a few columns).

    The same Lawson-Hanson steps, each passive solve on the small gram instead of lstsq on the
    rows. None where a passive set is nearly collinear (the rows' lstsq, which picks the
    minimum-norm solution there, should decide)."""
    n = len(atb)
    x = [0.0] * n
    passive = [False] * n
    w = list(atb)
    for _ in range(3 * n + 3):
        best, best_w = -1, tol  # the first largest gradient above tol, as np.argmax picks
        for j in range(n):
            if not passive[j] and w[j] > best_w:
                best, best_w = j, w[j]
        if best < 0:
            break
        passive[best] = True
        while True:
            idx = [j for j in range(n) if passive[j]]
            zp = _solve_spd([[gram[i][j] for j in idx] for i in idx], [atb[i] for i in idx])
            if zp is None:
                return None
            z = [0.0] * n
            for i, v in zip(idx, zp, strict=True):
                z[i] = v
            if all(v > tol for v in zp):
                x = z
                break
            # Step from x towards z until the first passive coefficient reaches zero, drop it.
            alpha = min(x[i] / max(x[i] - z[i], 1e-300) for i in idx if z[i] <= tol)
            x = [xi + alpha * (zi - xi) for xi, zi in zip(x, z, strict=True)]
            passive = [p and xi > tol for p, xi in zip(passive, x, strict=True)]
            x = [xi if p else 0.0 for p, xi in zip(passive, x, strict=True)]
        w = [atb[i] - math.fsum(gram[i][j] * x[j] for j in range(n)) for i in range(n)]
    return x


class ActivityFit(Generic[K]):
    """A rolling fit of power on activity over the last ``max_rows`` readings.

    ``add`` one row per power reading (or per segment: ``weight`` is its duration, so long
    segments count for more); ``solve`` returns a :class:`Fit`, or None while it cannot be trusted:
    fewer than ``min_rows`` rows, no regressor that ever moved, or ``r2`` below ``min_r2``.
    ``fixed_base_w`` pins the intercept (a GPU's idle power learned from its counter) instead of
    fitting it. ``signed=True`` accepts negative activity: rows that are deviations from a mean
    (a fit within groups of rows that share an unknown offset or scale, with the base pinned
    to 0); coefficients stay >= 0."""

    def __init__(
        self,
        *,
        max_rows: int = 600,
        min_rows: int = 30,
        min_r2: float = 0.3,
        fixed_base_w: float | None = None,
        signed: bool = False,
    ) -> None:
        if max_rows < 1 or min_rows < 1:
            raise ValueError("max_rows and min_rows must be at least 1")
        self.max_rows = max_rows
        self.min_rows = min_rows
        self.min_r2 = min_r2
        self.fixed_base_w = fixed_base_w
        self.signed = signed
        self._rows: deque[tuple[dict[K, float], float, float]] = deque(maxlen=max_rows)
        # The rows as numbers, kept as they are added: building the design matrix from the row
        # dicts at each solve was ~80 % of its cost. A ring of max_rows slots: a column of ones,
        # the power, then one column per key ever seen (a key in no row any more keeps a column
        # of zeros, left out of the solve). One weighted product of the used columns then gives
        # every sum the solve needs (see solve).
        self._x = np.zeros((max_rows, 6))
        self._w = np.zeros(max_rows)
        self._first = 0  # slot of the oldest row
        self._col: dict[K, int] = {}
        self._rows_with: dict[K, int] = {}  # key -> rows it is in

    def __len__(self) -> int:
        return len(self._rows)

    def clear(self) -> None:
        """Forget every row (the caller learned its rows were built wrong)."""
        self._rows.clear()
        self._first = 0
        self._rows_with.clear()

    def add(self, activity: Mapping[K, float], power_w: float, weight: float = 1.0) -> None:
        """One reading. Non-finite or negative values are refused rather than poisoning the fit."""
        if not (math.isfinite(power_w) and math.isfinite(weight)) or weight <= 0:
            return
        clean = {k: float(x) for k, x in activity.items()
                 if math.isfinite(x) and (x > 0 or (self.signed and x != 0))}
        rows, rows_with = self._rows, self._rows_with
        slot = (self._first + len(rows)) % self.max_rows
        if len(rows) == self.max_rows:  # the oldest row falls out: its slot takes the new one
            for k in rows[0][0]:
                rows_with[k] -= 1
            self._first = (self._first + 1) % self.max_rows
        rows.append((clean, float(power_w), float(weight)))
        x = self._x
        # The slot's row built in Python and stored in one assignment: a numpy scalar store per
        # value costs more than the rest of add.
        values = [0.0] * x.shape[1]
        values[0], values[1] = 1.0, float(power_w)
        for k, v in clean.items():
            col = self._col.get(k)
            if col is None:
                col = self._col[k] = 2 + len(self._col)
                if col >= x.shape[1]:
                    x = self._x = np.hstack([x, np.zeros_like(x)])
                    values.extend([0.0] * (x.shape[1] - len(values)))
            values[col] = v
            rows_with[k] = rows_with.get(k, 0) + 1
        x[slot] = values
        self._w[slot] = float(weight)

    def solve(self, min_support: int = 0) -> Fit[K] | None:
        """Fit the rows. ``min_support``: a regressor clearly active (above a tenth of its
        highest value) in fewer rows than this has too little evidence to be priced; it is left
        out, and so are the rows it was clearly active in (they would push its power onto the
        others). Callers treat it as not priced."""
        if len(self._rows) < self.min_rows:
            return None
        keys: list[K] = sorted((k for k, c in self._rows_with.items() if c > 0), key=repr)
        if not keys:
            return None
        # The rows fill slots 0..n-1 until the ring is full (it only wraps then), and nothing
        # below depends on their order: the slots are used as they lie, no reordering copy.
        # Every numpy call here costs ~10 us on a cold cache (this runs about once a second per
        # shared GPU, between sleeps): the few below replace ~25, the rest is plain Python on
        # the k x k sums.
        n = len(self._rows)
        z = self._x[:n, [0, 1, *(self._col[k] for k in keys)]]  # ones, power, regressors
        w = self._w[:n]
        top = z.max(axis=0)
        if min_support > 0:
            clear = z > 0.1 * top  # the ones and power columns' answers are not used
            thin = [c < min_support for c in clear.sum(axis=0).tolist()[2:]]
            if any(thin):
                keep = ~clear[:, [False, False, *thin]].any(axis=1)
                keys = [k for k, t in zip(keys, thin, strict=True) if not t]
                z = z[keep][:, [True, True, *(not t for t in thin)]]
                w = w[keep]
                n = len(w)
                if n < self.min_rows:
                    return None
                top = z.max(axis=0)
        # A regressor that never moved is indistinguishable from a free intercept: leave it out
        # (its coefficient is then 0 here, and callers fall back for it). With the intercept
        # pinned, a steady consumer (a trainer busy 90 % of every sample) is identifiable: keep
        # every regressor that was ever non-zero (np.any(x > 1e-9) is max > 1e-9).
        fixed = self.fixed_base_w is not None
        top_x = top.tolist()[2:]
        if fixed:
            moving = [t > 1e-9 for t in top_x]
        else:
            low_x = z[:, 2:].min(axis=0).tolist() if keys else []
            moving = [t - lo > 1e-9 for t, lo in zip(top_x, low_x, strict=True)]
        used = [k for k, m in zip(keys, moving, strict=True) if m]
        if not used:
            return None
        if not all(moving):
            z = z[:, [True, True, *moving]]
        # s[i][j] = sum over rows of w z_i z_j, z = (1, power, x_1..x_m).
        s = ((z.T * w) @ z).tolist()
        sum_w, sum_wy, sum_wyy = s[0][0], s[0][1], s[1][1]
        if fixed:
            base_w = float(self.fixed_base_w)  # type: ignore[arg-type]
            # target t = y - base: a^T W t = sum w x y - base sum w x; design a = x
            cols = range(2, 2 + len(used))
            gram = [[s[i][j] for j in cols] for i in cols]
            atb = [s[i][1] - base_w * s[i][0] for i in cols]
            sum_wtt = sum_wyy - 2.0 * base_w * sum_wy + base_w * base_w * sum_w
        else:
            base_w = 0.0
            idx = [0, *range(2, 2 + len(used))]  # design (1, x), target y
            gram = [[s[i][j] for j in idx] for i in idx]
            atb = [s[i][1] for i in idx]
            sum_wtt = sum_wyy
        sol = nnls_gram(gram, atb)
        if sol is None:
            design = z[:, 2:] if fixed else z[:, [0, *range(2, z.shape[1])]]
            sw = np.sqrt(w)
            sol = nnls(design * sw[:, None], (z[:, 1] - base_w) * sw).tolist()
        if fixed:
            coefs = sol
        else:
            base_w, coefs = sol[0], sol[1:]
        # Residual and total sums of squares from the same sums (exact up to rounding; the
        # powers are hundreds of watts, the residuals are not lost in it).
        m = len(sol)
        ss_res = sum_wtt - 2.0 * math.fsum(c * a for c, a in zip(sol, atb, strict=True)) \
            + math.fsum(sol[i] * gram[i][j] * sol[j] for i in range(m) for j in range(m))
        ss_tot = sum_wyy - sum_wy * sum_wy / sum_w if sum_w > 0 else 0.0
        # Constant power: the difference of sums is rounding, not spread.
        if ss_tot <= 1e-12 * sum_wyy:
            ss_tot = 0.0
        r2 = 1.0 - max(ss_res, 0.0) / ss_tot if ss_tot > 0 else 0.0
        if r2 < self.min_r2:
            return None
        coef_w = {k: float(c) for k, c in zip(used, coefs, strict=True)}
        return Fit(base_w=float(base_w), coef_w=coef_w, r2=r2, rows=n)
