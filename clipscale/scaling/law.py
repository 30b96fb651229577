"""One interface for every scaling law clipscale fits: fit, predict, params, CI.

    law = fit_law("saturating", flops, error, n_boot=1000)     # or ("joint_nd", N, D, loss)
    law.params["b"], law.ci["b"]                               # point estimate, interval
    law.predict(1e21); law.predict_interval(1e21)              # the law at new inputs, its band

The shape follows OLMo-core's `ScalingLawModel` (a runtime-checkable protocol that any
fitted law satisfies, allenai/OLMo-core, src/olmo_core/model_ladder/analysis/scaling_laws.py),
with the interval and the goodness of fit that a ladder's report needs alongside it.
Callers that hold a `ScalingLaw` need not know which form they have: the number of
`predict` inputs is the law's (one for error against compute, two for L(N, D)).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol, runtime_checkable

import numpy as np

from clipscale.scaling.fits import FITTERS
from clipscale.scaling.joint import fit_joint


@runtime_checkable
class ScalingLaw(Protocol):
    """A fitted law. params and ci are keyed by param_names; ci holds intervals at level."""

    params: dict[str, float]
    ci: dict[str, tuple[float, float]]
    level: float
    r2: float

    @property
    def param_names(self) -> Sequence[str]: ...

    def predict(self, *inputs) -> np.ndarray: ...

    def predict_interval(self, *inputs, level: float | None = None) -> tuple[np.ndarray, np.ndarray]: ...

    def to_dict(self) -> dict: ...


# form -> fit function taking the input columns, then the target column, then keywords.
LAWS: dict[str, Callable[..., ScalingLaw]] = {**FITTERS, "joint_nd": fit_joint}


def fit_law(form: str, *columns, **kw) -> ScalingLaw:
    """Fit the law named form to columns: (x, y) for power, saturating and frontier,
    (N, D, loss) for joint_nd. Keywords (n_boot, seed, level, ...) go to its fit function."""
    if form not in LAWS:
        raise ValueError(f"unknown form {form!r}; expected one of {', '.join(LAWS)}")
    return LAWS[form](*columns, **kw)
