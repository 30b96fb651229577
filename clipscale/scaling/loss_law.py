"""The validation-loss law: L = E + a C^-b against the plain power a C^-b, and which to use.

Loss has a floor (the entropy the model can never remove, and for a contrastive loss the
batch's own ambiguity), so the saturating law is the physically right form (Kaplan et al.
2020; Hoffmann et al. 2022). On a short ladder the floor is often not identifiable: the
data bend too little to tell E from a smaller exponent, and E lands on a bound or with an
interval that reaches 0. The rule, stated once here and reported with the fit:

    the saturating law when E is identifiable -- estimated strictly inside (0, min L) with
    a 95% interval that excludes 0 -- and it fits better by AICc (which charges its extra
    parameter); otherwise the power law.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from clipscale.scaling.fits import fit_power, fit_saturating
from clipscale.scaling.intervals import param_intervals
from clipscale.scaling.results import PowerFit

RULE = "saturating when E is identifiable (inside (0, min L), 95% CI excludes 0) and AICc is lower; else power"


@dataclass
class LossLaw:
    """Both fits of loss against compute, and the one the rule picked (chosen is power or saturating)."""

    power: PowerFit
    saturating: PowerFit | None
    chosen: str
    reason: str

    @property
    def fit(self) -> PowerFit:
        return self.saturating if self.chosen == "saturating" else self.power

    @property
    def E(self) -> float:  # noqa: N802 - the floor is E in every scaling-law paper
        return float(self.fit.params.get("E_inf", 0.0))

    def to_dict(self) -> dict:
        return {"chosen": self.chosen, "reason": self.reason, "rule": RULE, "power": self.power.to_dict(),
                "saturating": None if self.saturating is None else self.saturating.to_dict()}


def _aicc(fit: PowerFit, k: int) -> float:
    """Small-sample AIC of a least-squares fit in log space (weighted residuals)."""
    n = fit.n_points
    w = 1.0 if fit.sigma is None else 1.0 / fit.sigma**2
    rss = float(np.sum(w * fit.residuals**2))
    if n - k - 1 <= 0 or rss <= 0:
        return float("inf")
    return n * np.log(rss / n) + 2 * k + 2 * k * (k + 1) / (n - k - 1)


def choose(power: PowerFit, sat: PowerFit | None) -> tuple[str, str]:
    """(chosen form, why) by RULE."""
    if sat is None:
        return "power", "too few rungs for the saturating law"
    e, lo = sat.params["E_inf"], param_intervals(sat)["E_inf"][0]
    if not (0 < e < float(np.min(sat.y)) * (1 - 1e-6)) or not np.isfinite(lo) or lo <= 0:
        return "power", f"E not identifiable (E={e:.4g}, 95% CI low {lo:.3g})"
    if _aicc(sat, 3) >= _aicc(power, 2):
        return "power", f"E={e:.4g} identifiable but the saturating law does not fit better (AICc)"
    return "saturating", f"E={e:.4g} identifiable (95% CI low {lo:.3g}), lower AICc"


def fit_loss_law(x, y, *, sigma=None, n_boot: int = 0, seed: int = 0, n_starts: int = 20) -> LossLaw:
    """Fit both laws (the saturating one from 5 rungs up: with 4 it interpolates too
    closely to judge) and choose by RULE. sigma: log-space standard errors, as for the fits;
    n_boot: bootstrap replicates for the power law's intervals."""
    power = fit_power(x, y, sigma=sigma, n_boot=n_boot, seed=seed)
    sat = None
    if len(np.unique(np.asarray(x, dtype=float))) >= 5:
        # Linearised t intervals rather than a bootstrap: resampling 5-8 rungs mostly draws
        # sets that pin E poorly, and each replicate is a multi-start fit (the live report
        # refreshes after every rung on the same CPUs that train).
        sat = fit_saturating(x, y, sigma=sigma, n_starts=n_starts)
        sat.ci, sat.ci_method = param_intervals(sat), "linearised-t"
    chosen, reason = choose(power, sat)
    return LossLaw(power=power, saturating=sat, chosen=chosen, reason=reason)


def loss_law_fitter(n_starts: int = 20):
    """A fitter for fits.holdout_with: the chosen law on the training rungs (no bootstrap)."""

    def fitter(x, y, sigma):
        return fit_loss_law(x, y, sigma=sigma, n_starts=n_starts).fit

    return fitter
