"""Scaling-law fits for a ladder: how zero-shot error falls with compute.

    fit_law, ScalingLaw                                  every form behind one interface (fit, predict, params, CI)
    fit_power, fit_saturating, fit_frontier, fit_curve   error = a * C^-b (+ E_inf)
    holdout                                              fit without the largest rungs, predict them
    fit_joint                                            L(N, D) = E + A/N^alpha + B/D^beta
    load_runs, load_csv                                  inputs from MLflow or a CSV
    plot_fit, plot_effective_robustness                  PNG + SVG figures

Plotting is imported on first use so that fitting does not pull in matplotlib.
"""

from clipscale.scaling.fits import FORMS, fit_curve, fit_frontier, fit_power, fit_saturating, frontier_mask, holdout
from clipscale.scaling.joint import fit_joint, fit_joint_baseline, hoffmann_grid, joint_objective
from clipscale.scaling.law import LAWS, ScalingLaw, fit_law
from clipscale.scaling.mlflow_io import ScalingInputError, default_task, load_csv, load_runs, task_column, tasks
from clipscale.scaling.results import HoldoutPoint, HoldoutResult, JointFit, LawFit, PowerFit

__all__ = [
    "FORMS",
    "HoldoutPoint",
    "HoldoutResult",
    "JointFit",
    "LAWS",
    "LawFit",
    "PowerFit",
    "ScalingInputError",
    "ScalingLaw",
    "default_task",
    "fit_curve",
    "fit_frontier",
    "fit_joint",
    "fit_joint_baseline",
    "fit_law",
    "fit_power",
    "fit_saturating",
    "frontier_mask",
    "hoffmann_grid",
    "holdout",
    "joint_objective",
    "load_csv",
    "load_runs",
    "plot_effective_robustness",
    "plot_fit",
    "task_column",
    "tasks",
]


def __getattr__(name):
    if name in ("plot_fit", "plot_effective_robustness"):
        from clipscale.scaling import plots

        return getattr(plots, name)
    raise AttributeError(f"module 'clipscale.scaling' has no attribute {name!r}")
