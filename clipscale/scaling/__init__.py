"""Scaling-law fits for a ladder: how zero-shot error falls with compute.

    fit_law, ScalingLaw                                  every form behind one interface (fit, predict, params, CI)
    fit_power, fit_saturating, fit_frontier, fit_curve   error = a * C^-b (+ E_inf)
    holdout                                              fit without the largest rungs, predict them
    fit_joint                                            L(N, D) = E + A/N^alpha + B/D^beta
    fit_loss_law                                         val loss: saturating vs power, chosen by a stated rule
    prediction_interval                                  where the next measurement falls (scatter included)
    fit_error_vs_loss, two_step                          OLMo's two-step error prediction
    near_chance                                          rungs within noise of chance, left out of error fits
    load_runs, load_histories, load_csv                  inputs from MLflow (rungs grouped over seeds) or a CSV
    plot_fit, plot_loss_curves, plot_effective_robustness   PNG + SVG figures

Plotting is imported on first use so that fitting does not pull in matplotlib.
"""

from clipscale.scaling.fits import FORMS, fit_curve, fit_frontier, fit_power, fit_saturating, frontier_mask, holdout
from clipscale.scaling.joint import fit_joint, fit_joint_baseline, hoffmann_grid, joint_objective
from clipscale.scaling.law import LAWS, ScalingLaw, fit_law
from clipscale.scaling.analysis import TargetFit, fit_task_error, fit_val_loss, two_step
from clipscale.scaling.chance import near_chance
from clipscale.scaling.intervals import prediction_interval
from clipscale.scaling.loss_law import LossLaw, fit_loss_law
from clipscale.scaling.mlflow_io import (
    ScalingInputError, default_task, load_csv, load_histories, load_references, load_runs, references_against, task_column, tasks,
)
from clipscale.scaling.replicates import group_by_rung, log_noise, sd_column, se_column
from clipscale.scaling.twostep import TwoStepPrediction, fit_error_vs_loss
from clipscale.scaling.results import HoldoutPoint, HoldoutResult, JointFit, LawFit, PowerFit

__all__ = [
    "load_references",
    "references_against",
    "FORMS",
    "HoldoutPoint",
    "HoldoutResult",
    "JointFit",
    "LAWS",
    "LawFit",
    "LossLaw",
    "TargetFit",
    "TwoStepPrediction",
    "PowerFit",
    "ScalingInputError",
    "ScalingLaw",
    "default_task",
    "fit_curve",
    "fit_error_vs_loss",
    "fit_frontier",
    "fit_joint",
    "fit_joint_baseline",
    "fit_law",
    "fit_loss_law",
    "fit_task_error",
    "fit_val_loss",
    "group_by_rung",
    "fit_power",
    "fit_saturating",
    "frontier_mask",
    "hoffmann_grid",
    "holdout",
    "joint_objective",
    "load_csv",
    "load_histories",
    "load_runs",
    "log_noise",
    "near_chance",
    "plot_effective_robustness",
    "plot_fit",
    "plot_loss_curves",
    "prediction_interval",
    "sd_column",
    "se_column",
    "task_column",
    "tasks",
    "two_step",
]


def __getattr__(name):
    if name in ("plot_fit", "plot_effective_robustness", "plot_loss_curves"):
        from clipscale.scaling import plots

        return getattr(plots, name)
    raise AttributeError(f"module 'clipscale.scaling' has no attribute {name!r}")
