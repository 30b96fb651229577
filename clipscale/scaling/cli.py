"""`clipscale fit` and `clipscale fit-nd`. Scripts parse this output: keep it stable.

Exit codes: 0 success, 2 bad input (missing file, experiment, task or column), 1 a fit
that could not be computed.
"""

from __future__ import annotations

import json
import sys
import warnings

import numpy as np


def _add_source(p, *, experiment_help: str, task_help: str | None = None, uri_help: str | None = None) -> None:
    """Where the runs come from: a CSV, or a ladder's runs in MLflow."""
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--csv", help="CSV file with one row per run")
    src.add_argument("--experiment", help=experiment_help)
    p.add_argument("--task", help=task_help)
    p.add_argument("--tracking-uri", help=uri_help)
    p.add_argument("--parent-run-id", help="only this ladder invocation's child runs")


def _add_uncertainty(p, *, n_boot: int, boot_help: str) -> None:
    p.add_argument("--bootstrap", type=int, default=n_boot, metavar="N", help=boot_help)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--level", type=float, default=0.95, help="confidence level of the intervals")


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "fit",
        help="fit error = a * x^-b (power, saturating or frontier) from a CSV or a ladder in MLflow",
        description="Fit y = a * x^(-b) (+ E_inf for --form saturating); y is an error, lower is better.",
    )
    _add_source(p, experiment_help="MLflow experiment (ladder name) to read the rungs from",
                task_help="zero-shot task for --experiment (default: shape_color if present, else the first)",
                uri_help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI or sqlite:///mlflow.db)")
    p.add_argument("--x", help="x column; for --experiment: flops (default) or device_days")
    p.add_argument("--y", help="y column (an error); for --experiment defaults to zeroshot/<task>/error")
    # Spelled out rather than imported from fits: registering the CLI must not load scipy.
    p.add_argument("--form", choices=["power", "saturating", "frontier"], default="power")
    _add_uncertainty(p, n_boot=1000, boot_help="bootstrap replicates for the CIs (default 1000; 0: none)")
    p.add_argument("--holdout", type=int, default=0, metavar="K", help="also fit without the K largest-x points and predict them")
    p.add_argument("--plot", metavar="OUT_PREFIX", help="write OUT_PREFIX.png and OUT_PREFIX.svg")
    p.add_argument("--json", action="store_true", help="print exactly one JSON object on stdout")
    p.set_defaults(func=_cmd_fit)

    q = subparsers.add_parser(
        "fit-nd",
        help="fit L(N, D) = E + A/N^alpha + B/D^beta (Hoffmann et al. 2022, Approach 3)",
        description="Joint fit of loss or error against parameters N and data D, and the compute-optimal allocation.",
    )
    _add_source(q, experiment_help="MLflow experiment (ladder name)")
    q.add_argument("--n", help="parameter-count column (default for --experiment: nonembedding_params)")
    q.add_argument("--d", help="data column, tokens or samples (default for --experiment: samples)")
    q.add_argument("--y", help="loss/error column (default for --experiment: zeroshot/<task>/error)")
    q.add_argument("--drop-worst", type=int, default=0, metavar="K",
                   help="drop the K highest-y points first (Besiroglu et al. 2024 drop 5 on Chinchilla)")
    q.add_argument("--flops-per-nd", type=float, default=6.0, help="k in C = k N D (default 6, the Chinchilla convention)")
    q.add_argument("--huber-delta", type=float, default=1e-3)
    _add_uncertainty(q, n_boot=0, boot_help="bootstrap replicates (default 0: slow on big sets)")
    q.add_argument("--json", action="store_true")
    q.set_defaults(func=_cmd_fit_nd)


def _frame(args):
    """(DataFrame, default y column or None, excluded runs) from --csv or --experiment."""
    from clipscale.scaling import mlflow_io

    if args.csv:
        return mlflow_io.load_csv(args.csv), None, []
    with warnings.catch_warnings():
        # Said once below, in the CLI's own words, rather than as a Python warning.
        warnings.simplefilter("ignore", UserWarning)
        df = mlflow_io.load_runs(args.experiment, args.parent_run_id, args.tracking_uri)
    excluded = df.attrs.get("excluded", [])
    for e in excluded:
        print(f"warning: left out rung {e['rung']} (run {e['run_id']}): {e['reason']}", file=sys.stderr)
    task = args.task or mlflow_io.default_task(df)
    return df, mlflow_io.task_column(df, task), excluded


def _columns(df, names, *, labels=None):
    from clipscale.scaling.mlflow_io import ScalingInputError, require_columns

    require_columns(df, *names)
    import pandas as pd

    sub = df[list(names)].apply(lambda col: pd.to_numeric(col, errors="coerce"))
    ok = sub.notna().all(axis=1).to_numpy() & (sub > 0).all(axis=1).to_numpy()
    if ok.sum() < len(df):
        print(f"warning: skipping {int((~ok).sum())} row(s) with missing or non-positive {list(names)}", file=sys.stderr)
    if not ok.any():
        raise ScalingInputError(f"no rows with positive values in {list(names)}")
    arrays = [sub[c].to_numpy(dtype=float)[ok] for c in names]
    lab = None if labels is None or labels not in df.columns else df[labels].astype(str).to_numpy()[ok]
    return arrays, lab


def _fail(msg: str, code: int) -> int:
    print(f"clipscale: error: {msg}", file=sys.stderr)
    return code


def _cmd_fit(args) -> int:
    from clipscale.scaling import fits, mlflow_io
    from clipscale.scaling.law import fit_law
    from clipscale.scaling.mlflow_io import ScalingInputError

    try:
        df, y_default, excluded = _frame(args)
        xcol = args.x or ("flops" if args.experiment else None)
        ycol = args.y or y_default
        if xcol is None or ycol is None:
            return _fail("--csv needs --x and --y", 2)
        (x, y), labels = _columns(df, [xcol, ycol], labels="rung")
    except ScalingInputError as e:
        return _fail(str(e), 2)
    kw = {"n_boot": args.bootstrap, "seed": args.seed, "level": args.level}
    try:
        fit = fit_law(args.form, x, y, **kw)
        hold = fits.holdout(x, y, args.holdout, args.form, labels=labels, **kw) if args.holdout else None
    except ValueError as e:
        return _fail(str(e), 1)

    out = fit.to_dict()
    out.update({"x": xcol, "y": ycol})
    if excluded:
        out["excluded"] = excluded
    if hold is not None:
        out["holdout"] = hold.to_dict()
    out["references"] = mlflow_io.references_against(df, xcol, ycol, fit)  # drawn, never fitted
    if args.plot:
        from clipscale.scaling.plots import plot_fit

        paths = plot_fit(fit, args.plot, x=x, y=y, labels=labels, holdout=hold, x_label=xcol, y_label=ycol,
                         references=out["references"])
        out["plots"] = [str(p) for p in paths]
    if args.json:
        print(json.dumps(out, allow_nan=False))
    else:
        _print_fit(fit, out, hold)
    return 0


def _fmt_ci(ci):
    lo, hi = ci
    return "n/a" if lo is None or hi is None or not np.isfinite([lo, hi]).all() else f"[{lo:.4g}, {hi:.4g}]"


def _print_fit(fit, out, hold) -> None:
    print(f"form: {fit.form}   y = {'E_inf + ' if fit.form == 'saturating' else ''}a * x^-b   ({out['x']} -> {out['y']})")
    if fit.frontier_mask is not None:
        print(f"points: {len(fit.frontier_mask)} runs, {fit.n_points} on the compute-efficient frontier (fitted)")
    else:
        print(f"points: {fit.n_points}")
    for k in fit.param_names:
        print(f"  {k:6s} = {fit.params[k]:.6g}   {fit.level:.0%} CI {_fmt_ci(fit.ci[k])} ({fit.ci_method})")
    print(f"  R^2 (log space) = {fit.r2:.4f}")
    for e in out.get("excluded", []):
        print(f"excluded: {e['rung']} ({e['reason']})")
    if hold is not None:
        print(f"hold-out: fit without the {hold.k} largest, predict them")
        for p in hold.points:
            name = f"{p.label} " if p.label else ""
            print(f"  {name}x={p.x:.4g}: predicted {p.predicted:.4g}, actual {p.actual:.4g}, "
                  f"abs err {p.abs_error:.4g}, rel err {p.rel_error:.2%}")
    for path in out.get("plots", []):
        print(f"wrote {path}")


def _cmd_fit_nd(args) -> int:
    from clipscale.scaling.law import fit_law
    from clipscale.scaling.mlflow_io import ScalingInputError

    try:
        df, y_default, excluded = _frame(args)
        ncol = args.n or ("nonembedding_params" if args.experiment else None)
        dcol = args.d or ("samples" if args.experiment else None)
        ycol = args.y or y_default
        if None in (ncol, dcol, ycol):
            return _fail("--csv needs --n, --d and --y", 2)
        (n, d, y), _ = _columns(df, [ncol, dcol, ycol])
    except ScalingInputError as e:
        return _fail(str(e), 2)
    if args.drop_worst:
        keep = np.argsort(y, kind="stable")[: max(len(y) - args.drop_worst, 0)]
        n, d, y = n[keep], d[keep], y[keep]
    try:
        fit = fit_law("joint_nd", n, d, y, n_boot=args.bootstrap, seed=args.seed, level=args.level,
                      delta=args.huber_delta, flops_per_nd=args.flops_per_nd)
    except ValueError as e:
        return _fail(str(e), 1)
    out = fit.to_dict()
    out.update({"n": ncol, "d": dcol, "y": ycol, "dropped": int(args.drop_worst)})
    if excluded:
        out["excluded"] = excluded
    if args.json:
        print(json.dumps(out, allow_nan=False))
        return 0
    print(f"L(N, D) = E + A/N^alpha + B/D^beta   ({ncol}, {dcol} -> {ycol}; {fit.n_points} points)")
    for k in fit.param_names:
        print(f"  {k:5s} = {fit.params[k]:.6g}   CI {_fmt_ci(out['ci'][k])}")
    print(f"  R^2 (log space) = {fit.r2:.4f}   objective = {fit.loss:.6g}")
    print(f"compute-optimal (C = {args.flops_per_nd:g} N D): N_opt ~ C^{fit.a_exp:.4f}, D_opt ~ C^{fit.b_exp:.4f}")
    print(f"  a_exp = {fit.a_exp:.4f}  b_exp = {fit.b_exp:.4f}")
    return 0
