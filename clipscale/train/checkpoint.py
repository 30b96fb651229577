"""The consolidated model inside a clipscale checkpoint folder: one owner for its file.

A final checkpoint holds, beside DeepSpeed's per-rank files, the whole model as one
state dict so that evaluation and export never need DeepSpeed. It is written as
safetensors (no pickle: safe to load from a shared bucket, and loadable lazily), and the
checkpoint's `clipscale.json` names the file under `model_file`. Folders written before
that carry `model.pt` (a torch-pickled state dict) and still load.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

MODEL_FILE = "model.safetensors"
LEGACY_MODEL_FILE = "model.pt"
META_KEY = "model_file"  # the field of clipscale.json that names the file
META_FILE = "clipscale.json"
# Beside a rung's Ray Train checkpoints: the models kept at train.keep_checkpoints_at, samples-<N 9 digits>/.
KEPT_DIR = "kept"


def kept_name(samples: int) -> str:
    return f"samples-{samples:09d}"


class CheckpointFileError(ValueError):
    """The checkpoint's model file is missing or unreadable; the message names the path."""


def write_model(folder: str | os.PathLike, state_dict: dict[str, torch.Tensor]) -> str:
    """Write `state_dict` as `folder/model.safetensors` and name it in `folder/clipscale.json`
    (when the folder has one); returns the file name.

    safetensors refuses shared or strided storage, so every tensor is made contiguous
    (a no-op for the consolidated dict, which is already a contiguous CPU copy)."""
    from safetensors.torch import save_file

    tensors = {k: v.detach().contiguous() for k, v in state_dict.items()}
    save_file(tensors, str(Path(folder, MODEL_FILE)), metadata={"format": "pt", "writer": "clipscale"})
    meta_path = Path(folder, META_FILE)
    if meta_path.is_file():
        meta = json.loads(meta_path.read_text())
        meta[META_KEY] = MODEL_FILE
        meta_path.write_text(json.dumps(meta, indent=1))
    return MODEL_FILE


def model_file(folder: str | os.PathLike, meta: dict | None) -> Path | None:
    """The consolidated model file of a checkpoint folder, or None if it has none (a
    non-final checkpoint, which only DeepSpeed's files describe)."""
    named = (meta or {}).get(META_KEY)
    if named:
        path = Path(folder, named)
        if not path.is_file():
            raise CheckpointFileError(f"{folder}: clipscale.json names {META_KEY}={named!r} but {path} is missing")
        return path
    legacy = Path(folder, LEGACY_MODEL_FILE)
    return legacy if legacy.is_file() else None


def read_model(folder: str | os.PathLike, meta: dict | None) -> dict[str, torch.Tensor] | None:
    """The consolidated state dict (CPU tensors, as trained: `logit_scale` may have shape (1,)),
    or None when the folder holds none."""
    path = model_file(folder, meta)
    if path is None:
        return None
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path), device="cpu")
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any decode failure is reported with the file's name
        raise CheckpointFileError(f"cannot read the model file {path}: {type(e).__name__}: {e}") from None
