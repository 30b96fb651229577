"""Near-chance rungs: a zero-shot error within noise of 1 - 1/K says nothing about scaling.

A rung that has not learned a task sits at the chance error whatever its compute, so a
power law through it fits noise (issue: shape, count and digits stay at chance on every
tiny rung). Such a rung is flagged, left out of that task's power-law fit, and named on
the parent run. "Within noise" is z standard errors of the chance error, the larger of:
the rung's seed standard error, and the binomial standard error of a chance-level top-1
on an eval set of n_eval images, sqrt(p (1 - p) / n_eval) with p = 1/K.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from clipscale.names import zeroshot
from clipscale.scaling.replicates import se_column

Z_NEAR_CHANCE = 2.0  # ~95% two-sided: a rung must beat chance by more than this to count


@dataclass
class ChanceCheck:
    task: str
    chance_error: np.ndarray  # 1 - 1/K per rung (NaN where the run logged no chance level)
    noise: np.ndarray  # the standard error used per rung
    near: np.ndarray  # True: within z * noise of the chance error (or worse)
    rungs: list[str] = field(default_factory=list)  # the flagged rungs' names


def near_chance(df: pd.DataFrame, task: str, n_eval: int | None = None, z: float = Z_NEAR_CHANCE) -> ChanceCheck:
    """Flag df's rungs whose `zeroshot/<task>/error` is within noise of chance.

    Needs `zeroshot/<task>/chance` (= 1/K, logged with every zero-shot result); without it
    nothing is flagged. n_eval is the eval set's size (`eval.n_per_task`), else a
    `zeroshot/<task>/n` column; without either, only the seed spread counts.
    """
    err = df[zeroshot(task, "error")].to_numpy(float)
    chance_col = zeroshot(task, "chance")
    p = df[chance_col].to_numpy(float) if chance_col in df.columns else np.full(len(df), np.nan)
    n_col = zeroshot(task, "n")
    n = df[n_col].to_numpy(float) if n_col in df.columns else np.full(len(df), np.nan if n_eval is None else float(n_eval))
    binom = np.where(np.isfinite(n) & (n > 0), np.sqrt(p * (1 - p) / np.where(n > 0, n, 1.0)), 0.0)
    se_name = se_column(zeroshot(task, "error"))
    seed_se = df[se_name].to_numpy(float) if se_name in df.columns else np.zeros(len(df))
    noise = np.fmax(np.nan_to_num(binom), np.nan_to_num(seed_se))
    chance_error = 1.0 - p
    near = np.isfinite(chance_error) & (err >= chance_error - z * noise)
    return ChanceCheck(task=task, chance_error=chance_error, noise=noise, near=near,
                       rungs=[str(r) for r, f in zip(df["rung"], near) if f])
