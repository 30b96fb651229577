"""Typed results of the scaling fits: parameters, uncertainty, goodness of fit."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np

from clipscale.scaling.bootstrap import percentile_band, percentile_ci


def _clean(v):
    """JSON-safe: numpy scalars to float, NaN/inf to None."""
    if isinstance(v, dict):
        return {k: _clean(x) for k, x in v.items()}
    if isinstance(v, (list, tuple, np.ndarray)):
        return [_clean(x) for x in v]
    if isinstance(v, (np.integer,)):
        return int(v)
    if isinstance(v, (float, np.floating)):
        return float(v) if math.isfinite(v) else None
    return v


@dataclass
class LawFit:
    """What every fitted law holds, and the predictions built on it.

    params are the point estimates by name, ci an interval per name at `level`; both use
    param_names, which are also the columns of boot_params (the bootstrap draws behind ci
    and predict_interval). residuals are log(y) - log(predicted) on the fitted points;
    r2 is in log space; loss is the minimised objective.
    """

    params: dict[str, float]
    ci: dict[str, tuple[float, float]]
    r2: float
    residuals: np.ndarray
    n_points: int
    loss: float = float("nan")
    level: float = 0.95
    boot_params: np.ndarray | None = field(default=None, repr=False)
    n_boot_failed: int = 0

    # The law itself, a static method of each subclass: inputs first, then the parameters
    # in param_names order, each an array or a column of bootstrap draws.
    curve: ClassVar[Callable[..., np.ndarray]]

    @property
    def param_names(self) -> Sequence[str]:
        raise NotImplementedError(f"{type(self).__name__} names no parameters")

    def predict(self, *inputs) -> np.ndarray:
        inputs = [np.asarray(v, dtype=float) for v in inputs]
        return self.curve(*inputs, *(self.params[k] for k in self.param_names))

    def predict_draws(self, *inputs) -> np.ndarray | None:
        """Bootstrap draws of the prediction, shape (n_boot, len(inputs[0]))."""
        if self.boot_params is None:
            return None
        rows = [np.atleast_1d(np.asarray(v, dtype=float))[None, :] for v in inputs]
        bp = self.boot_params
        return self.curve(*rows, *(bp[:, i : i + 1] for i in range(bp.shape[1])))

    def predict_interval(self, *inputs, level: float | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Pointwise bootstrap interval for the prediction at inputs."""
        draws = self.predict_draws(*inputs)
        if draws is None:
            return self._interval_without_draws(inputs[0])
        return percentile_band(draws, self.level if level is None else level)

    def _interval_without_draws(self, x) -> tuple[np.ndarray, np.ndarray]:
        raise ValueError("no bootstrap draws: fit with n_boot > 0")

    def _boot_counts(self) -> dict[str, int]:
        return {"n_boot": 0 if self.boot_params is None else len(self.boot_params), "n_boot_failed": self.n_boot_failed}


@dataclass(kw_only=True)
class PowerFit(LawFit):
    """E = a * x^(-b), or E_inf + a * x^(-b) for form 'saturating'.

    x, y are the runs given; for form 'frontier' frontier_mask marks the fitted ones
    (residuals and n_points count only those).
    """

    form: str
    x: np.ndarray
    y: np.ndarray
    ci_method: str = "bootstrap"
    frontier_mask: np.ndarray | None = field(default=None, repr=False)
    sigma: np.ndarray | None = field(default=None, repr=False)  # log-space SE per point: a weighted fit

    @property
    def param_names(self) -> list[str]:
        return ["a", "b", "E_inf"] if self.form == "saturating" else ["a", "b"]

    @staticmethod
    def curve(x, a, b, e_inf=0.0) -> np.ndarray:
        return e_inf + a * np.power(x, -b)

    @property
    def fitted_x(self) -> np.ndarray:
        return self.x if self.frontier_mask is None else self.x[self.frontier_mask]

    def _interval_without_draws(self, x) -> tuple[np.ndarray, np.ndarray]:
        # NaN rather than an error: a hold-out without a bootstrap still reports its points.
        nan = np.full(np.atleast_1d(x).shape, np.nan)
        return nan, nan.copy()

    def to_dict(self) -> dict:
        d = {
            "form": self.form,
            **{k: self.params[k] for k in self.param_names},
            "params": dict(self.params),
            "ci": {k: list(v) for k, v in self.ci.items()},
            "ci_level": self.level,
            "ci_method": self.ci_method,
            "r2": self.r2,
            "n_points": self.n_points,
            "residuals": list(self.residuals),
            **self._boot_counts(),
        }
        if self.sigma is not None:
            d["weighted"] = True
        if self.frontier_mask is not None:
            d["n_frontier"] = int(np.sum(self.frontier_mask))
            d["frontier_mask"] = [bool(v) for v in self.frontier_mask]
        return _clean(d)


@dataclass
class HoldoutPoint:
    x: float
    actual: float
    predicted: float
    abs_error: float
    rel_error: float
    lo: float = float("nan")
    hi: float = float("nan")
    label: str | None = None
    pi_lo: float = float("nan")  # prediction interval for the measurement (scatter included)
    pi_hi: float = float("nan")

    @property
    def covered(self) -> bool:
        """Whether the actual value fell inside the prediction interval."""
        return bool(self.pi_lo <= self.actual <= self.pi_hi)


@dataclass
class HoldoutResult:
    """Fit on all but the k largest-x points, then predict those."""

    k: int
    fit: PowerFit
    points: list[HoldoutPoint]

    @property
    def mean_abs_error(self) -> float:
        return float(np.mean([p.abs_error for p in self.points]))

    @property
    def mean_rel_error(self) -> float:
        return float(np.mean([p.rel_error for p in self.points]))

    def to_dict(self) -> dict:
        return _clean(
            {
                "k": self.k,
                "n_train": self.fit.n_points,
                "params": dict(self.fit.params),
                "mean_abs_error": self.mean_abs_error,
                "mean_rel_error": self.mean_rel_error,
                "points": [vars(p).copy() for p in self.points],
            }
        )


@dataclass(kw_only=True)
class JointFit(LawFit):
    """L(N, D) = E + A / N^alpha + B / D^beta and the compute-optimal allocation it implies.

    With C = k * N * D (k = flops_per_nd), minimising L at fixed C gives
    N_opt = G * (C/k)^a_exp, D_opt = (C/k)^b_exp / G, with
    a_exp = beta / (alpha + beta), b_exp = alpha / (alpha + beta),
    G = (alpha A / (beta B))^(1 / (alpha + beta))   (Hoffmann et al. 2022, eq. 4).
    """

    huber_delta: float = 1e-3
    flops_per_nd: float = 6.0

    param_names = ("E", "A", "B", "alpha", "beta")

    @staticmethod
    def curve(n, d, E, A, B, alpha, beta) -> np.ndarray:
        return E + A / n**alpha + B / d**beta

    @staticmethod
    def _optimal(c, k, E, A, B, alpha, beta):
        c = np.asarray(c, dtype=float)
        g = (alpha * A / (beta * B)) ** (1.0 / (alpha + beta))
        nd = c / k
        n_opt = g * nd ** (beta / (alpha + beta))
        d_opt = nd ** (alpha / (alpha + beta)) / g
        return n_opt, d_opt, JointFit.curve(n_opt, d_opt, E, A, B, alpha, beta)

    @property
    def a_exp(self) -> float:
        return self.params["beta"] / (self.params["alpha"] + self.params["beta"])

    @property
    def b_exp(self) -> float:
        return self.params["alpha"] / (self.params["alpha"] + self.params["beta"])

    def compute_optimal(self, c) -> tuple[np.ndarray, np.ndarray]:
        """(N_opt, D_opt) at compute c (FLOPs)."""
        n_opt, d_opt, _ = self._optimal(c, self.flops_per_nd, **self.params)
        return n_opt, d_opt

    def optimal_loss(self, c) -> np.ndarray:
        return self._optimal(c, self.flops_per_nd, **self.params)[2]

    def compute_optimal_interval(self, c, level: float | None = None) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """Bootstrap intervals for N_opt, D_opt and the optimal loss at compute c."""
        if self.boot_params is None:
            raise ValueError("no bootstrap draws: fit with n_boot > 0")
        c = np.atleast_1d(np.asarray(c, dtype=float))
        draws = [self._optimal(c, self.flops_per_nd, *row) for row in self.boot_params]
        lvl = self.level if level is None else level
        return {
            name: percentile_band(np.vstack([dr[i] for dr in draws]), lvl)
            for i, name in enumerate(("N_opt", "D_opt", "loss"))
        }

    def exponent_ci(self) -> dict[str, tuple[float, float]]:
        if self.boot_params is None:
            return {"a_exp": (float("nan"),) * 2, "b_exp": (float("nan"),) * 2}
        al, be = self.boot_params[:, 3], self.boot_params[:, 4]
        return percentile_ci(np.column_stack([be / (al + be), al / (al + be)]), ["a_exp", "b_exp"], self.level)

    def to_dict(self) -> dict:
        return _clean(
            {
                "form": "joint_nd",
                **self.params,
                "a_exp": self.a_exp,
                "b_exp": self.b_exp,
                "ci": {k: list(v) for k, v in {**self.ci, **self.exponent_ci()}.items()},
                "ci_level": self.level,
                "r2": self.r2,
                "n_points": self.n_points,
                "objective": self.loss,
                "huber_delta": self.huber_delta,
                "flops_per_nd": self.flops_per_nd,
                **self._boot_counts(),
            }
        )
