"""Typed results of the scaling fits: parameters, uncertainty, goodness of fit."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

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
class PowerFit:
    """E = a * x^(-b), or E_inf + a * x^(-b) for form 'saturating'.

    residuals are log(y) - log(predicted) on the fitted points; r2 is in log space.
    x, y are the runs given; for form 'frontier' frontier_mask marks the fitted ones.
    boot_params holds the bootstrap draws (columns in param_names) behind ci and
    predict_interval.
    """

    form: str
    params: dict[str, float]
    ci: dict[str, tuple[float, float]]
    r2: float
    residuals: np.ndarray
    n_points: int
    x: np.ndarray
    y: np.ndarray
    level: float = 0.95
    ci_method: str = "bootstrap"
    boot_params: np.ndarray | None = field(default=None, repr=False)
    n_boot_failed: int = 0
    loss: float = float("nan")
    frontier_mask: np.ndarray | None = field(default=None, repr=False)

    @property
    def param_names(self) -> list[str]:
        return ["a", "b", "E_inf"] if self.form == "saturating" else ["a", "b"]

    @staticmethod
    def _curve(x, a, b, e_inf=0.0):
        return e_inf + a * np.power(np.asarray(x, dtype=float), -b)

    @property
    def fitted_x(self) -> np.ndarray:
        return self.x if self.frontier_mask is None else self.x[self.frontier_mask]

    def predict(self, x) -> np.ndarray:
        p = self.params
        return self._curve(x, p["a"], p["b"], p.get("E_inf", 0.0))

    def predict_draws(self, x) -> np.ndarray | None:
        """Bootstrap draws of the prediction, shape (n_boot, len(x))."""
        if self.boot_params is None:
            return None
        x = np.atleast_1d(np.asarray(x, dtype=float))
        bp = self.boot_params
        e_inf = bp[:, 2:3] if bp.shape[1] > 2 else 0.0
        return e_inf + bp[:, 0:1] * np.power(x[None, :], -bp[:, 1:2])

    def predict_interval(self, x, level: float | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Pointwise bootstrap interval for the prediction at x (NaN without a bootstrap)."""
        draws = self.predict_draws(x)
        if draws is None:
            nan = np.full(np.atleast_1d(x).shape, np.nan)
            return nan, nan.copy()
        return percentile_band(draws, self.level if level is None else level)

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
            "n_boot": 0 if self.boot_params is None else len(self.boot_params),
            "n_boot_failed": self.n_boot_failed,
        }
        if self.frontier_mask is not None:
            d["n_frontier"] = int(np.sum(self.frontier_mask))
            d["frontier_mask"] = [bool(v) for v in self.frontier_mask]
        return _clean(d)

    def to_metrics(self, prefix: str = "") -> dict[str, float]:
        """Flat metrics for MLflow, e.g. prefix 'scaling/<task>/'."""
        out = {f"{prefix}{self.form}/{k}": float(v) for k, v in self.params.items()}
        out[f"{prefix}{self.form}/r2"] = float(self.r2)
        for k, (lo, hi) in self.ci.items():
            out[f"{prefix}{self.form}/{k}_lo"] = float(lo)
            out[f"{prefix}{self.form}/{k}_hi"] = float(hi)
        return {k: v for k, v in out.items() if math.isfinite(v)}


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


@dataclass
class JointFit:
    """L(N, D) = E + A / N^alpha + B / D^beta and the compute-optimal allocation it implies.

    With C = k * N * D (k = flops_per_nd), minimising L at fixed C gives
    N_opt = G * (C/k)^a_exp, D_opt = (C/k)^b_exp / G, with
    a_exp = beta / (alpha + beta), b_exp = alpha / (alpha + beta),
    G = (alpha A / (beta B))^(1 / (alpha + beta))   (Hoffmann et al. 2022, eq. 4).
    """

    params: dict[str, float]
    ci: dict[str, tuple[float, float]]
    r2: float
    residuals: np.ndarray
    n_points: int
    loss: float
    huber_delta: float = 1e-3
    flops_per_nd: float = 6.0
    level: float = 0.95
    boot_params: np.ndarray | None = field(default=None, repr=False)
    n_boot_failed: int = 0

    param_names = ("E", "A", "B", "alpha", "beta")

    def predict(self, n, d) -> np.ndarray:
        p = self.params
        n, d = np.asarray(n, dtype=float), np.asarray(d, dtype=float)
        return p["E"] + p["A"] / n ** p["alpha"] + p["B"] / d ** p["beta"]

    def predict_interval(self, n, d, level: float | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Pointwise bootstrap interval of L at (n, d)."""
        if self.boot_params is None:
            raise ValueError("no bootstrap draws: fit with n_boot > 0")
        n, d = np.atleast_1d(np.asarray(n, dtype=float)), np.atleast_1d(np.asarray(d, dtype=float))
        e, a, b, al, be = (self.boot_params[:, i : i + 1] for i in range(5))
        draws = e + a / n[None, :] ** al + b / d[None, :] ** be
        return percentile_band(draws, self.level if level is None else level)

    @staticmethod
    def _optimal(c, k, E, A, B, alpha, beta):
        c = np.asarray(c, dtype=float)
        g = (alpha * A / (beta * B)) ** (1.0 / (alpha + beta))
        nd = c / k
        n_opt = g * nd ** (beta / (alpha + beta))
        d_opt = nd ** (alpha / (alpha + beta)) / g
        return n_opt, d_opt, E + A / n_opt**alpha + B / d_opt**beta

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
                "n_boot": 0 if self.boot_params is None else len(self.boot_params),
                "n_boot_failed": self.n_boot_failed,
            }
        )
