"""The learning-rate rule of a sweep: each size's optimal learning rate, then lr_opt(N) = c * N^-gamma.

Per size, the optimum is the minimum of a parabola in log LR through the best `k` trials (the shape
Chinchilla's Approach 2 fits to loss against log N, `isoflop.parabola_minimum`). Where those trials do
not bracket a minimum (fewer than 3 distinct LRs, a parabola curving the wrong way, or a vertex outside
their LRs) the best trial's LR stands in: a parabola extrapolated past its points is a guess. A trial
with a non-finite loss (diverged) counts as worse than every finite one and is never on the parabola.

Across sizes, log lr_opt = log c - gamma log N is a straight line (`fits.fit_power`), N being the
non-embedding parameter count.

Interval: the sizes are the design, not a sample, so the bootstrap resamples trials within each size
and recomputes every optimum and the line (as `isoflop.fit_isoflop` resamples within budgets). That
sees the noise in each size's optimum but not the scatter of the optima about the line; with 3 or more
sizes the line's own t interval sees that, and the reported interval is the envelope of the two.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from clipscale.scaling.bootstrap import bootstrap_samples, percentile_ci
from clipscale.scaling.fits import fit_power
from clipscale.scaling.isoflop import parabola_minimum
from clipscale.scaling.results import _clean

TOP_K = 3  # trials through which each size's parabola goes: the fewest that define one


@dataclass
class SizeOptimum:
    """One size's optimum: where it came from, and the best trial beside it."""

    n: float  # non-embedding parameters
    lr_opt: float
    method: str  # "parabola" (vertex through the best k) or "best" (the best trial's LR)
    best_lr: float
    best_loss: float
    n_trials: int  # trials with a finite loss
    at_edge: bool = False  # the best trial is the size's lowest or highest LR: the optimum may lie outside

    def to_dict(self) -> dict:
        return _clean({"n": self.n, "lr_opt": self.lr_opt, "method": self.method, "best_lr": self.best_lr,
                       "best_loss": self.best_loss, "n_trials": self.n_trials, "at_edge": self.at_edge})


@dataclass
class LrRuleFit:
    """lr_opt(N) = c * N^-gamma with its interval and the per-size optima behind it."""

    c: float
    gamma: float
    ci: dict[str, tuple[float, float]]
    optima: list[SizeOptimum]
    r2: float
    level: float = 0.95
    ci_method: str = ""
    n_boot: int = 0
    n_boot_failed: int = 0
    boot: np.ndarray | None = field(default=None, repr=False)  # (draws, 2): c, gamma

    def predict(self, n) -> np.ndarray:
        return self.c * np.asarray(n, dtype=float) ** -self.gamma

    def band(self, n) -> tuple[np.ndarray, np.ndarray] | None:
        """Pointwise interval of lr_opt at n from the bootstrap draws; None without draws."""
        if self.boot is None:
            return None
        n = np.asarray(n, dtype=float)
        draws = self.boot[:, :1] * n[None, :] ** -self.boot[:, 1:2]
        tail = 100.0 * (1.0 - self.level) / 2.0
        lo, hi = np.percentile(draws, [tail, 100.0 - tail], axis=0)
        return lo, hi

    def to_dict(self) -> dict:
        return _clean({"c": self.c, "gamma": self.gamma, "c_ci": list(self.ci["c"]),
                       "gamma_ci": list(self.ci["gamma"]), "r2": self.r2, "level": self.level,
                       "ci_method": self.ci_method, "n_boot": self.n_boot, "n_boot_failed": self.n_boot_failed,
                       "optima": [o.to_dict() for o in self.optima]})


def size_optimum(lr, loss, k: int = TOP_K) -> tuple[float, str]:
    """(optimal LR, method) of one size's trials; raises ValueError when none has a finite loss."""
    lr, loss = np.asarray(lr, dtype=float), np.asarray(loss, dtype=float)
    ok = np.isfinite(loss)
    if not ok.any():
        raise ValueError("no trial of this size has a finite loss (all diverged or failed)")
    # A bootstrap resample repeats trials: a repeat adds no point to a parabola, so keep one of each.
    pairs = np.unique(np.column_stack([lr[ok], loss[ok]]), axis=0)
    top = pairs[np.argsort(pairs[:, 1], kind="stable")[:k]]
    vertex = parabola_minimum(top[:, 0], top[:, 1])
    if vertex is not None and top[:, 0].min() <= vertex <= top[:, 0].max():
        return vertex, "parabola"
    return float(top[0, 0]), "best"


def _groups(n: np.ndarray) -> list[np.ndarray]:
    return [np.flatnonzero(n == v) for v in np.unique(n)]


def _optima(n: np.ndarray, lr: np.ndarray, loss: np.ndarray, k: int) -> list[SizeOptimum]:
    """Every size with at least one finite loss, smallest first."""
    out = []
    for g in _groups(n):
        finite = np.isfinite(loss[g])
        if not finite.any():
            continue
        lr_opt, method = size_optimum(lr[g], loss[g], k)
        best = g[finite][np.argmin(loss[g][finite])]
        # Against every trial, diverged ones too: a best LR just below one that diverged is bracketed.
        edge = lr[best] in (lr[g].min(), lr[g].max())
        out.append(SizeOptimum(float(n[g[0]]), float(lr_opt), method, float(lr[best]), float(loss[best]),
                               int(finite.sum()), bool(edge)))
    return out


def _line(optima: list[SizeOptimum]) -> np.ndarray | None:
    """[c, gamma] of the line through the optima; None with fewer than two sizes."""
    if len(optima) < 2:
        return None
    fit = fit_power([o.n for o in optima], [o.lr_opt for o in optima])
    return np.array([fit.params["a"], fit.params["b"]])


def fit_lr_rule(n, lr, loss, *, k: int = TOP_K, n_boot: int = 1000, seed: int = 0,
                level: float = 0.95) -> LrRuleFit:
    """Fit lr_opt(N) = c * N^-gamma to trials (size, learning rate, final loss), one row each."""
    n, lr, loss = (np.asarray(v, dtype=float).ravel() for v in (n, lr, loss))
    if not len(n) == len(lr) == len(loss):
        raise ValueError(f"n, lr and loss must have one entry per trial; got {len(n)}, {len(lr)}, {len(loss)}")
    if not (np.all(n > 0) and np.all(lr > 0)):
        raise ValueError("sizes and learning rates must be positive")
    optima = _optima(n, lr, loss, k)
    if len(optima) < 2:
        raise ValueError(f"the learning-rate rule needs an optimum at 2 or more sizes; {len(optima)} of "
                         f"{len(np.unique(n))} size(s) have a trial with a finite loss")
    line = fit_power([o.n for o in optima], [o.lr_opt for o in optima], level=level)

    def one(idx):
        return _line(_optima(n[idx], lr[idx], loss[idx], k))

    boot, failed = bootstrap_samples(one, len(n), n_boot, seed, strata=_groups(n))
    ci = percentile_ci(boot, ["c", "gamma"], level)
    method = "bootstrap over trials within each size" if boot is not None else "none"
    if len(optima) >= 3:  # the optima's scatter about the line, which the trial bootstrap cannot see
        ci = {name: _envelope(ci[name], line.ci[key]) for name, key in (("c", "a"), ("gamma", "b"))}
        method = "t interval of the log-log line" if boot is None else method + ", widened to the line's t interval"
    return LrRuleFit(c=float(line.params["a"]), gamma=float(line.params["b"]), ci=ci, optima=optima, r2=line.r2,
                     level=level, ci_method=method, n_boot=0 if boot is None else len(boot), n_boot_failed=failed,
                     boot=boot)


def _envelope(a: tuple[float, float], b: tuple[float, float]) -> tuple[float, float]:
    """The smallest interval holding both (NaN ends ignored)."""
    lo = [v for v in (a[0], b[0]) if math.isfinite(v)]
    hi = [v for v in (a[1], b[1]) if math.isfinite(v)]
    return (min(lo) if lo else math.nan, max(hi) if hi else math.nan)
