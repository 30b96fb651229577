"""`clipscale eval`: score a checkpoint or any open_clip model on eval tasks; print a table, log to MLflow."""

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

    from clipscale.tracking import tracking_uri as resolve_uri

    client = MlflowClient(tracking_uri=resolve_uri(tracking_uri))
    now = int(time.time() * 1000)
    client.log_batch(run_id, metrics=[Metric(k, float(v), now, 0) for k, v in sorted(metrics.items())])


def cmd_eval(args: argparse.Namespace) -> int:
    from clipscale import evaluate
    from clipscale.data import evalsets

    settings = StorageSettings(endpoint_url=args.endpoint_url)
    tasks = args.task or list(evalsets.DEFAULT_TASKS)
    if args.pretrained and not args.model:
        print("clipscale eval: --pretrained needs --model NAME (an open_clip architecture)", file=sys.stderr)
        return 2
    try:
        # Our own tasks are generated on first use; other folders under the root are read as they are.
        ours = [t for t in tasks if t in evalsets.ALL_TASKS]
        if ours:
            evalsets.ensure_eval_sets(args.eval_root, tasks=ours, settings=settings, strict=False)
        if args.model:
            model, sizes, preprocess, tokenizer = load_open_clip(args.model, args.pretrained, args.device)
        else:
            model, sizes = evaluate.load_checkpoint_model(args.checkpoint, settings=settings, device=args.device)
            preprocess = tokenizer = None  # clipscale's own eval transform and tokenizer
        metrics = evaluate.evaluate_model(model, sizes, tasks, args.eval_root, device=args.device,
                                          batch_size=args.batch_size, linear_probe=not args.no_linear_probe,
                                          settings=settings, preprocess=preprocess, tokenizer=tokenizer,
                                          averages=True)
    except (StorageError, OSError, ValueError, RuntimeError) as e:
        print(f"clipscale eval: {e}", file=sys.stderr)
        return 1
    print(format_table(metrics))
    if args.mlflow_run:
        log_to_mlflow(args.mlflow_run, metrics)
        print(f"logged {len(metrics)} metrics to MLflow run {args.mlflow_run}", file=sys.stderr)
    if args.reference_for:
        run_id = log_reference(args.reference_for, args.model or args.checkpoint, args.pretrained, metrics, args.flops)
        print(f"logged reference run {run_id} in experiment {args.reference_for!r}", file=sys.stderr)
    return 0


def load_open_clip(name: str, pretrained: str | None, device: str):
    """(model, (image_size, context_length), preprocess, tokenizer) of any open_clip model:
    `local-dir:DIR`, or an architecture NAME with weights from a local FILE (nothing is downloaded)."""
    import open_clip

    if not name.startswith("local-dir:") and not pretrained:
        raise ValueError(f"--model {name}: give its weights with --pretrained FILE, or an exported local-dir:DIR "
                         "(a random model is no reference, and weights are never downloaded)")
    if pretrained and not os.path.isfile(pretrained):
        raise ValueError(f"--pretrained {pretrained}: no such file (weights are never downloaded)")
    # require_pretrained: open_clip otherwise only warns and goes on with random weights.
    model, _, preprocess = open_clip.create_model_and_transforms(name, pretrained=pretrained, device=device,
                                                                 require_pretrained=True)
    tokenizer = open_clip.get_tokenizer(name)
    size = model.visual.image_size
    size = size[0] if isinstance(size, (tuple, list)) else size
    return model.eval(), (int(size), int(tokenizer.context_length)), preprocess, tokenizer


def log_reference(experiment: str, model: str, pretrained: str | None, metrics: dict[str, float],
                  flops: float | None, tracking_uri: str | None = None) -> str:
    """A run beside a ladder's rungs (not a rung: no parent, tag `clipscale.reference`) holding an
    outside model's scores and, with --flops, the compute its authors state."""
    from clipscale.names import TAG_REFERENCE
    from clipscale.tracking import Tracker
    from clipscale.tracking import tracking_uri as resolve_uri

    tracker = Tracker.open(resolve_uri(tracking_uri), experiment)
    label = model if not pretrained else f"{model} ({os.path.basename(pretrained)})"
    # The same model evaluated again (new tasks, say) updates its reference run instead of adding one.
    run_id = tracker.run_by_tag(TAG_REFERENCE, label, run_name=f"reference: {label}")
    tracker.log_params(run_id, {"model": model, "pretrained": os.path.basename(pretrained or "")})
    extra = {"compute/flops": flops} if flops else {}
    tracker.log_metrics(run_id, {**metrics, **extra})
    tracker.finish(run_id, "FINISHED")
    return run_id


def register(subparsers) -> None:
    p = subparsers.add_parser("eval", help="zero-shot / retrieval / linear-probe evaluation of a checkpoint "
                                           "or any open_clip model")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", help="checkpoint folder (local or s3://) with clipscale.json")
    src.add_argument("--model", help="an open_clip model: local-dir:DIR (e.g. from `clipscale export`), "
                                     "or an architecture name with --pretrained FILE")
    p.add_argument("--pretrained", default=None, help="open_clip weights file on disk, for --model NAME")
    p.add_argument("--task", action="append", help="eval task (repeatable; default: all of clipscale's tasks)")
    p.add_argument("--eval-root", default=DEFAULT_EVAL_ROOT,
                   help=f"folder or s3:// prefix holding task folders (default {DEFAULT_EVAL_ROOT}; "
                        "clipscale's tasks are generated there if missing)")
    p.add_argument("--mlflow-run", default=None,
                   help="log metrics to this MLflow run id (tracking URI from MLFLOW_TRACKING_URI, "
                        f"default {DEFAULT_TRACKING_URI})")
    p.add_argument("--reference-for", default=None, metavar="EXPERIMENT",
                   help="log the scores as a reference run (tag clipscale.reference) in this ladder's experiment")
    p.add_argument("--flops", type=float, default=None,
                   help="the model's stated training compute, logged as compute/flops on the reference run")
    p.add_argument("--no-linear-probe", action="store_true", help="skip linear probes (faster)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--endpoint-url", default=None, help="S3-compatible endpoint (default: AWS_ENDPOINT_URL)")
    p.set_defaults(func=cmd_eval)
