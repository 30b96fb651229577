"""Numerics every scaling fit shares: input checks, the Huber loss, log-space R^2 and
the best of several minimiser runs.

The one-variable fits (fits.py) and the joint N/D fit (joint.py) all fit logs of positive
data, judge the fit by log-space residuals and take the best of several L-BFGS-B runs.
One implementation of each keeps their conventions from drifting apart.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import numpy as np
from scipy.optimize import OptimizeResult


def _join(words: Iterable[str], last: str) -> str:
    words = list(words)
    return words[0] if len(words) == 1 else f"{', '.join(words[:-1])} {last} {words[-1]}"


def positive_columns(names: Sequence[str], *columns) -> list[np.ndarray]:
    """The columns as flat float arrays, checked: equal length, finite and positive.

    names label the columns in the errors (("x", "y"), ("N", "D", "loss")) so that a
    message says which input is at fault.
    """
    cols = [np.asarray(c, dtype=float).ravel() for c in columns]
    lengths = [len(c) for c in cols]
    if len(set(lengths)) > 1:
        raise ValueError(f"{_join(names, 'and')} must have the same length; got {_join(map(str, lengths), 'and')}")
    bad = ~np.logical_and.reduce([np.isfinite(c) for c in cols])
    if bad.any():
        raise ValueError(f"{int(bad.sum())} point(s) have a missing or non-finite {_join(names, 'or')}")
    for name, c in zip(names, cols):
        if np.any(c <= 0):
            raise ValueError(f"{name} must be positive ({int(np.sum(c <= 0))} value(s) are not): the fits work in log space")
    return cols


# Points whose x values all lie within this factor sit at one compute (an IsoFLOP budget's rungs,
# by the same rule `isoflop.budgets` groups them): a law across them is all noise (a ladder of two
# 2e11-FLOP rungs printed L = 0 * C^270, R^2 1.000).
MIN_X_SPAN = 1.10


def spans(x) -> bool:
    """Whether x reaches across more than one compute: max/min above MIN_X_SPAN."""
    x = np.asarray(x, dtype=float)
    return len(x) >= 2 and float(x.max() / x.min()) > MIN_X_SPAN


def require_points(n_points: int, n_params: int, law: str) -> None:
    """A law with k free parameters needs at least k points; fewer cannot pin it down."""
    if n_points < n_params:
        raise ValueError(f"the {law} has {n_params} parameters and needs at least {n_params} points; got {n_points}")


def huber(r: np.ndarray, delta: float) -> np.ndarray:
    """Elementwise Huber loss: quadratic within delta, linear beyond it, so that one
    outlying run (diverged, mis-logged) pulls the fit less than under least squares."""
    ar = np.abs(r)
    return np.where(ar <= delta, 0.5 * r * r, delta * (ar - 0.5 * delta))


def huber_grad(r: np.ndarray, delta: float) -> np.ndarray:
    """d huber(r) / d r."""
    return np.clip(r, -delta, delta)


def log_r2(log_y: np.ndarray, resid: np.ndarray) -> float:
    """R^2 of log-space residuals; NaN when every y is the same (nothing to explain)."""
    ss_tot = float(np.sum((log_y - log_y.mean()) ** 2))
    return 1.0 - float(np.sum(resid**2)) / ss_tot if ss_tot > 0 else float("nan")


def best_of(minimize_from: Callable[[np.ndarray], OptimizeResult], starts) -> tuple[np.ndarray, float]:
    """Run minimize_from from every start; the (x, objective) of the lowest finite optimum.

    Power-law objectives have several basins (a floor E traded against the exponent), so
    every fit here starts from several points and keeps the best.
    """
    best, tried = None, 0
    for x0 in starts:
        tried += 1
        res = minimize_from(np.asarray(x0, dtype=float))
        if np.isfinite(res.fun) and (best is None or res.fun < best.fun):
            best = res
    if best is None:
        raise ValueError(f"the fit found no finite optimum from any of its {tried} start(s)")
    return best.x, float(best.fun)
