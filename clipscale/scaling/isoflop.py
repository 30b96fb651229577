"""Compute-optimal allocation from IsoFLOP profiles: Chinchilla's Approach 2.

Hoffmann et al. (2022, sec. 3.2) train several model sizes N at each of a few fixed compute
budgets C. Within a budget, loss against log N is close to a parabola; its minimum is that
budget's N_opt, and D_opt = C / (k N_opt). Across budgets, N_opt ∝ C^a and D_opt ∝ C^b, with
a + b = 1 when C = k N D exactly. Approach 3 (the joint fit L(N, D), `joint.py`) answers the
same question from every point at once; `clipscale optimal` sets the two side by side.

Points are grouped into budgets by their compute: sorted by C, a new budget starts where C grows
by more than BUDGET_TOLERANCE over the previous point (IsoFLOP rungs round their sample counts
to whole batches, so one budget's rungs agree only to a few percent).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from clipscale.scaling.bootstrap import bootstrap_samples, percentile_ci
from clipscale.scaling.numerics import MIN_X_SPAN
from clipscale.scaling.results import _clean

BUDGET_TOLERANCE = MIN_X_SPAN  # max/min compute within one budget (issue 16's IsoFLOP rule)


def budgets(compute) -> np.ndarray:
    """A budget index per point (0 for the smallest compute)."""
    c = np.asarray(compute, dtype=float)
    order = np.argsort(c)
    labels = np.empty(len(c), dtype=int)
    current, start = 0, c[order[0]] if len(c) else 0.0
    for i in order:
        if c[i] > start * BUDGET_TOLERANCE:
            current, start = current + 1, c[i]
        labels[i] = current
    return labels


def parabola_minimum(n, loss) -> float | None:
    """N at the minimum of loss = p0 + p1 log N + p2 (log N)^2; None when the profile has no
    interior minimum to speak of (fewer than 3 sizes, or curving the wrong way)."""
    x = np.log(np.asarray(n, dtype=float))
    if len(np.unique(x)) < 3:
        return None
    p2, p1, _ = np.polyfit(x, np.asarray(loss, dtype=float), 2)
    if p2 <= 0:
        return None
    vertex = -p1 / (2 * p2)
    if abs(vertex) > 700:  # a curvature of ~0 (points on a line) puts the vertex past any float
        return None
    return float(math.exp(vertex))


@dataclass
class IsoFlopFit:
    compute: np.ndarray  # each budget's compute (geometric mean of its points)
    n_opt: np.ndarray
    d_opt: np.ndarray
    a: float  # N_opt ∝ C^a
    b: float  # D_opt ∝ C^b
    ci: dict[str, tuple[float, float]] = field(default_factory=dict)
    level: float = 0.95
    n_boot: int = 0
    n_boot_failed: int = 0
    profiles: list = field(default_factory=list, repr=False)  # per budget: (n, loss, compute) of its points

    def to_dict(self) -> dict:
        return _clean({
            "a": self.a, "a_ci": list(self.ci.get("a", (math.nan, math.nan))),
            "b": self.b, "b_ci": list(self.ci.get("b", (math.nan, math.nan))),
            "budgets": [{"compute": c, "n_opt": n, "d_opt": d}
                        for c, n, d in zip(self.compute, self.n_opt, self.d_opt)],
            "level": self.level, "n_boot": self.n_boot, "n_boot_failed": self.n_boot_failed,
        })


class NoMinimumError(ValueError):
    """The design holds 2+ budgets of 3+ sizes, but fewer than 2 of them have a loss minimum inside
    their sizes: the measured optimum lies outside the sizes trained (a result, not a bad input)."""


def _budget_compute(compute: np.ndarray) -> float:
    """One budget's compute: the geometric mean of its points' (they agree within BUDGET_TOLERANCE)."""
    return float(np.exp(np.mean(np.log(compute))))


def profiles(n, loss, compute) -> list[tuple[np.ndarray, np.ndarray, float]]:
    """Per budget, its points' (N, loss) and the budget's compute (geometric mean of its points):
    what an IsoFLOP plot draws, minimum or not."""
    n, loss, labels = np.asarray(n, dtype=float), np.asarray(loss, dtype=float), budgets(compute)
    c = np.asarray(compute, dtype=float)
    return [(n[labels == b], loss[labels == b], _budget_compute(c[labels == b])) for b in np.unique(labels)]


def _optima(n, loss, compute, labels, k: float):
    """(budget compute, N_opt, D_opt) for every budget with a usable parabola."""
    out = []
    for b in np.unique(labels):
        m = labels == b
        n_opt = parabola_minimum(n[m], loss[m])
        if n_opt is not None:
            c = _budget_compute(compute[m])
            out.append((c, n_opt, c / (k * n_opt)))
    return np.array(out).reshape(-1, 3)


def _exponents(optima: np.ndarray) -> tuple[float, float] | None:
    if len(optima) < 2:
        return None
    lc = np.log(optima[:, 0])
    return float(np.polyfit(lc, np.log(optima[:, 1]), 1)[0]), float(np.polyfit(lc, np.log(optima[:, 2]), 1)[0])


def fit_isoflop(n, d, loss, compute=None, *, flops_per_nd: float = 6.0, n_boot: int = 0, seed: int = 0,
                level: float = 0.95) -> IsoFlopFit:
    """Approach 2 over points (N, D, loss); compute defaults to k N D. The interval resamples
    points within each budget (the budgets themselves are the design, not a sample)."""
    n, d, loss = (np.asarray(v, dtype=float) for v in (n, d, loss))
    compute = flops_per_nd * n * d if compute is None else np.asarray(compute, dtype=float)
    labels = budgets(compute)
    optima = _optima(n, loss, compute, labels, flops_per_nd)
    exps = _exponents(optima)
    groups = [np.flatnonzero(labels == b) for b in np.unique(labels)]
    if exps is None:
        designed = sum(len(np.unique(n[g])) >= 3 for g in groups)
        error = NoMinimumError if designed >= 2 else ValueError
        raise error(f"IsoFLOP profiles need at least 2 budgets with 3+ sizes and a minimum; "
                    f"found {len(groups)} budget(s), {designed} with 3+ sizes, {len(optima)} with a minimum")

    def one(idx):
        return _exponents(_optima(n[idx], loss[idx], compute[idx], labels[idx], flops_per_nd))

    boot, failed = bootstrap_samples(one, len(n), n_boot, seed, strata=groups)
    return IsoFlopFit(compute=optima[:, 0], n_opt=optima[:, 1], d_opt=optima[:, 2], a=exps[0], b=exps[1],
                      ci=percentile_ci(boot, ["a", "b"], level), level=level,
                      n_boot=0 if boot is None else len(boot), n_boot_failed=failed,
                      profiles=profiles(n, loss, compute))
