"""`clipscale sweep-lr` and `experiments/sweep_lr.py`: plan (or run) a learning-rate sweep and fit
lr_opt(N) = c * N^-gamma into a YAML fragment for `ladder.generate.lr_rule`."""

from __future__ import annotations

import argparse
import json
import sys

from clipscale.ladder.sweep import DEFAULT_LR_RANGE, DEFAULT_SAMPLES, DEFAULT_TRIALS

DEFAULT_CONFIG = "experiments/configs/tiny.yaml"


def _rungs(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected rung indices, e.g. 0,1,2,3") from None


def _lr_range(text: str) -> tuple[float, float]:
    try:
        lo, hi = (float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected LO,HI, e.g. 3e-4,1e-2") from None
    if not 0 < lo < hi:
        raise argparse.ArgumentTypeError(f"{text!r}: expected 0 < LO < HI")
    return lo, hi


def add_arguments(parser: argparse.ArgumentParser, default_config: str = DEFAULT_CONFIG) -> None:
    parser.add_argument("--config", default=default_config, help=f"ladder YAML (default {default_config})")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="dotted overrides, e.g. train.weight_decay=0.1")
    parser.add_argument("--rungs", type=_rungs, default=None, metavar="I,J,...",
                        help="rung indices to sweep (default: the four smallest by non-embedding parameters)")
    parser.add_argument("--samples", type=int, default=DEFAULT_SAMPLES,
                        help=f"each trial's sample budget, rounded down to whole batches (default {DEFAULT_SAMPLES})")
    parser.add_argument("--trials", type=int, default=DEFAULT_TRIALS,
                        help=f"learning rates per rung (default {DEFAULT_TRIALS})")
    parser.add_argument("--seed", type=int, default=0, help="seed of the learning-rate draw and the bootstrap (default 0)")
    parser.add_argument("--lr-range", type=_lr_range, default=DEFAULT_LR_RANGE, metavar="LO,HI",
                        help="log-uniform range of the drawn learning rates (default %s,%s)" % DEFAULT_LR_RANGE)
    parser.add_argument("--out", default=None, metavar="FILE",
                        help="the fragment to write (default <config dir>/<ladder name>.lr.yaml)")
    parser.add_argument("--dry-run", action="store_true", help="print the planned trials and train nothing")
    parser.add_argument("--json", action="store_true", help="with --dry-run: one JSON object on stdout")


def register(subparsers) -> None:
    p = subparsers.add_parser("sweep-lr", help="Ray Tune learning-rate sweep -> lr_opt(N) = c N^-gamma fragment")
    add_arguments(p)
    p.set_defaults(func=run)


def run(args) -> int:
    from clipscale.config import load_config
    from clipscale.errors import ConfigError
    from clipscale.ladder.sweep import SweepError, SweepSettings, default_fragment_path, plan_sweep

    if args.json and not args.dry_run:
        print("clipscale: error: --json goes with --dry-run", file=sys.stderr)
        return 2
    try:
        cfg = load_config(args.config, args.overrides)
        settings = SweepSettings(rungs=args.rungs, trials=args.trials, samples=args.samples, seed=args.seed,
                                 lr_range=tuple(args.lr_range))
        config = _shown(args.config)
        out = _shown(args.out or str(default_fragment_path(args.config, cfg.ladder.name)))
        if args.dry_run:
            return _dry_run(plan_sweep(cfg, settings), config, out, args.json)
    except (ConfigError, SweepError) as e:
        print(f"clipscale: error: {e}", file=sys.stderr)
        return 2
    return _run(cfg, settings, config, out)


def _shown(path: str) -> str:
    """A path as the fragment records it: relative to the working directory when under it, so a
    fragment committed beside its config names no one's home directory."""
    import os

    rel = os.path.relpath(path)
    return path if rel.startswith("..") else rel


def _run(cfg, settings, config_path: str, out: str) -> int:
    from clipscale.errors import DataQualityError
    from clipscale.ladder.sweep import SweepError
    from clipscale.ladder.sweep_run import run_sweep
    from clipscale.lock import LadderLocked
    from clipscale.storage import StorageError

    try:
        result = run_sweep(cfg, settings, config_path, out)
    except (SweepError, StorageError, DataQualityError, LadderLocked) as e:
        print(f"clipscale: error: {e}", file=sys.stderr)
        return 1
    print(f"\nMLflow: {result.uri}  experiment {result.experiment!r}  parent run {result.parent_id}")
    return 0


def _dry_run(plan, config_path: str, out: str, as_json: bool) -> int:
    doc = {**plan.to_dict(), "config": config_path, "fragment": out}
    if as_json:
        print(json.dumps(doc))
        return 0
    from clipscale.report import format_table

    print(format_table([{k: t[k] for k in ("key", "rung", "nonembedding_params", "lr", "samples")}
                        for t in doc["trials"]]))
    for rung, a in plan.asha.items():
        print(f"{rung}: ASHA on {a.metric} ({a.mode}) by {a.time_attr}: grace {a.grace_period:,}, "
              f"max {a.max_t:,}, reduction factor {a.reduction_factor:g}")
    print(f"\n{len(plan.trials)} trials; the fit goes to {out}")
    return 0


def main(argv: list[str] | None = None, default_config: str = DEFAULT_CONFIG) -> int:
    parser = argparse.ArgumentParser(prog="sweep_lr.py", description="Learning-rate sweep with Ray Tune + ASHA")
    add_arguments(parser, default_config)
    return run(parser.parse_args(argv))
