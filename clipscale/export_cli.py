"""`clipscale export`: a rung (MLflow run or checkpoint folder) -> open_clip's local-dir layout."""

from __future__ import annotations

import argparse
import sys

from clipscale.storage import StorageError, StorageSettings


def cmd_export(args: argparse.Namespace) -> int:
    from clipscale import export

    settings = StorageSettings(endpoint_url=args.endpoint_url)
    try:
        if args.run_id:
            out = export.export_run(args.run_id, args.out, args.tracking_uri, settings)
        else:
            out = export.export_checkpoint(args.checkpoint, args.out, settings)
    except (StorageError, OSError, ValueError) as e:
        print(f"clipscale export: {e}", file=sys.stderr)
        return 1
    print(f"wrote {out}: load it with open_clip.create_model_and_transforms('local-dir:{out}')")
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser("export", help="write a rung as an open_clip local-dir model (open_clip_config.json "
                                             "+ open_clip_model.safetensors + clipscale.json)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--run-id", help="the rung's MLflow child run: its model/ artifacts, else its checkpoint")
    src.add_argument("--checkpoint", help="a clipscale checkpoint folder (local or s3://), final or intermediate")
    p.add_argument("--out", required=True, help="folder to write (created)")
    p.add_argument("--tracking-uri", default=None,
                   help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db)")
    p.add_argument("--endpoint-url", default=None, help="S3-compatible endpoint (default: AWS_ENDPOINT_URL)")
    p.set_defaults(func=cmd_export)
