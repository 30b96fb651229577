"""Two ladders compared by their laws: which procedure is better at the compute you can afford.

The answer is the compute multiplier at the largest compute ladder B measured, C_B:

    multiplier = C_A(y_B) / C_B,   y_B = law_B(C_B),   C_A(y) = law_A^-1(y)

i.e. how many times C_B ladder A needs to reach the error (or loss) B's law gives at C_B. It is
2 when A needs twice the compute, below 1 when A is the cheaper procedure. This is how Cherti et
al. (2023, sec. 4) read LAION against WIT and Zhai et al. (2023) SigLIP against softmax CLIP:
by the laws, not by single runs.

Its interval pairs the two fits' bootstrap draws (each ladder's rungs resampled on their own)
and takes percentiles of the multiplier over the pairs. Where the laws cross inside, or within a
decade of, the measured range, the crossover compute is reported too: the answer flips there.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from clipscale.scaling.results import PowerFit, _clean

NEAR = 10.0  # crossovers up to a decade outside the measured compute are "near" it


@dataclass
class Comparison:
    names: tuple[str, str]
    fits: tuple[PowerFit, PowerFit]
    at_compute: float  # C_B: the largest compute ladder B measured
    target: float  # law_B(C_B): the value ladder A has to reach
    multiplier: float
    multiplier_ci: tuple[float, float]
    level: float
    n_pairs: int  # bootstrap pairs behind the interval
    crossovers: list[float] = field(default_factory=list)

    def to_dict(self) -> dict:
        return _clean({
            "a": self.names[0], "b": self.names[1], "at_compute": self.at_compute, "target": self.target,
            "multiplier": self.multiplier, "multiplier_ci": list(self.multiplier_ci), "level": self.level,
            "n_pairs": self.n_pairs, "crossovers": list(self.crossovers),
            "fits": {name: fit.to_dict() for name, fit in zip(self.names, self.fits)},
        })


def compute_to_reach(params: dict, value) -> np.ndarray:
    """x at which value = E_inf + a x^-b (E_inf 0 for a plain power law); inf where the law never
    gets that low (value at or below E_inf)."""
    value = np.asarray(value, dtype=float)
    gap = value - params.get("E_inf", 0.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        x = np.power(gap / params["a"], -1.0 / params["b"])
    return np.where(gap > 0, x, np.inf)


def _draws(fit: PowerFit) -> list[dict]:
    if fit.boot_params is None:
        return []
    return [dict(zip(fit.param_names, row)) for row in fit.boot_params]


def multiplier(params_a: dict, params_b: dict, at: float) -> float:
    """C_A(law_B(at)) / at for two laws given by their parameters."""
    target = PowerFit.curve(at, params_b["a"], params_b["b"], params_b.get("E_inf", 0.0))
    return float(compute_to_reach(params_a, target) / at)


def crossovers(fit_a: PowerFit, fit_b: PowerFit) -> list[float]:
    """Computes where the two laws are equal, within a decade of the measured range."""
    from scipy.optimize import brentq

    xs = np.concatenate([fit_a.fitted_x, fit_b.fitted_x])
    lo, hi = math.log(xs.min() / NEAR), math.log(xs.max() * NEAR)

    def gap(lx: float) -> float:
        x = math.exp(lx)
        return math.log(float(fit_a.predict([x])[0])) - math.log(float(fit_b.predict([x])[0]))

    grid = np.linspace(lo, hi, 400)
    values = np.array([gap(g) for g in grid])
    roots = []
    for i in np.flatnonzero(np.sign(values[:-1]) * np.sign(values[1:]) < 0):
        roots.append(math.exp(brentq(gap, grid[i], grid[i + 1])))
    return roots


def compare_fits(fit_a: PowerFit, fit_b: PowerFit, names: tuple[str, str] = ("A", "B"),
                 level: float = 0.95) -> Comparison:
    """Compare two fitted laws (power or saturating, fitted on their own ladders)."""
    at = float(fit_b.fitted_x.max())
    target = float(fit_b.predict([at])[0])
    point = multiplier(fit_a.params, fit_b.params, at)
    pairs = [multiplier(a, b, at) for a, b in zip(_draws(fit_a), _draws(fit_b))]
    ci = (float("nan"), float("nan"))
    if pairs:
        # Infinite draws (A's law flattening above B's value) are real outcomes, not failures:
        # they stay in, so an upper bound of inf says "maybe never"; order statistics (no
        # interpolation) keep inf - inf out of the bounds.
        q = (1 - level) / 2
        ci = tuple(float(np.quantile(pairs, p, method="inverted_cdf")) for p in (q, 1 - q))
    return Comparison(names=names, fits=(fit_a, fit_b), at_compute=at, target=target, multiplier=point,
                      multiplier_ci=ci, level=level, n_pairs=len(pairs), crossovers=crossovers(fit_a, fit_b))
