"""A rung leaves clipscale as open_clip's local-dir layout.

    DIR/open_clip_config.json      {"model_cfg": ..., "preprocess_cfg": ...}
    DIR/open_clip_model.safetensors
    DIR/clipscale.json             rung, config hash, samples, FLOPs, the MLflow run

`open_clip.create_model_and_transforms("local-dir:DIR")` and `open_clip.get_tokenizer("local-dir:DIR")`
load it offline (open_clip >= 3.3). The preprocess_cfg reproduces clipscale's eval transform
(clipscale.data.transforms.eval_transform: resize the short side bicubically, center crop, CLIP's
mean/std), so open_clip's own pipeline scores the numbers clipscale logged.

Each finished rung's export is also logged under `model/` on its child run (`log_rung_model`),
so `mlflow artifacts download` + `local-dir:` is a usable model.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from clipscale import storage
from clipscale.storage import StorageError, StorageSettings

CONFIG_FILE = "open_clip_config.json"  # the names open_clip's local-dir loader looks for
WEIGHTS_FILE = "open_clip_model.safetensors"
INFO_FILE = "clipscale.json"
ARTIFACT_PATH = "model"  # on the child run: model/open_clip_config.json, ...
KEPT_ARTIFACT_PATH = "checkpoints"  # checkpoints/samples-<N>/: the models kept at train.keep_checkpoints_at
TAG_CHECKPOINT = "clipscale.checkpoint"
TAG_MODEL_ARTIFACT = "clipscale.model_artifact"
_SCALARS = ("logit_scale", "logit_bias")  # trained with shape (1,) for DeepSpeed; 0-dim in open_clip


@dataclass
class ExportInfo:
    """What `clipscale.json` records beside the weights: where the model came from."""

    rung: str | None = None
    config_hash: str | None = None
    samples: int | None = None
    train_flops: int | None = None
    mlflow_run_id: str | None = None
    mlflow_experiment_id: str | None = None
    checkpoint: str | None = None
    model: dict = field(default_factory=dict)  # the clipscale ModelSpec
    zeroshot: dict = field(default_factory=dict)  # task -> top1 as the run recorded it


# ---- the layout -----------------------------------------------------------------------------


def preprocess_cfg(image_size: int) -> dict[str, Any]:
    """open_clip's PreprocessCfg fields that rebuild clipscale's eval transform."""
    from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD

    return {"size": image_size, "mode": "RGB", "mean": list(OPENAI_DATASET_MEAN), "std": list(OPENAI_DATASET_STD),
            "interpolation": "bicubic", "resize_mode": "shortest", "fill_color": 0}


def open_clip_config(spec, state: dict[str, torch.Tensor] | None = None) -> dict[str, Any]:
    """`open_clip_config.json` for a clipscale ModelSpec. A state with `logit_bias` (a SigLIP
    loss) gets `init_logit_bias`, without which open_clip builds no bias to load it into."""
    model_cfg = spec.open_clip_cfg()
    if state is not None and "logit_bias" in state:
        model_cfg["init_logit_bias"] = float(state["logit_bias"].flatten()[0])
    return {"model_cfg": model_cfg, "preprocess_cfg": preprocess_cfg(spec.image_size)}


def open_clip_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A trained state dict as open_clip's CLIP expects it: no `module.` prefix, and the
    scalar parameters 0-dim again (clipscale.train.loss.flatten_scalar_params_ made them (1,))."""
    out = {}
    for key, value in state.items():
        key = key.removeprefix("module.")
        if key in _SCALARS and value.numel() == 1:
            value = value.reshape(())
        out[key] = value.detach().to("cpu", torch.float32).contiguous()
    return out


def state_mb(state: dict[str, torch.Tensor]) -> float:
    """Size of the exported weights in MB (fp32), known before anything is written."""
    return sum(v.numel() * 4 for v in state.values()) / 1e6


def write_local_dir(out: str | os.PathLike, state: dict[str, torch.Tensor], spec, info: ExportInfo) -> Path:
    """Write the local-dir layout into `out` (created; existing files of the layout are replaced)."""
    from safetensors.torch import save_file

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    state = open_clip_state(state)
    (out / CONFIG_FILE).write_text(json.dumps(open_clip_config(spec, state), indent=1))
    save_file(state, str(out / WEIGHTS_FILE), metadata={"format": "pt", "writer": "clipscale"})
    info.model = info.model or spec.to_dict()
    (out / INFO_FILE).write_text(json.dumps(asdict(info), indent=1))
    return out


@dataclass
class LocalModel:
    model: Any  # open_clip.CLIP, in eval mode
    preprocess: Any  # open_clip's eval transform (PIL image -> tensor)
    tokenizer: Any
    info: dict  # clipscale.json, {} for a folder clipscale did not write


def load_local_dir(folder: str | os.PathLike, device: str = "cpu") -> LocalModel:
    """Read an export back the way any open_clip user would: through `local-dir:`."""
    import open_clip

    folder = Path(folder).resolve()
    if not (folder / CONFIG_FILE).is_file():
        raise StorageError(f"{folder}: no {CONFIG_FILE} (not an open_clip local-dir model)")
    name = f"local-dir:{folder}"
    model, _, preprocess = open_clip.create_model_and_transforms(name, device=device, require_pretrained=True)
    info_path = folder / INFO_FILE
    info = json.loads(info_path.read_text()) if info_path.is_file() else {}
    return LocalModel(model.eval(), preprocess, open_clip.get_tokenizer(name), info)


# ---- sources: a checkpoint folder, or an MLflow run ------------------------------------------


def export_checkpoint(checkpoint_uri: str, out: str | os.PathLike, settings: StorageSettings | None = None,
                      info: ExportInfo | None = None) -> Path:
    """Export a clipscale checkpoint folder (local or s3://; final or intermediate: without a
    consolidated model file, DeepSpeed's ZeRO shards are consolidated)."""
    from clipscale.evaluate import load_checkpoint_state
    from clipscale.model import forward_flops

    ckpt = load_checkpoint_state(checkpoint_uri, settings)
    info = info or ExportInfo()
    rung = ckpt.meta.get("rung", {})
    samples = (ckpt.meta.get("state") or {}).get("samples_seen")
    info.rung = info.rung or rung.get("name")
    info.samples = info.samples if info.samples is not None else samples
    if info.train_flops is None and info.samples is not None:
        info.train_flops = 3 * forward_flops(ckpt.spec) * int(info.samples)
    info.checkpoint = info.checkpoint or storage.scrub(checkpoint_uri)
    return write_local_dir(out, ckpt.state, ckpt.spec, info)


def export_run(run_id: str, out: str | os.PathLike, tracking_uri: str | None = None,
               settings: StorageSettings | None = None) -> Path:
    """Export a rung's child run: its logged `model/` artifacts if it has them, else its
    checkpoint (tag `clipscale.checkpoint`)."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    from clipscale.tracking import TAG_HASH, TAG_RUNG
    from clipscale.tracking import tracking_uri as resolve_uri

    client = MlflowClient(resolve_uri(tracking_uri))
    try:
        run = client.get_run(run_id)
    except MlflowException as e:
        raise StorageError(f"MLflow run {run_id!r} not found at {storage.scrub(client.tracking_uri)}: "
                           f"{e.message}") from None
    if any(a.path == f"{ARTIFACT_PATH}/{CONFIG_FILE}" for a in client.list_artifacts(run_id, ARTIFACT_PATH)):
        return _download_model(client, run_id, Path(out))
    checkpoint = run.data.tags.get(TAG_CHECKPOINT)
    if not checkpoint:
        raise StorageError(f"MLflow run {run_id} has no {ARTIFACT_PATH}/ artifacts and no {TAG_CHECKPOINT} tag: "
                           "is it a finished clipscale rung? Pass --checkpoint with its checkpoint folder instead")
    metrics = run.data.metrics
    info = ExportInfo(rung=run.data.tags.get(TAG_RUNG), config_hash=run.data.tags.get(TAG_HASH),
                      samples=_int(metrics.get("compute/samples")), train_flops=_int(metrics.get("compute/flops")),
                      mlflow_run_id=run_id, mlflow_experiment_id=run.info.experiment_id,
                      zeroshot=_zeroshot(metrics))
    return export_checkpoint(checkpoint, out, settings, info)


def _download_model(client, run_id: str, out: Path) -> Path:
    with tempfile.TemporaryDirectory(prefix="clipscale-export-") as tmp:
        local = Path(client.download_artifacts(run_id, ARTIFACT_PATH, tmp))
        out.mkdir(parents=True, exist_ok=True)
        for item in local.iterdir():
            shutil.copy2(item, out / item.name)
    return out


def _int(value) -> int | None:
    return None if value is None else int(value)


def _zeroshot(metrics: dict[str, float]) -> dict[str, float]:
    return {k.split("/")[1]: v for k, v in metrics.items() if k.startswith("zeroshot/") and k.endswith("/top1")}


# ---- the rung's model on its child run --------------------------------------------------------


def checkpoint_uri(cfg, path: str) -> str:
    """A Ray Train checkpoint path as a URI: on S3 storage Ray gives `bucket/prefix/...`."""
    if storage.is_s3(cfg.cluster.storage_path) and not storage.is_s3(path):
        return "s3://" + path.lstrip("/")
    return path


def log_rung_model(tracker, run_id: str, cfg, result) -> str | None:
    """Log a finished rung's export under `model/` on its child run; returns what happened
    (also the tag `clipscale.model_artifact`). Never raises: the rung's results already stand."""
    if result.status != "finished" or not result.checkpoint:
        return None
    uri = checkpoint_uri(cfg, result.checkpoint)
    tracker.set_tags(run_id, {TAG_CHECKPOINT: storage.scrub(uri)})
    if not cfg.eval.log_model:
        return _note(tracker, run_id, "off (eval.log_model: false)")
    try:
        return _log_export(tracker, run_id, cfg, result, uri)
    except Exception as e:  # noqa: BLE001 - a failed upload must not fail a trained rung
        return _note(tracker, run_id, f"failed: {type(e).__name__}: {storage.scrub(str(e))}", warn=True)


def _log_export(tracker, run_id: str, cfg, result, uri: str, artifact_path: str = ARTIFACT_PATH,
                samples: int | None = None) -> str:
    """The checkpoint at `uri` exported under `artifact_path` on the run: the final model, or one
    kept at `samples`."""
    from clipscale.evaluate import load_checkpoint_state
    from clipscale.model import forward_flops

    ckpt = load_checkpoint_state(uri, cfg.data.storage)
    size = state_mb(ckpt.state)
    final = samples is None
    if size > cfg.eval.max_model_mb:
        source = f"--run-id {run_id}" if final else f"--checkpoint {storage.scrub(uri)}"
        what = (f"skipped: the model is {size:.0f} MB, above eval.max_model_mb={cfg.eval.max_model_mb:g}; "
                f"`clipscale export {source} --out DIR` exports it from the checkpoint")
        if final:  # the run's model-artifact tag speaks of model/ only
            return _note(tracker, run_id, what, warn=True)
        print(f"clipscale: run {run_id}: kept model at {samples} samples {what}", file=sys.stderr, flush=True)
        return what
    rung = next((r for r in cfg.ladder.rungs if r.name == result.rung), None)
    samples = result.samples_seen if final else samples
    info = ExportInfo(rung=result.rung, config_hash=cfg.rung_hash(rung) if rung else None, samples=samples,
                      train_flops=(result.train_flops if final else 0) or 3 * forward_flops(ckpt.spec) * samples,
                      mlflow_run_id=run_id, mlflow_experiment_id=tracker.experiment_id, checkpoint=storage.scrub(uri),
                      zeroshot=_zeroshot(result.eval) if final else {})
    with tempfile.TemporaryDirectory(prefix="clipscale-export-") as tmp:
        write_local_dir(tmp, ckpt.state, ckpt.spec, info)
        tracker.log_artifacts(run_id, tmp, artifact_path)
    return _note(tracker, run_id, f"logged ({size:.1f} MB)") if final else f"logged ({size:.1f} MB)"


def log_kept_models(tracker, run_id: str, cfg, result) -> list[str]:
    """Log each model kept at `train.keep_checkpoints_at` under `checkpoints/samples-<N>/` on the
    run (the same open_clip layout as `model/`); returns the artifact paths logged. A kept model
    that is missing (a point past the rung's budget) is skipped; a failed upload is reported."""
    from clipscale.train.checkpoint import KEPT_DIR, META_FILE, kept_name

    if result.status != "finished" or not result.checkpoint or not cfg.eval.log_model:
        return []
    root = storage.join(checkpoint_uri(cfg, result.checkpoint).rstrip("/").rsplit("/", 1)[0], KEPT_DIR)
    logged = []
    for samples in sorted(set(cfg.train.keep_checkpoints_at)):
        uri, path = storage.join(root, kept_name(samples)), f"{KEPT_ARTIFACT_PATH}/samples-{samples}"
        try:
            if not storage.exists(storage.join(uri, META_FILE), cfg.data.storage):
                continue
            if _log_export(tracker, run_id, cfg, result, uri, path, samples).startswith("logged"):
                logged.append(path)
        except Exception as e:  # noqa: BLE001 - a failed upload must not fail a trained rung
            print(f"clipscale: run {run_id}: kept model at {samples} samples not logged: "
                  f"{type(e).__name__}: {storage.scrub(str(e))}", file=sys.stderr, flush=True)
    return logged


def _note(tracker, run_id: str, what: str, warn: bool = False) -> str:
    tracker.set_tags(run_id, {TAG_MODEL_ARTIFACT: what})
    if warn:
        print(f"clipscale: run {run_id}: model artifact {what}", file=sys.stderr, flush=True)
    return what
