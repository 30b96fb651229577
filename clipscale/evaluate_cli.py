"""`clipscale eval`: score a checkpoint on eval tasks, print a table, optionally log to an MLflow run."""

from __future__ import annotations

import argparse
import os
import sys
import time

from clipscale.storage import StorageError, StorageSettings

DEFAULT_EVAL_ROOT = os.path.join("data", "eval")
DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"


def format_table(metrics: dict[str, float]) -> str:
    """Rows `task  metric  value`, grouped by task, in a stable order."""
    rows = sorted((k.split("/", 2) + [""] * 2)[:3] + [v] for k, v in metrics.items())
    rows = [(f"{kind}/{task}", name, value) for kind, task, name, value in rows]
    w1 = max([len(r[0]) for r in rows] + [4])
    w2 = max([len(r[1]) for r in rows] + [6])
    lines = [f"{'task':<{w1}}  {'metric':<{w2}}  value", f"{'-' * w1}  {'-' * w2}  ------"]
    lines += [f"{t:<{w1}}  {m:<{w2}}  {v:.4f}" for t, m, v in rows]
    return "\n".join(lines)


def log_to_mlflow(run_id: str, metrics: dict[str, float], tracking_uri: str | None = None) -> None:
    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI)
    now = int(time.time() * 1000)
    client.log_batch(run_id, metrics=[Metric(k, float(v), now, 0) for k, v in sorted(metrics.items())])


def cmd_eval(args: argparse.Namespace) -> int:
    from clipscale import evaluate
    from clipscale.data import evalsets

    settings = StorageSettings(endpoint_url=args.endpoint_url)
    tasks = args.task or list(evalsets.DEFAULT_TASKS)
    try:
        # Our own tasks are generated on first use; other folders under the root are read as they are.
        ours = [t for t in tasks if t in evalsets.ALL_TASKS]
        if ours:
            evalsets.ensure_eval_sets(args.eval_root, tasks=ours, settings=settings, strict=False)
        model, spec = evaluate.load_checkpoint_model(args.checkpoint, settings=settings, device=args.device)
        metrics = evaluate.evaluate_model(model, spec, tasks, args.eval_root, device=args.device,
                                          batch_size=args.batch_size, linear_probe=not args.no_linear_probe,
                                          settings=settings)
    except (StorageError, OSError, ValueError) as e:
        print(f"clipscale eval: {e}", file=sys.stderr)
        return 1
    print(format_table(metrics))
    if args.mlflow_run:
        log_to_mlflow(args.mlflow_run, metrics)
        print(f"logged {len(metrics)} metrics to MLflow run {args.mlflow_run}", file=sys.stderr)
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser("eval", help="zero-shot / retrieval / linear-probe evaluation of a checkpoint")
    p.add_argument("--checkpoint", required=True, help="checkpoint folder (local or s3://) with clipscale.json")
    p.add_argument("--task", action="append", help="eval task (repeatable; default: all of clipscale's tasks)")
    p.add_argument("--eval-root", default=DEFAULT_EVAL_ROOT,
                   help=f"folder or s3:// prefix holding task folders (default {DEFAULT_EVAL_ROOT}; "
                        "clipscale's tasks are generated there if missing)")
    p.add_argument("--mlflow-run", default=None,
                   help="log metrics to this MLflow run id (tracking URI from MLFLOW_TRACKING_URI, "
                        f"default {DEFAULT_TRACKING_URI})")
    p.add_argument("--no-linear-probe", action="store_true", help="skip linear probes (faster)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--endpoint-url", default=None, help="S3-compatible endpoint (default: AWS_ENDPOINT_URL)")
    p.set_defaults(func=cmd_eval)
