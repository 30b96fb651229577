"""`clipscale optimal`: compute-optimal allocation, N_opt ∝ C^a and D_opt ∝ C^b, by Chinchilla's
Approach 2 (IsoFLOP parabolas, `isoflop.py`) and Approach 3 (the joint fit, `joint.py`) side by
side, with bootstrap intervals. From an IsoFLOP ladder in MLflow (the plot is logged on its
newest parent run) or from a CSV.

Exit codes as for `clipscale fit`: 0 success, 2 bad input, 1 a fit that could not be computed.
"""

from __future__ import annotations

import json
import sys
import tempfile
import warnings
from pathlib import Path

# One wording and exit-code convention, and one way to read numeric columns, for the fit commands.
from clipscale.scaling.cli import _columns, _fail


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "optimal",
        help="compute-optimal N and D: Chinchilla's Approach 2 (IsoFLOP parabolas) and 3 (joint fit)",
        description="N_opt ∝ C^a and D_opt ∝ C^b from IsoFLOP profiles (several sizes at each of a few "
                    "compute budgets), by both of Hoffmann et al.'s approaches, with bootstrap CIs.")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--experiment", help="an IsoFLOP ladder in MLflow (e.g. isoflop_tiny.yaml's)")
    src.add_argument("--csv", help="one row per run")
    p.add_argument("--n", help="parameter-count column (--experiment: nonembedding_params)")
    p.add_argument("--d", help="data column (--experiment: samples)")
    p.add_argument("--y", help="loss/error column (--experiment: val/loss, else zeroshot/<task>/error)")
    p.add_argument("--flops", help="compute column (--experiment: flops; --csv: default k*N*D)")
    p.add_argument("--task", help="zero-shot task for --experiment when it has no val/loss")
    p.add_argument("--flops-per-nd", type=float, default=6.0,
                   help="k in C = k N D for a CSV without --flops (default 6, the Chinchilla convention)")
    p.add_argument("--tracking-uri")
    p.add_argument("--bootstrap", type=int, default=100, metavar="N", help="replicates for both CIs (default 100)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--level", type=float, default=0.95)
    p.add_argument("--json", action="store_true", help="print exactly one JSON object on stdout")
    p.set_defaults(func=_cmd_optimal)


def _column_names(args):
    """(frame, n, d, y, flops or None) column names, from the CSV or the experiment's rungs."""
    from clipscale.scaling import mlflow_io

    if args.csv:
        if not (args.n and args.d and args.y):
            raise mlflow_io.ScalingInputError("--csv needs --n, --d and --y")
        df = mlflow_io.load_csv(args.csv)
        return df, args.n, args.d, args.y, args.flops
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        df = mlflow_io.load_runs(args.experiment, None, args.tracking_uri)
    y = args.y or ("val/loss" if "val/loss" in df.columns and not args.task
                   else mlflow_io.task_column(df, args.task or mlflow_io.default_task(df)))
    return df, args.n or "nonembedding_params", args.d or "samples", y, args.flops or "flops"


def _arrays(df, names):
    from clipscale.scaling.mlflow_io import ScalingInputError

    arrays, _ = _columns(df, names)
    if len(arrays[0]) < 6:
        raise ScalingInputError(f"{len(arrays[0])} rows with positive {list(names)}; "
                                "IsoFLOP fits need 2+ budgets x 3+ sizes")
    return arrays


def _cmd_optimal(args) -> int:
    import numpy as np

    from clipscale.scaling.isoflop import profiles
    from clipscale.scaling.joint import fit_joint
    from clipscale.scaling.mlflow_io import ScalingInputError
    from clipscale.scaling.results import _clean

    try:
        df, ncol, dcol, ycol, fcol = _column_names(args)
        n, d, y, *c = _arrays(df, [ncol, dcol, ycol] + ([fcol] if fcol else []))
    except ScalingInputError as e:
        return _fail(str(e), 2)
    compute = c[0] if c else args.flops_per_nd * n * d
    k = float(np.median(compute / (n * d)))  # C = k N D as this ladder counts it (for D_opt)
    try:
        two, why = _approach2(n, d, y, compute, k, args)
        three = fit_joint(n, d, y, n_boot=args.bootstrap, seed=args.seed, level=args.level, flops_per_nd=k)
    except ValueError as e:
        return _fail(str(e), 1)
    ci3 = three.exponent_ci()
    out = {"approach2": two.to_dict() if two is not None else _unavailable(why),
           "approach3": {"a": three.a_exp, "a_ci": list(ci3["a_exp"]), "b": three.b_exp, "b_ci": list(ci3["b_exp"]),
                         "fit": three.to_dict()},
           "n": ncol, "d": dcol, "y": ycol, "flops": fcol or f"{args.flops_per_nd:g}*N*D", "flops_per_nd": k}
    if args.experiment:
        out["mlflow_run_id"] = _log(args, out, two, three, profiles(n, y, compute), compute)
    out = _clean(out)  # NaN (no bootstrap) -> null: the JSON stays strict
    if args.json:
        print(json.dumps(out, allow_nan=False))
    else:
        _print(out)
    return 0


def _approach2(n, d, y, compute, k: float, args):
    """(Approach 2's fit, ""); or, where the design is sound but no two budgets have a minimum inside
    their sizes (the optimum lies outside them), (None, that reason), so Approach 3 still answers."""
    from clipscale.scaling.isoflop import NoMinimumError, fit_isoflop

    try:
        return fit_isoflop(n, d, y, compute, flops_per_nd=k, n_boot=args.bootstrap, seed=args.seed,
                           level=args.level), ""
    except NoMinimumError as e:
        print(f"clipscale: warning: Approach 2 unavailable: {e}. Approach 3 only; the plot shows the "
              "profiles, and train sizes around their lowest point to bracket the optimum", file=sys.stderr)
        return None, str(e)


def _unavailable(reason: str) -> dict:
    return {"a": None, "a_ci": [None, None], "b": None, "b_ci": [None, None], "budgets": [], "error": reason}


def _log(args, out: dict, two, three, profiles, compute) -> str | None:
    """The IsoFLOP plot and both approaches' exponents on the experiment's newest parent run."""
    from clipscale.scaling.plots import plot_isoflop
    from clipscale.tracking import Tracker, tracking_uri

    tracker = Tracker.find(tracking_uri(args.tracking_uri), args.experiment)
    parents = tracker.parents() if tracker is not None else []
    if not parents:
        print(f"clipscale: no ladder parent run in {args.experiment!r}; nothing logged", file=sys.stderr)
        return None
    run_id = parents[0].info.run_id
    tracker.log_metrics(run_id, {f"scaling/optimal/approach{i}/{e}": v for i, fit in ((2, "approach2"), (3, "approach3"))
                                 for e, v in (("a", out[fit]["a"]), ("b", out[fit]["b"])) if v is not None})
    with tempfile.TemporaryDirectory(prefix="clipscale-optimal-") as tmp:
        plot_isoflop(two, three, Path(tmp) / "isoflop", y_label=out["y"], profiles=profiles, compute=compute)
        (Path(tmp) / "optimal.json").write_text(json.dumps(out, indent=2, default=float))
        tracker.log_artifacts(run_id, tmp, "scaling")
    return run_id


def _print(out: dict) -> None:
    def ci(v):
        lo, hi = v
        return "n/a" if lo is None or hi is None else f"[{lo:.3f}, {hi:.3f}]"

    print(f"compute-optimal allocation ({out['n']}, {out['d']} -> {out['y']}; C = {out['flops']})")
    for name, label in (("approach2", "Approach 2 (IsoFLOP parabolas)"), ("approach3", "Approach 3 (joint fit)")):
        r = out[name]
        if r["a"] is None:
            print(f"  {label:32s} unavailable: {r['error']}")
            continue
        print(f"  {label:32s} N_opt ~ C^{r['a']:.3f} {ci(r['a_ci'])}   D_opt ~ C^{r['b']:.3f} {ci(r['b_ci'])}")
    for b in out["approach2"]["budgets"]:
        print(f"  budget C = {b['compute']:.3g}: N_opt {b['n_opt']:.3g}, D_opt {b['d_opt']:.3g}")
    if out.get("mlflow_run_id"):
        print(f"logged on parent run {out['mlflow_run_id']} (scaling/isoflop.png)")
