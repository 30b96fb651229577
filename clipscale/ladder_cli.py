"""`clipscale ladder` and `experiments/ladder.py`: load a config, show the plan or run it."""

from __future__ import annotations

import argparse
import json
import sys
import time

DEFAULT_CONFIG = "experiments/configs/tiny.yaml"


def add_arguments(parser: argparse.ArgumentParser, default_config: str = DEFAULT_CONFIG) -> None:
    parser.add_argument("--config", default=default_config, help=f"experiment YAML (default {default_config})")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                        help="dotted overrides, e.g. train.lr=1e-3 ladder.only=[0,1,2]")
    parser.add_argument("--dry-run", action="store_true", help="print the plan and train nothing")
    parser.add_argument("--json", action="store_true", help="with --dry-run: one JSON object on stdout")
    parser.add_argument("--throughput", type=float, default=None, metavar="SAMPLES_PER_SEC",
                        help="samples/s per device at the smallest rung, for device-day estimates; "
                             "scaled to the other rungs by FLOPs per sample")
    parser.add_argument("--measure-throughput", action="store_true",
                        help="time a few training steps of the smallest rung on this machine for the estimate")


def register(subparsers) -> None:
    p = subparsers.add_parser("ladder", help="run (or --dry-run) a compute ladder")
    add_arguments(p)
    p.set_defaults(func=run)


def run(args) -> int:
    from clipscale.config import load_config
    from clipscale.errors import ConfigError

    try:
        cfg = load_config(args.config, args.overrides)
    except ConfigError as e:
        print(f"clipscale: {e}", file=sys.stderr)
        return 2
    if args.dry_run:
        return dry_run(cfg, args)
    from clipscale.errors import DataQualityError
    from clipscale.ladder import run_ladder
    from clipscale.lock import LadderLocked
    from clipscale.report import format_table
    from clipscale.storage import StorageError

    t0 = time.time()
    try:
        result = run_ladder(cfg)
    except (StorageError, DataQualityError, LadderLocked) as e:
        print(f"clipscale: error: {e}", file=sys.stderr)
        return 1
    print(f"\nclipscale: ladder {cfg.ladder.name!r} done in {time.time() - t0:.0f}s "
          f"(trained {len(result.trained)}, skipped {len(result.skipped)}, failed {len(result.failed)})")
    print(format_table(result.rows))
    if result.fit:
        print("\n" + result.fit.get("summary", json.dumps(result.fit, default=str)))
    print(f"\nMLflow: {result.uri}  experiment {result.experiment!r}  parent run {result.parent_id}")
    from clipscale.monitor.ui import closing_hint

    print(closing_hint(result.uri, result.experiment))
    return 1 if result.failed else 0


def dry_run(cfg, args) -> int:
    from clipscale.ladder import plan
    from clipscale.report import format_table
    from clipscale.throughput import measure_samples_per_sec

    plans = plan(cfg)
    base = min(plans, key=lambda p: p.flops_per_sample)
    sps = args.throughput
    source = "given" if sps else None
    if sps is None and args.measure_throughput:
        sps, source = measure_samples_per_sec(base.rung, cfg.train), "measured"
    rungs = []
    for p in plans:
        if rungs and rungs[-1]["name"] == p.rung.name:
            continue  # one entry per size; its replicates differ only in seed
        # Same device, same utilisation: throughput scales inversely with FLOPs per sample.
        per_device = sps * base.flops_per_sample / p.flops_per_sample if sps else None
        entry = p.to_dict(per_device)
        del entry["seed"], entry["config_hash"]
        entry["lr"] = p.rung.lr if p.rung.lr is not None else cfg.train.lr
        if p.rung.name in cfg.ladder.provenance:  # a rung derived by ladder.generate: each value's source
            entry["provenance"] = cfg.ladder.provenance[p.rung.name]
        rungs.append({**entry, "seeds": [q.seed for q in plans if q.index == p.index]})
    total = sum(r["train_flops"] * len(r["seeds"]) for r in rungs)
    doc = {"ladder": cfg.ladder.name, "rungs": rungs, "total_train_flops": total,
           "compute_span": max(r["train_flops"] for r in rungs) / min(r["train_flops"] for r in rungs),
           "throughput": {"samples_per_sec_per_device": sps, "source": source, "at_rung": base.rung.name}}
    if sps:
        doc["total_est_device_days"] = sum(r["est_device_days"] * len(r["seeds"]) for r in rungs)
    if cfg.ladder.cooldowns:  # WSD cooldown branches: extra (N, D) points at the cost of their decays
        from clipscale.ladder.cooldown import dry_run_entries

        doc["cooldowns"], doc["total_cooldown_flops"] = dry_run_entries(cfg, plans)
    if args.json:
        print(json.dumps(doc))
        return 0
    cols = ["name", "seeds", "params", "nonembedding_params", "flops_per_sample", "samples", "train_flops"]
    if sps:
        cols.append("est_device_days")
    print(format_table([{**{c: r[c] for c in cols}, "seeds": ",".join(map(str, r["seeds"]))} for r in rungs]))
    print(f"\ntotal training FLOPs {total:.3e}; compute span {doc['compute_span']:.0f}x")
    if cfg.ladder.cooldowns:
        print(f"cooldown branches {len(doc['cooldowns'])} (fractions {cfg.ladder.cooldowns} of each budget): their "
              f"decays add {doc['total_cooldown_flops']:.3e} FLOPs ({doc['total_cooldown_flops'] / total:.1%})")
    if sps:
        print(f"estimated device-days {doc['total_est_device_days']:.3f} "
              f"({source}: {sps:.1f} samples/s/device at {base.rung.name})")
    print_provenance(rungs)
    return 0


def print_provenance(rungs: list[dict]) -> None:
    """Each derived value and the rule it came from, rung by rung (nothing for listed rungs)."""
    derived = [r for r in rungs if r.get("provenance")]
    if derived:
        print("\nderived by ladder.generate (value = rule, source):")
    for r in derived:
        print(f"{r['name']}")
        for key, how in r["provenance"].items():
            print(f"  {key:<11} {how}")


def main(argv: list[str] | None = None, default_config: str = DEFAULT_CONFIG) -> int:
    parser = argparse.ArgumentParser(prog="ladder.py", description="Run a CLIP compute ladder")
    add_arguments(parser, default_config)
    return run(parser.parse_args(argv))
