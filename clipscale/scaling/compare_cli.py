"""`clipscale compare`: two ladders' laws side by side, the compute multiplier with its
interval, and where the laws cross (clipscale.scaling.compare).

Exit codes as for `clipscale fit`: 0 success, 2 bad input, 1 a fit that could not be computed.
"""

from __future__ import annotations

import json
import tempfile
import warnings
from pathlib import Path

# One wording and exit-code convention, and one way to read numeric columns, for the fit commands.
from clipscale.scaling.cli import _columns, _fail

DEFAULT_LOG_EXPERIMENT = "clipscale-compare"


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "compare",
        help="compare two ladders by their laws: compute multiplier with a CI, and crossover",
        description="How many times the compute ladder A needs to reach the error (or loss) ladder B's "
                    "law gives at B's largest measured compute. 2: A needs twice the compute.")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--experiment", action="append", metavar="NAME", help="an MLflow ladder; give it twice (A, then B)")
    src.add_argument("--csv", action="append", metavar="FILE", help="a ladder kept as CSV; give it twice (A, then B)")
    target = p.add_mutually_exclusive_group()
    target.add_argument("--task", help="zero-shot task for --experiment (default: shape_color if present)")
    target.add_argument("--target", choices=["val_loss"], help="compare validation-loss laws instead")
    p.add_argument("--x", help="x column (--experiment: flops by default; --csv: required)")
    p.add_argument("--y", help="y column, lower is better (--csv: required)")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI or sqlite:///mlflow.db)")
    p.add_argument("--bootstrap", type=int, default=1000, metavar="N", help="bootstrap replicates per ladder (default 1000)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--level", type=float, default=0.95)
    p.add_argument("--plot", metavar="OUT_PREFIX", help="also write OUT_PREFIX.png and OUT_PREFIX.svg here")
    p.add_argument("--log-to", metavar="EXPERIMENT",
                   help=f"log the comparison run there (--experiment: default {DEFAULT_LOG_EXPERIMENT}; "
                        "--csv: only when given)")
    p.add_argument("--json", action="store_true", help="print exactly one JSON object on stdout")
    p.set_defaults(func=_cmd_compare)


def _load(args, source: str):
    """One ladder's rows: the CSV as it is, or the experiment's rungs (load_runs)."""
    from clipscale.scaling import mlflow_io

    if args.csv:
        return mlflow_io.load_csv(source)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # left-out runs: `clipscale fit` names them
        return mlflow_io.load_runs(source, None, args.tracking_uri)


def _objectives(df) -> set[str]:
    if "objective" not in df.columns:
        return {"clip"}
    return set(",".join(df["objective"].dropna().astype(str)).split(",")) - {""} or {"clip"}


def _check_same_objective(frames: dict) -> None:
    """val/loss is each objective's own loss (softmax over the batch for CLIP, pairwise sigmoid
    for SigLIP): in different units, their laws cannot be set against each other."""
    from clipscale.scaling.mlflow_io import ScalingInputError

    found = {name: sorted(_objectives(df)) for name, df in frames.items()}
    if len({o for objs in found.values() for o in objs}) > 1:
        raise ScalingInputError(
            f"--target val_loss across objectives ({', '.join(f'{k}: {v}' for k, v in found.items())}): each "
            "objective's val/loss is its own loss, in its own units, so the laws do not compare; compare "
            "zero-shot error instead (--task)")


def _fit(args, df, source: str, seed: int):
    """(fitted power law, x column, y column) of one ladder."""
    from clipscale.scaling import mlflow_io
    from clipscale.scaling.analysis import fit_task_error, fit_val_loss
    from clipscale.scaling.fits import fit_power
    from clipscale.scaling.mlflow_io import ScalingInputError

    if args.csv:
        (x, y), _ = _columns(df, [args.x, args.y])
        if len(set(x)) < 2:
            raise ScalingInputError(f"{source}: fewer than 2 distinct positive {args.x} values")
        return fit_power(x, y, n_boot=args.bootstrap, seed=seed, level=args.level), args.x, args.y
    x = args.x or "flops"
    if args.target == "val_loss":
        fitted = fit_val_loss(df, x, holdout_k=0, bootstrap=args.bootstrap)
        # The power law in both ladders: the saturating form's intervals are not bootstrapped,
        # so there would be no draws to pair.
        law = fitted.loss_law.power if fitted is not None else None
    else:
        fitted = fit_task_error(df, args.task or mlflow_io.default_task(df), x, holdout_k=0, bootstrap=args.bootstrap)
        law = fitted.law if fitted is not None else None
    if law is None:
        raise ScalingInputError(f"experiment {source!r}: fewer than 2 rungs with a usable "
                                f"{'val/loss' if args.target else 'zero-shot error'} to fit")
    return law, x, fitted.column


def _cmd_compare(args) -> int:
    from clipscale.scaling.compare import compare_fits
    from clipscale.scaling.mlflow_io import ScalingInputError

    sources = args.experiment or args.csv
    if len(sources) != 2:
        return _fail(f"give exactly two ladders (A, then B); got {len(sources)}", 2)
    if args.csv and not (args.x and args.y):
        return _fail("--csv needs --x and --y", 2)
    try:
        frames = {s: _load(args, s) for s in sources}
        if args.target == "val_loss":
            _check_same_objective(frames)
        (fit_a, x, y), (fit_b, _, _) = (_fit(args, frames[s], s, args.seed + i) for i, s in enumerate(sources))
    except ScalingInputError as e:
        return _fail(str(e), 2)
    except ValueError as e:
        return _fail(str(e), 1)
    names = tuple(Path(s).stem if args.csv else s for s in sources)
    comparison = compare_fits(fit_a, fit_b, names, args.level)
    out = {**comparison.to_dict(), "x": x, "y": y}
    log_to = args.log_to or (DEFAULT_LOG_EXPERIMENT if args.experiment else None)
    with tempfile.TemporaryDirectory(prefix="clipscale-compare-") as tmp:
        plots = []
        if args.plot or log_to:  # matplotlib only when a figure goes somewhere
            plots = _plots(comparison, Path(args.plot) if args.plot else Path(tmp) / "comparison", x, y)
        if args.plot:
            out["plots"] = [str(p) for p in plots]
        if log_to:
            out["mlflow_run_id"] = _log(args.tracking_uri, log_to, out, plots)
    if args.json:
        print(json.dumps(out, allow_nan=False))
    else:
        _print(comparison, out)
    return 0


def _plots(comparison, prefix: Path, x: str, y: str) -> list[Path]:
    from clipscale.scaling.plots import plot_comparison

    return plot_comparison(comparison, prefix, x_label=x, y_label=y)


def _log(uri: str | None, experiment: str, out: dict, plots: list[Path]) -> str:
    """The comparison as one MLflow run, found again (and updated) when the same pair is compared."""
    from clipscale.names import TAG_COMPARISON
    from clipscale.tracking import Tracker, tracking_uri

    tracker = Tracker.open(tracking_uri(uri), experiment)
    what = f"{out['a']} vs {out['b']}: {out['y']}"
    run_id = tracker.run_by_tag(TAG_COMPARISON, what, run_name=f"{out['a']} vs {out['b']}")
    tracker.log_params(run_id, {"a": out["a"], "b": out["b"], "x": out["x"], "y": out["y"], "level": out["level"]})
    lo, hi = out["multiplier_ci"]
    tracker.log_metrics(run_id, {k: v for k, v in {
        "compare/multiplier": out["multiplier"], "compare/multiplier_lo": lo, "compare/multiplier_hi": hi,
        "compare/at_compute": out["at_compute"], "compare/target": out["target"]}.items() if v is not None})
    with tempfile.TemporaryDirectory(prefix="clipscale-compare-log-") as tmp:
        (Path(tmp) / "comparison.json").write_text(json.dumps(out, indent=2, allow_nan=False))
        for p in plots:
            (Path(tmp) / p.name).write_bytes(p.read_bytes())
        tracker.log_artifacts(run_id, tmp, "compare")
    tracker.finish(run_id, "FINISHED")
    return run_id


def _print(c, out: dict) -> None:
    for name, fit in zip(c.names, c.fits):
        p = fit.params
        print(f"{name}: {out['y']} = {p['a']:.4g} * {out['x']}^-{p['b']:.4f}   ({fit.n_points} points, R^2 log {fit.r2:.3f})")
    lo, hi = c.multiplier_ci
    print(f"at {c.names[1]}'s largest {out['x']} {c.at_compute:.4g}, {c.names[1]}'s law gives {c.target:.4g}")
    print(f"multiplier: {c.names[0]} needs {c.multiplier:.4g}x that compute to reach it "
          f"({c.level:.0%} CI [{lo:.4g}, {hi:.4g}], {c.n_pairs} bootstrap pairs)")
    if c.crossovers:
        print("the laws cross at " + ", ".join(f"{x:.4g}" for x in c.crossovers) + f" ({out['x']})")
    else:
        print("the laws do not cross within a decade of the measured range")
    for path in out.get("plots", []):
        print(f"wrote {path}")
    if "mlflow_run_id" in out:
        print(f"logged run {out['mlflow_run_id']}")
