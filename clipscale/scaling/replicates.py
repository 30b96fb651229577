"""Replicate seeds: one row per rung from several runs, and the noise each rung's mean carries.

A ladder with `ladder.seeds` trains every rung several times with different init and
data-order seeds; each replicate is a child run tagged `clipscale.seed`. The fits use one
point per rung, the mean over its seeds, weighted by the mean's standard error. Seed noise
is close to multiplicative (small rungs scatter more in absolute terms), so the weights are
built in log space: the relative spread sd/mean is pooled over the replicated rungs, and a
rung trained once takes the pooled value.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import numpy as np
import pandas as pd

from clipscale.names import TAG_SEED as SEED_TAG

DEFAULT_SEED = "0"  # runs from before replicates carry no seed tag: they were seed 0
_TARGET_RE = re.compile(r"^(val/loss|zeroshot/.+/(error|top1))$")
# Columns that identify a run rather than measure it: joined, not averaged, over seeds.
ID_COLUMNS = ("rung", "seed", "run_id", "parent_run_id", "config_hash", "start_time")
# Pseudo-degrees of freedom of the pooled variance when a rung's own spread is shrunk
# towards it: two seeds give a single degree of freedom, too few to trust their spread alone.
PRIOR_DF = 2.0


def is_target(column: str) -> bool:
    """A quantity a law is fitted to: `val/loss` or a task's zero-shot error/top-1."""
    return bool(_TARGET_RE.match(str(column)))


def sd_column(column: str) -> str:
    """The column holding the seed standard deviation of column (NaN for one seed)."""
    return f"{column}:sd"


def se_column(column: str) -> str:
    """The column holding the standard error of column's mean over seeds (NaN for one seed)."""
    return f"{column}:se"


def _seed_key(seed: str):
    return (0, int(seed), "") if str(seed).lstrip("-").isdigit() else (1, 0, str(seed))


def group_by_rung(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per rung from one row per run (column `seed`): the mean of every numeric
    column, `n_seeds`, `seeds` and `run_id` joined by commas in seed order, and for each
    target column its seed sd and standard error (`<col>:sd`, `<col>:se`)."""
    numeric = [c for c in runs.columns if c not in ID_COLUMNS and pd.api.types.is_numeric_dtype(runs[c])]
    rows = []
    for rung, g in runs.groupby("rung", sort=False):
        g = g.iloc[sorted(range(len(g)), key=lambda i: _seed_key(g["seed"].iloc[i]))]
        row = {"rung": rung, "n_seeds": len(g), "seeds": ",".join(map(str, g["seed"])),
               "run_id": ",".join(g["run_id"]), "start_time": g["start_time"].max()}
        for c in ("parent_run_id", "config_hash", "objective"):
            row[c] = ",".join(dict.fromkeys(str(v) for v in g.get(c, ()) if isinstance(v, str))) or None
        for c in numeric:
            vals = g[c].dropna()
            row[c] = float(vals.mean()) if len(vals) else float("nan")
            if is_target(c):
                sd = float(vals.std(ddof=1)) if len(vals) >= 2 else float("nan")
                row[sd_column(c)] = sd
                row[se_column(c)] = sd / math.sqrt(len(vals)) if len(vals) >= 2 else float("nan")
        rows.append(row)
    return pd.DataFrame(rows)


def seed_sd(df: pd.DataFrame, column: str) -> dict[str, float]:
    """{rung: seed sd of column} for every rung with at least two seeds."""
    sd = sd_column(column)
    if sd not in df.columns:
        return {}
    return {str(r): float(v) for r, v in zip(df["rung"], df[sd]) if np.isfinite(v)}


@dataclass
class RungNoise:
    """Log-space noise of each rung's mean, for weighting the fits.

    sd_log is each rung's per-seed spread (relative: sd / mean), its own shrunk towards
    the pooled value, or the pooled value for a rung trained once; se_log = sd_log /
    sqrt(n_seeds) is the standard error of log(mean) that weights the fit.
    """

    sd_log: np.ndarray
    se_log: np.ndarray
    pooled_sd_log: float
    n_seeds: np.ndarray


def log_noise(mean, sd, n_seeds, prior_df: float = PRIOR_DF) -> RungNoise | None:
    """The log-space noise of each rung's mean (delta method: sd(log y) ~ sd / mean).

    None when no rung has two seeds or every replicate agreed exactly: then there is no
    spread to weight by, and the fits stay unweighted as for a single-seed ladder.
    """
    mean, sd = np.asarray(mean, dtype=float), np.asarray(sd, dtype=float)
    n = np.asarray(n_seeds, dtype=float)
    rep = (n >= 2) & np.isfinite(sd) & (mean > 0)
    if not rep.any():
        return None
    cv2 = np.where(rep, (np.where(rep, sd, 0.0) / np.where(rep, mean, 1.0)) ** 2, 0.0)
    dof = np.where(rep, n - 1.0, 0.0)
    pooled2 = float(np.sum(dof * cv2) / np.sum(dof))
    if pooled2 <= 0:
        return None
    # A rung's own spread from 2-3 seeds is a noisy estimate; shrinking it towards the
    # pooled value keeps one lucky pair of identical seeds from taking all the weight.
    own2 = (dof * cv2 + prior_df * pooled2) / (dof + prior_df)
    sd_log = np.sqrt(np.where(rep, own2, pooled2))
    return RungNoise(sd_log=sd_log, se_log=sd_log / np.sqrt(np.maximum(n, 1.0)),
                     pooled_sd_log=math.sqrt(pooled2), n_seeds=n)
