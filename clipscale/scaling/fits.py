"""One-variable fits of error against compute: power, saturating and frontier forms.

power       E = a * C^(-b), least squares on log E vs log C (the trend of CLIP's Figure 9,
            Radford et al. 2021).
saturating  E = E_inf + a * C^(-b), Huber loss on log residuals, multi-start L-BFGS-B,
            bounded to 0 <= E_inf <= min(E), b > 0.
frontier    the power law fitted only to the compute-efficient frontier: runs with lower
            error than every cheaper run (Cherti et al. 2023, OpenCLIP scaling laws).

Every fit returns a PowerFit with parameters, a seeded bootstrap interval per parameter
(n_boot > 0), log-space R^2 and residuals. power and saturating take sigma, each point's
log-space standard error (a rung's mean over replicate seeds, clipscale.scaling.replicates):
points are then weighted by 1 / sigma^2, and the prediction intervals use it
(clipscale.scaling.intervals).
"""

from __future__ import annotations

import numpy as np
from scipy import optimize, stats

from clipscale.scaling.bootstrap import bootstrap_samples, percentile_ci
from clipscale.scaling.numerics import (MIN_X_SPAN, best_of, huber, huber_grad, log_r2, positive_columns,
                                        require_points, spans)
from clipscale.scaling.results import HoldoutPoint, HoldoutResult, PowerFit
from clipscale.scaling.threads import single_thread_blas

FORMS = ("power", "saturating", "frontier")

# Log residuals within ~5% are ordinary noise for a ladder's zero-shot error; Huber keeps
# those quadratic and only treats larger misses (a diverged or mis-logged rung) as L1.
SATURATING_HUBER_DELTA = 0.05


def _xy(x, y):
    x, y = positive_columns(("x", "y"), x, y)
    if len(np.unique(x)) < 2:
        raise ValueError(f"need at least 2 distinct x values to fit a power law; got {len(np.unique(x))}")
    if not spans(x):
        raise ValueError(f"x spans only {x.min():.4g}..{x.max():.4g} (at most a factor {MIN_X_SPAN}): "
                         "one compute, no power law to fit")
    return x, y


def _ols(lx, ly, sigma=None):
    """(log a, b) of log y = log a - b log x; weighted least squares with sigma."""
    slope, intercept = np.polyfit(lx, ly, 1, w=None if sigma is None else 1.0 / sigma)
    return intercept, -slope


def _sigma(sigma, n):
    """sigma as a checked float array, or None (unweighted)."""
    if sigma is None:
        return None
    sigma = np.asarray(sigma, dtype=float).ravel()
    if len(sigma) != n or not np.all(np.isfinite(sigma) & (sigma > 0)):
        raise ValueError(f"sigma must hold {n} positive finite log-space standard errors; got {sigma}")
    return sigma


# ---------------------------------------------------------------- power


def _power_fit(form, params, x, y, resid, boot, failed, level, **rest) -> PowerFit:
    """The PowerFit of a one-variable form: intervals from the bootstrap unless given in rest."""
    rest.setdefault("ci", percentile_ci(boot, list(params), level))
    rest.setdefault("ci_method", "bootstrap" if boot is not None else "none")
    return PowerFit(
        form=form, params={k: float(v) for k, v in params.items()}, r2=log_r2(np.log(y), resid),
        residuals=resid, n_points=len(resid), x=x, y=y, level=level, boot_params=boot, n_boot_failed=failed, **rest,
    )


def fit_power(x, y, *, n_boot: int = 0, seed: int = 0, level: float = 0.95, sigma=None) -> PowerFit:
    x, y = _xy(x, y)
    sigma = _sigma(sigma, len(x))
    lx, ly = np.log(x), np.log(y)
    la, b = _ols(lx, ly, sigma)
    resid = ly - (la - b * lx)

    def one(idx):
        if len(np.unique(lx[idx])) < 2:
            return None
        la_i, b_i = _ols(lx[idx], ly[idx], None if sigma is None else sigma[idx])
        return np.array([np.exp(la_i), b_i])

    boot, failed = bootstrap_samples(one, len(x), n_boot, seed)
    w = 1.0 if sigma is None else 1.0 / sigma**2
    fit = _power_fit("power", {"a": np.exp(la), "b": b}, x, y, resid, boot, failed, level,
                     loss=float(np.sum(w * resid**2)), sigma=sigma)
    if boot is None:
        # Without a bootstrap the t intervals of the (weighted) log-log regression stand in.
        fit.ci = _ols_ci(lx, ly, la, b, level) if sigma is None else _wald_ci(fit)
        fit.ci_method = "ols-t"
    return fit


def _wald_ci(fit: PowerFit) -> dict[str, tuple[float, float]]:
    from clipscale.scaling.intervals import param_intervals

    return param_intervals(fit)


def _ols_ci(lx, ly, la, b, level):
    """Classical t intervals for the log-log regression, used when there is no bootstrap."""
    n = len(lx)
    if n <= 2:
        return {"a": (float("nan"),) * 2, "b": (float("nan"),) * 2}
    res = stats.linregress(lx, ly)
    t = stats.t.ppf(0.5 + level / 2.0, n - 2)
    return {
        "a": (float(np.exp(la - t * res.intercept_stderr)), float(np.exp(la + t * res.intercept_stderr))),
        "b": (float(b - t * res.stderr), float(b + t * res.stderr)),
    }


# ---------------------------------------------------------------- saturating


def _sat_loss_grad(theta, lu, ly, delta, w=1.0):
    """Huber loss of log y - log(E_inf + exp(la) u^-b), u = x / x_ref, weighted by w, and its gradient."""
    e_inf, la, b = theta
    pw = np.exp(la - b * lu)  # a' u^-b, kept in log form so extreme b cannot overflow
    pred = e_inf + pw
    r = ly - np.log(pred)
    g = -w * huber_grad(r, delta) / pred  # d loss / d pred
    grad = np.array([g.sum(), (g * pw).sum(), -(g * pw * lu).sum()])
    return float((w * huber(r, delta)).sum()), grad


# (fraction of min(y) for E_inf, b): the first few are spread out on purpose, so that the
# short start lists used for bootstrap replicates still span both parameters.
_SAT_GRID = [(0.0, 0.1), (0.5, 0.5), (0.9, 0.03), (0.75, 1.0)] + [
    (f, b) for f in (0.0, 0.25, 0.5, 0.75, 0.9) for b in (0.03, 0.1, 0.5, 1.0)
    if (f, b) not in {(0.0, 0.1), (0.5, 0.5), (0.9, 0.03), (0.75, 1.0)}
]


def _sat_starts(lu, y, n_starts):
    ymin = y.min()
    starts = []
    for frac, b in _SAT_GRID[:n_starts]:
        e = frac * ymin
        # Choose log a' so the start passes through the data on average.
        la = float(np.mean(np.log(np.maximum(y - e, 1e-12 * ymin)) + b * lu))
        starts.append((e, la, b))
    return starts


def _sat_fit_theta(lu, y, delta, n_starts=20, extra_starts=(), w=1.0):
    ly = np.log(y)
    bounds = [(0.0, float(y.min())), (-60.0, 60.0), (1e-4, 5.0)]
    lo, hi = np.array(bounds).T

    def minimize_from(x0):
        return optimize.minimize(
            _sat_loss_grad, np.clip(x0, lo, hi), args=(lu, ly, delta, w), jac=True, method="L-BFGS-B",
            bounds=bounds, options={"ftol": 1e-13, "gtol": 1e-11, "maxiter": 1000},
        )

    return best_of(minimize_from, [*extra_starts, *_sat_starts(lu, y, n_starts)])


def fit_saturating(
    x,
    y,
    *,
    n_boot: int = 0,
    seed: int = 0,
    level: float = 0.95,
    huber_delta: float = SATURATING_HUBER_DELTA,
    n_starts: int = 20,
    sigma=None,
) -> PowerFit:
    x, y = _xy(x, y)
    require_points(len(x), 3, "saturating form")
    sigma = _sigma(sigma, len(x))
    # Weights relative to their mean, so that huber_delta keeps its meaning in log units.
    w = np.ones(len(x)) if sigma is None else (1.0 / sigma**2) / np.mean(1.0 / sigma**2)
    # Work with u = x / x_ref so a' is O(1) whatever the units of compute (FLOPs ~1e20).
    lx_ref = float(np.mean(np.log(x)))
    lu = np.log(x) - lx_ref
    with single_thread_blas():
        theta, fun = _sat_fit_theta(lu, y, huber_delta, n_starts, w=w)

    def to_params(t):
        e_inf, la, b = t
        return np.array([np.exp(la + b * lx_ref), b, e_inf])

    def one(idx):
        # A resample with only 3 distinct x is interpolated exactly by the 3 parameters; it
        # says nothing about fit uncertainty and its optimum is a flat ridge, so skip it.
        if len(np.unique(lu[idx])) < 4:
            return None
        # The full-data optimum is an excellent start for a replicate; one grid start more
        # catches a replicate whose optimum moved to another basin (on test ladders, 300 of
        # 300 replicates matched the optimum found from all 20 starts).
        t, _ = _sat_fit_theta(lu[idx], y[idx], huber_delta, n_starts=1, extra_starts=[theta], w=w[idx])
        return to_params(t)

    boot, failed = bootstrap_samples(one, len(x), n_boot, seed)
    a, b, e_inf = to_params(theta)
    resid = np.log(y) - np.log(e_inf + a * x ** (-b))
    return _power_fit("saturating", {"a": a, "b": b, "E_inf": e_inf}, x, y, resid, boot, failed, level, loss=fun,
                      sigma=sigma)


# ---------------------------------------------------------------- frontier


def frontier_mask(x, y) -> np.ndarray:
    """True for runs with lower y than every run of strictly smaller x."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    mask = np.zeros(len(x), dtype=bool)
    best_cheaper = np.inf
    # Runs at the same x are not cheaper than one another, so a whole x-group is judged
    # against the groups before it before the running minimum is updated.
    for xv in np.unique(x):
        group = x == xv
        mask[group] = y[group] < best_cheaper
        best_cheaper = min(best_cheaper, float(y[group].min()))
    return mask


def fit_frontier(x, y, *, n_boot: int = 0, seed: int = 0, level: float = 0.95) -> PowerFit:
    x, y = _xy(x, y)
    mask = frontier_mask(x, y)
    if len(np.unique(x[mask])) < 2:
        raise ValueError("the compute-efficient frontier has fewer than 2 distinct x values: error never falls with compute")
    base = fit_power(x[mask], y[mask], level=level)

    def one(idx):
        xi, yi = x[idx], y[idx]
        m = frontier_mask(xi, yi)
        if len(np.unique(xi[m])) < 2:
            return None
        la, b = _ols(np.log(xi[m]), np.log(yi[m]))
        return np.array([np.exp(la), b])

    boot, failed = bootstrap_samples(one, len(x), n_boot, seed)
    if boot is not None:
        base.ci, base.ci_method = percentile_ci(boot, ["a", "b"], level), "bootstrap"
    base.form = "frontier"
    # x, y keep every run so that plots can show the dominated ones; the mask says which
    # were fitted (n_points and residuals count only those).
    base.x, base.y = x, y
    base.boot_params, base.n_boot_failed, base.frontier_mask = boot, failed, mask
    return base


# ---------------------------------------------------------------- dispatch and hold-out

# form -> fit function; clipscale.scaling.law adds the joint fit to these.
FITTERS = {"power": fit_power, "saturating": fit_saturating, "frontier": fit_frontier}


def fit_curve(x, y, form: str = "power", **kw) -> PowerFit:
    """Fit one of FORMS; keyword arguments go to that form's fit function."""
    if form not in FITTERS:
        raise ValueError(f"unknown form {form!r}; expected one of {', '.join(FORMS)}")
    return FITTERS[form](x, y, **kw)


def holdout_split(x, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, test) indices: test the k largest x, train the rest."""
    if k < 1:
        raise ValueError(f"holdout k must be >= 1; got {k}")
    order = np.argsort(np.asarray(x, dtype=float), kind="stable")
    return order[: len(order) - k], order[len(order) - k :]


def holdout(x, y, k: int, form: str = "power", labels=None, sigma=None, **kw) -> HoldoutResult:
    """Fit on all but the k largest-x points and predict those (an out-of-sample check).

    Returns per held-out point the prediction, the truth, absolute and relative error, with
    n_boot > 0 the bootstrap interval of the curve (lo, hi), and the 95% prediction interval
    for a measurement there (pi_lo, pi_hi; clipscale.scaling.intervals). sigma, one per
    point, are log-space standard errors: the training points' weight the fit, the held-out
    points' are their measurement noise in the interval.
    """
    def fitter(xt, yt, st):
        return fit_curve(xt, yt, form, **kw, **({} if st is None else {"sigma": st}))

    return holdout_with(fitter, x, y, k, labels=labels, sigma=sigma)


def holdout_with(fitter, x, y, k: int, labels=None, sigma=None) -> HoldoutResult:
    """holdout with any fitter(x_train, y_train, sigma_train or None) -> PowerFit."""
    from clipscale.scaling.intervals import prediction_interval

    x, y = _xy(x, y)
    sigma = _sigma(sigma, len(x))
    train, test = holdout_split(x, k)
    if len(np.unique(x[train])) < 2:
        raise ValueError(f"holding out {k} of {len(x)} points leaves fewer than 2 distinct x values to fit")
    fit = fitter(x[train], y[train], None if sigma is None else sigma[train])
    pred = fit.predict(x[test])
    lo, hi = fit.predict_interval(x[test])
    _, pi_lo, pi_hi = prediction_interval(fit, x[test], sigma_new=None if sigma is None else sigma[test])
    points = [
        HoldoutPoint(
            x=float(x[i]),
            actual=float(y[i]),
            predicted=float(p),
            abs_error=float(abs(p - y[i])),
            rel_error=float(abs(p - y[i]) / y[i]),
            lo=float(l_),
            hi=float(h_),
            label=None if labels is None else str(np.asarray(labels)[i]),
            pi_lo=float(pl),
            pi_hi=float(ph),
        )
        for i, p, l_, h_, pl, ph in zip(test, pred, lo, hi, pi_lo, pi_hi)
    ]
    return HoldoutResult(k=k, fit=fit, points=points)
