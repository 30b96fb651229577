"""A ladder's laws from its rungs (load_runs' frame): what the live report logs and plots.

    val_loss    the loss law (saturating or power, loss_law.RULE), weighted by the seeds'
                standard errors, and the held-out top rung predicted with a 95% prediction
                interval (clipscale.scaling.intervals)
    <task>      zero-shot error = a C^-b over the rungs that beat chance (chance.py), with
                the same hold-out check
    two-step    the held-out rung's error from its predicted loss (twostep.py)

No MLflow here: clipscale.report reads the runs, calls these and logs `metrics(...)`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from clipscale.names import zeroshot
from clipscale.scaling.chance import ChanceCheck, near_chance
from clipscale.scaling.fits import fit_power, holdout_with
from clipscale.scaling.loss_law import LossLaw, fit_loss_law, loss_law_fitter
from clipscale.scaling.numerics import spans
from clipscale.scaling.replicates import log_noise, sd_column, seed_sd
from clipscale.scaling.results import HoldoutResult, PowerFit
from clipscale.scaling.twostep import DEFAULT_ERROR_FLOOR, TwoStepPrediction, fit_error_vs_loss, propagate

VAL_LOSS = "val_loss"
VAL_LOSS_COLUMN = "val/loss"


@dataclass
class TargetFit:
    """One target's law over the rungs it could use, and its hold-out check.

    name is `val_loss` or the task; rows are the df rows fitted (in df order), with x, y
    and the seed sd (yerr, NaN for one seed) for plots. skipped names rungs left out (near
    chance) and why.
    """

    name: str
    column: str
    law: PowerFit
    holdout: HoldoutResult | None
    rows: np.ndarray
    labels: np.ndarray
    x: np.ndarray
    y: np.ndarray
    yerr: np.ndarray
    seed_sd: dict[str, float]
    loss_law: LossLaw | None = None
    chance: ChanceCheck | None = None
    skipped: list[str] = field(default_factory=list)

    @property
    def top(self):
        """The held-out point at the largest compute, or None."""
        return max(self.holdout.points, key=lambda p: p.x) if self.holdout else None


def _usable(df: pd.DataFrame, x: str, column: str) -> np.ndarray:
    vals = df[[x, column]].apply(pd.to_numeric, errors="coerce")
    return (vals.notna().all(axis=1) & (vals > 0).all(axis=1)).to_numpy()


def _sigma(df: pd.DataFrame, column: str) -> np.ndarray | None:
    sd = df[sd_column(column)] if sd_column(column) in df.columns else np.full(len(df), np.nan)
    noise = log_noise(df[column], sd, df["n_seeds"] if "n_seeds" in df.columns else np.ones(len(df)))
    return None if noise is None else noise.se_log


def _holdout(df: pd.DataFrame, x: str, column: str, k: int, fitter) -> HoldoutResult | None:
    if not k or len(df) - k < 2:
        return None
    # The held-out rungs' seed spread enters the pooled noise (it is measurement noise the
    # interval must cover); their mean, the value predicted, does not enter the fit.
    return holdout_with(fitter, df[x].to_numpy(float), df[column].to_numpy(float), k,
                        labels=df["rung"].astype(str).to_numpy(), sigma=_sigma(df, column))


def _target(name, column, df, x, law, held, spread=None, **kw) -> TargetFit:
    sd = df[sd_column(column)].to_numpy(float) if sd_column(column) in df.columns else np.full(len(df), np.nan)
    return TargetFit(name=name, column=column, law=law, holdout=held, rows=df.index.to_numpy(),
                     labels=df["rung"].astype(str).to_numpy(), x=df[x].to_numpy(float), y=df[column].to_numpy(float),
                     yerr=sd, seed_sd=seed_sd(df, column) if spread is None else spread, **kw)


def fit_val_loss(df: pd.DataFrame, x: str = "flops", holdout_k: int = 1, bootstrap: int = 0,
                 n_starts: int = 20) -> TargetFit | None:
    """The loss law over every rung with a `val/loss`; None unless they span more than one compute."""
    if VAL_LOSS_COLUMN not in df.columns:
        return None
    sub = df[_usable(df, x, VAL_LOSS_COLUMN)]
    if not spans(sub[x]):
        return None
    law = fit_loss_law(sub[x].to_numpy(float), sub[VAL_LOSS_COLUMN].to_numpy(float), sigma=_sigma(sub, VAL_LOSS_COLUMN),
                       n_boot=bootstrap, n_starts=n_starts)
    held = _holdout(sub, x, VAL_LOSS_COLUMN, holdout_k, loss_law_fitter(n_starts))
    return _target(VAL_LOSS, VAL_LOSS_COLUMN, sub, x, law.fit, held, loss_law=law)


def fit_task_error(df: pd.DataFrame, task: str, x: str = "flops", holdout_k: int = 1, bootstrap: int = 0,
                   n_eval: int | None = None) -> TargetFit | None:
    """error = a C^-b over the rungs above chance; None unless they span more than one compute."""
    column = zeroshot(task, "error")
    if column not in df.columns:
        return None
    sub = df[_usable(df, x, column)]
    chance = near_chance(sub, task, n_eval)
    kept = sub[~chance.near]
    if not spans(kept[x]):
        # Too few rungs above chance to fit: fit them all rather than nothing; the near-chance
        # rungs are still named on the parent run, so the reader knows what this fit is worth.
        kept = sub
    if not spans(kept[x]):
        return None
    law = fit_power(kept[x].to_numpy(float), kept[column].to_numpy(float), sigma=_sigma(kept, column),
                    n_boot=bootstrap, seed=0)

    def fitter(xt, yt, st):
        return fit_power(xt, yt, sigma=st, n_boot=bootstrap, seed=0)

    held = _holdout(kept, x, column, holdout_k, fitter)
    # The seed spread is reported for every replicated rung, near chance or not.
    return _target(task, column, kept, x, law, held, chance=chance, spread=seed_sd(sub, column),
                   skipped=[f"{r} (near chance)" for r in chance.rungs if r not in set(kept["rung"])])


def two_step(df: pd.DataFrame, loss: TargetFit, task: str, histories: pd.DataFrame | None = None,
             level: float = 0.95, floor_error: float | None = DEFAULT_ERROR_FLOOR) -> TwoStepPrediction | None:
    """The top held-out rung's error from its loss predicted by loss.holdout's law (step 1)
    and a sigmoid of error in loss fitted on the other rungs (step 2); None without a
    hold-out, the task's error, or enough (loss, error) points. floor_error is the sigmoid's
    floor (scaling.error_floor; None fits it, see clipscale.scaling.twostep)."""
    column = zeroshot(task, "error")
    top = loss.top if loss is not None else None
    if top is None or column not in df.columns:
        return None
    held = {p.label for p in loss.holdout.points}
    train = df[~df["rung"].astype(str).isin(held) & df[VAL_LOSS_COLUMN].notna() & df[column].notna()]
    pairs_l, pairs_e = list(train[VAL_LOSS_COLUMN]), list(train[column])
    step_col = f"val/zeroshot/{task}/top1"
    if histories is not None and step_col in histories.columns:
        h = histories[~histories["rung"].astype(str).isin(held)].dropna(subset=[VAL_LOSS_COLUMN, step_col])
        pairs_l += list(h[VAL_LOSS_COLUMN])
        pairs_e += list(1.0 - h[step_col])
    chance_col = zeroshot(task, "chance")
    chance_error = 1.0 - float(df[chance_col].mean()) if chance_col in df.columns else None
    try:
        sig = fit_error_vs_loss(pairs_l, pairs_e, chance_error, floor_error)
    except ValueError:
        return None
    actual = df.loc[df["rung"].astype(str) == top.label, column]
    # A rung's final error scatters about the sigmoid more than the smooth in-training pairs
    # that dominate its fit (eval noise, seeds): the larger of the two scatters counts.
    final_resid = np.asarray(train[column]) - sig.predict(train[VAL_LOSS_COLUMN])
    scatter = max(sig.resid_sd, float(np.sqrt(np.mean(final_resid**2))) if len(final_resid) else 0.0)
    lo, hi = propagate(sig, top.predicted, top.pi_lo, top.pi_hi, level, scatter=scatter)
    return TwoStepPrediction(rung=top.label, compute=top.x, loss_pred=top.predicted, loss_lo=top.pi_lo,
                             loss_hi=top.pi_hi, error_pred=float(sig.predict(top.predicted)), error_lo=lo,
                             error_hi=hi, error_actual=float(actual.iloc[0]) if len(actual) else float("nan"),
                             sigmoid=sig)
