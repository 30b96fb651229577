"""Two-step prediction of a task's error: compute -> loss -> error (OLMo's model ladder).

Bhagia et al. 2024 ("Establishing Task Scaling Laws via Compute-Efficient Model Ladders")
predict a large model's task accuracy from small ones in two fits: the loss from compute,
then the task metric from the loss with a sigmoid, which bends the way task metrics do
near chance and near their best. Here:

    step 1  L(C) = the validation-loss law (clipscale.scaling.loss_law) on the smaller rungs
    step 2  err(L) = floor + (ceiling - floor) / (1 + exp(-k (L - L0)))

ceiling is the task's chance error 1 - 1/K when known (a model no better than chance),
otherwise fitted. floor is the error of a perfect model, DEFAULT_ERROR_FLOOR = 0 unless the
config says otherwise (`scaling.error_floor`; null fits it). A fitted floor is not identified
by a ladder whose smaller rungs are still far from it: it settles at their lowest error, and
the curve then says the held-out rung cannot do better than they did (on the embedded
ladder it put the floor at 0.81 and predicted 0.82 for a top rung that reached 0.75).
Step 2 is fitted on every (val/loss, in-training zero-shot error) pair
the smaller rungs logged during training, plus their final values: many more points than
rungs, as OLMo uses intermediate checkpoints. The interval propagates step 1's
prediction interval through step 2 and adds step 2's residual scatter (Monte Carlo).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import optimize, stats

from clipscale.scaling.numerics import best_of


@dataclass
class SigmoidFit:
    """err(L) = floor + (ceiling - floor) * sigmoid(k (L - L0))."""

    floor: float
    ceiling: float
    k: float
    L0: float  # noqa: N815 - the midpoint loss, as in the paper
    r2: float
    resid_sd: float
    n_points: int
    floor_fixed: bool = False  # the floor was given (scaling.error_floor), not fitted

    @staticmethod
    def curve(loss, floor, ceiling, k, l0):
        return floor + (ceiling - floor) / (1.0 + np.exp(-k * (np.asarray(loss, dtype=float) - l0)))

    def predict(self, loss) -> np.ndarray:
        return self.curve(loss, self.floor, self.ceiling, self.k, self.L0)


DEFAULT_ERROR_FLOOR = 0.0  # a perfect classifier's error: no label noise in a generated eval set


def fit_error_vs_loss(loss, error, chance_error: float | None = None, floor_error: float | None = None) -> SigmoidFit:
    """Least-squares sigmoid of error in loss; k > 0 (error rises with loss). chance_error fixes
    the ceiling and floor_error the floor; either left None (or NaN) is fitted."""
    loss, error = np.asarray(loss, dtype=float), np.asarray(error, dtype=float)
    ok = np.isfinite(loss) & np.isfinite(error)
    loss, error = loss[ok], error[ok]
    top = float(chance_error) if _given(chance_error) else None
    bottom = float(floor_error) if _given(floor_error) else None
    # The free parameters, in the order least_squares sees them; a given floor or ceiling is not one.
    names = ["k", "L0"] + (["floor"] if bottom is None else []) + (["ceiling"] if top is None else [])
    n_par = len(names)
    if len(loss) < n_par + 1:
        raise ValueError(f"the error-from-loss sigmoid needs at least {n_par + 1} (loss, error) points; got {len(loss)}")
    if bottom is not None and top is not None and not bottom < top:
        raise ValueError(f"the error floor ({bottom}) must be below the chance error ({top})")
    span = float(np.ptp(loss)) or 1.0
    cap = top if top is not None else max(float(error.max()), 1e-3)  # a fitted floor stays below the errors' top
    bounds = {"k": (1e-6, 1e3 / span), "L0": (loss.min() - 5 * span, loss.max() + 5 * span),
              "floor": (0.0, cap * (1 - 1e-9)), "ceiling": (float(error.max()), 1.0)}
    lo, hi = ([bounds[n][i] for n in names] for i in (0, 1))
    starts = [[{"k": k / span, "L0": l0, "floor": f * error.min(), "ceiling": cap}[n] for n in names]
              for f in ((0.0, 0.8) if bottom is None else (0.0,)) for k in (2.0, 8.0)
              for l0 in (np.median(loss), loss.max())]

    def unpack(p):
        v = dict(zip(names, p))
        return v.get("floor", bottom), v.get("ceiling", top), v["k"], v["L0"]

    def resid(p):
        return SigmoidFit.curve(loss, *unpack(p)) - error

    def minimize_from(x0):
        res = optimize.least_squares(resid, np.clip(x0, lo, np.array(hi) - 1e-12), bounds=(lo, hi))
        return optimize.OptimizeResult(x=res.x, fun=float(np.sum(res.fun**2)))

    p, sse = best_of(minimize_from, starts)
    floor, ceiling, k, l0 = unpack(p)
    ss_tot = float(np.sum((error - error.mean()) ** 2))
    return SigmoidFit(floor=float(floor), ceiling=float(ceiling), k=float(k), L0=float(l0),
                      r2=1 - sse / ss_tot if ss_tot > 0 else float("nan"),
                      resid_sd=float(np.sqrt(sse / max(len(loss) - n_par, 1))), n_points=int(len(loss)),
                      floor_fixed=bottom is not None)


def _given(value: float | None) -> bool:
    return value is not None and bool(np.isfinite(value))


@dataclass
class TwoStepPrediction:
    rung: str | None
    compute: float
    loss_pred: float
    loss_lo: float
    loss_hi: float
    error_pred: float
    error_lo: float
    error_hi: float
    error_actual: float
    sigmoid: SigmoidFit

    @property
    def abs_error(self) -> float:
        return abs(self.error_pred - self.error_actual)

    def to_dict(self) -> dict:
        d = {k: v for k, v in vars(self).items() if k != "sigmoid"}
        return {**d, "abs_error": self.abs_error, "sigmoid": vars(self.sigmoid).copy()}


def propagate(sig: SigmoidFit, loss_pred: float, loss_lo: float, loss_hi: float, level: float = 0.95,
              n_draws: int = 4000, seed: int = 0, scatter: float | None = None) -> tuple[float, float]:
    """Interval of step 2's error when step 1's loss has the interval (lo, hi) at level.

    The loss interval is symmetric in log space (clipscale.scaling.intervals), so draws
    are log-normal; the scatter of a measured error about the sigmoid (default step 2's
    residual sd) is added and the draws are kept in [0, 1].
    """
    rng = np.random.default_rng(seed)
    z = float(stats.norm.ppf(0.5 + level / 2))
    sd = (np.log(loss_hi) - np.log(loss_lo)) / (2 * z) if np.isfinite([loss_lo, loss_hi]).all() else 0.0
    draws = sig.predict(np.exp(rng.normal(np.log(loss_pred), sd, n_draws))) + rng.normal(0, sig.resid_sd if scatter is None else scatter, n_draws)
    tail = 100 * (1 - level) / 2
    lo, hi = np.percentile(np.clip(draws, 0.0, 1.0), [tail, 100 - tail])
    return float(lo), float(hi)
