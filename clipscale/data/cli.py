"""`clipscale data ...` subcommands: write the synthetic corpus (and eval sets) to a folder or s3://."""

from __future__ import annotations

import argparse
import json
import sys

from clipscale.storage import StorageError, StorageSettings


def _settings(args: argparse.Namespace) -> StorageSettings:
    # Credentials stay in the environment (AWS_*); only the endpoint may come from the command line.
    return StorageSettings(endpoint_url=args.endpoint_url)


def _positive(value: str) -> int:
    n = int(value)
    if n <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return n


def _non_negative(value: str) -> int:
    n = int(value)
    if n < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return n


def cmd_synth(args: argparse.Namespace) -> int:
    from clipscale.data import synthetic

    try:
        sizes = synthetic.write_corpus(args.out, args.samples, shard_size=args.shard_size, seed=args.seed,
                                       image_size=args.image_size, progress=not args.quiet,
                                       settings=_settings(args))
    except (StorageError, OSError, ValueError) as e:
        print(f"clipscale data synth: {e}", file=sys.stderr)
        return 1
    print(json.dumps({"out": args.out, "shards": len(sizes), "samples": sum(sizes.values())}))
    return 0


def cmd_evalsets(args: argparse.Namespace) -> int:
    from clipscale.data import evalsets

    try:
        written = evalsets.ensure_eval_sets(args.out, seed=args.seed, n_per_task=args.n_per_task,
                                            image_size=args.image_size, tasks=args.task or None,
                                            settings=_settings(args))
    except (StorageError, OSError, ValueError) as e:
        print(f"clipscale data evalsets: {e}", file=sys.stderr)
        return 1
    print(json.dumps({"out": args.out, "written": written}))
    return 0


def register(subparsers) -> None:
    data = subparsers.add_parser("data", help="write datasets (synthetic corpus, eval sets)")
    sub = data.add_subparsers(dest="data_command", required=True)

    synth = sub.add_parser("synth", help="write the procedural image-caption corpus as webdataset shards",
                           description="Sample i depends only on (seed, i); held-out (color, shape) pairs never "
                                       "appear. Writes shard-NNNNNN.tar, sizes.json and corpus.json.")
    synth.add_argument("--out", required=True, help="output folder or s3://bucket/prefix")
    synth.add_argument("--samples", type=_positive, required=True, help="number of samples")
    synth.add_argument("--shard-size", type=_positive, default=1000, help="samples per shard (default 1000)")
    synth.add_argument("--seed", type=_non_negative, default=0, help="corpus seed (default 0)")
    synth.add_argument("--image-size", type=_positive, default=32, help="image side in pixels (default 32)")
    synth.add_argument("--endpoint-url", default=None,
                       help="S3-compatible endpoint (default: AWS_ENDPOINT_URL); credentials come from AWS_* env")
    synth.add_argument("--quiet", action="store_true", help="no progress bar")
    synth.set_defaults(func=cmd_synth)

    ev = sub.add_parser("evalsets", help="write clipscale's eval tasks (CLIP_benchmark layout), skipping present ones")
    ev.add_argument("--out", required=True, help="eval root folder or s3://bucket/prefix")
    ev.add_argument("--task", action="append", help="task to write (repeatable; default all)")
    ev.add_argument("--seed", type=_non_negative, default=0)
    ev.add_argument("--n-per-task", type=_positive, default=500)
    ev.add_argument("--image-size", type=_positive, default=32)
    ev.add_argument("--endpoint-url", default=None)
    ev.set_defaults(func=cmd_evalsets)
