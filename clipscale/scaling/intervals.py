"""Prediction intervals for a one-variable law: where the next measurement will fall.

A bootstrap over rungs says how well the curve is pinned down; the value a held-out rung
actually shows also scatters around the curve (seed noise, rungs off the trend). The
interval here holds both, in log space, by linearising the law about its fit (Seber and
Wild 1989, ch. 5):

    var(log y_new) = s^2 * sigma_new^2  +  j_new' Cov(theta) j_new,   Cov = s^2 (J' W J)^-1

with J the Jacobian of log f over the parameters (log a', b[, E]) at the fitted points,
W = diag(1 / sigma^2) (identity for an unweighted fit) and s^2 the weighted residual
variance over n - p degrees of freedom. With seed standard errors, s^2 is floored at 1:
rungs cannot scatter less than their seeds say, and at the floor the seed noise is taken
as known (normal quantiles); when rungs scatter more (the law misses some of them) s^2
grows and so does the interval, at t(n - p) quantiles. Intervals are symmetric in log
space, so exact for an unweighted power law with log-normal scatter.
"""

from __future__ import annotations

import numpy as np
from scipy import stats

from clipscale.scaling.results import PowerFit


def _jacobian(fit: PowerFit, x: np.ndarray, lx_ref: float) -> tuple[np.ndarray, np.ndarray]:
    """(log f(x), d log f / d(log a', b[, E])) with a' = a * x_ref^-b, centred for conditioning."""
    a, b = fit.params["a"], fit.params["b"]
    e_inf = fit.params.get("E_inf", 0.0)
    lu = np.log(x) - lx_ref
    pw = np.exp(np.log(a) - b * lx_ref - b * lu)  # a x^-b
    pred = e_inf + pw
    cols = [pw / pred, -pw * lu / pred]
    if _free_floor(fit):
        cols.append(1.0 / pred)
    return np.log(pred), np.column_stack(cols)


def _free_floor(fit: PowerFit) -> bool:
    # A floor on its bound (0, or the lowest point) was not estimated, only clipped: it
    # carries no linearised variance of its own.
    if "E_inf" not in fit.params:
        return False
    e = fit.params["E_inf"]
    return bool(1e-9 * float(np.min(fit.y)) < e < float(np.min(fit.y)) * (1 - 1e-6))


def _fitted(fit: PowerFit) -> tuple[np.ndarray, np.ndarray]:
    if fit.frontier_mask is not None:
        return fit.x[fit.frontier_mask], fit.y[fit.frontier_mask]
    return fit.x, fit.y


def _n_params(fit: PowerFit) -> int:
    return 3 if "E_inf" in fit.params else 2


def covariance(fit: PowerFit) -> tuple[np.ndarray, float, int, float]:
    """(Cov of (log a', b[, E]), residual variance s^2, degrees of freedom, log x_ref)."""
    x, y = _fitted(fit)
    lx_ref = float(np.mean(np.log(x)))
    log_pred, jac = _jacobian(fit, x, lx_ref)
    w = np.ones(len(x)) if fit.sigma is None else 1.0 / fit.sigma**2
    dof = len(x) - _n_params(fit)
    if dof <= 0:
        return np.full((jac.shape[1],) * 2, np.nan), float("nan"), dof, lx_ref
    s2 = float(np.sum(w * (np.log(y) - log_pred) ** 2) / dof)
    if fit.sigma is not None and s2 <= 1.0:
        # The seeds' spread accounts for all the scatter: it is the (known) noise level, so
        # the interval takes normal quantiles (infinite degrees of freedom), not t.
        s2, dof = 1.0, np.inf
    return s2 * np.linalg.pinv(jac.T @ (w[:, None] * jac)), s2, dof, lx_ref


def prediction_interval(fit: PowerFit, x_new, *, sigma_new=None, level: float = 0.95):
    """(prediction, lo, hi) at x_new for a new measurement there.

    sigma_new is that measurement's log-space standard error (e.g. the pooled seed spread
    over sqrt(its seeds)); for a weighted fit without it, the median of the fit's sigma.
    For an unweighted fit the scatter is the residuals' own. NaN bounds when the law has
    as many parameters as points.
    """
    x_new = np.atleast_1d(np.asarray(x_new, dtype=float))
    pred = fit.predict(x_new)
    cov, s2, dof, lx_ref = covariance(fit)
    if dof <= 0:
        nan = np.full(len(x_new), np.nan)
        return pred, nan, nan.copy()
    if fit.sigma is None:
        obs2 = np.full(len(x_new), s2)
    else:
        sn = np.median(fit.sigma) if sigma_new is None else np.asarray(sigma_new, dtype=float)
        obs2 = s2 * np.broadcast_to(sn, x_new.shape) ** 2
    log_pred, jac = _jacobian(fit, x_new, lx_ref)
    var = obs2 + np.einsum("ij,jk,ik->i", jac, cov, jac)
    half = stats.t.ppf(0.5 + level / 2.0, dof) * np.sqrt(var)
    return pred, np.exp(log_pred - half), np.exp(log_pred + half)


def param_intervals(fit: PowerFit, level: float | None = None) -> dict[str, tuple[float, float]]:
    """Wald-t intervals of a, b (and E_inf) from the linearised covariance."""
    level = fit.level if level is None else level
    cov, _, dof, lx_ref = covariance(fit)
    nan = (float("nan"), float("nan"))
    if dof <= 0:
        return {k: nan for k in fit.param_names}
    t = stats.t.ppf(0.5 + level / 2.0, dof)
    se = np.sqrt(np.diag(cov))
    # log a = log a' + b x_ref: its variance takes the covariance of the two.
    var_la = cov[0, 0] + lx_ref**2 * cov[1, 1] + 2 * lx_ref * cov[0, 1]
    la, b = np.log(fit.params["a"]), fit.params["b"]
    out = {"a": (float(np.exp(la - t * np.sqrt(var_la))), float(np.exp(la + t * np.sqrt(var_la)))),
           "b": (float(b - t * se[1]), float(b + t * se[1]))}
    if "E_inf" in fit.params:
        e = fit.params["E_inf"]
        out["E_inf"] = (float(e - t * se[2]), float(e + t * se[2])) if _free_floor(fit) else (e, e)
    return out
