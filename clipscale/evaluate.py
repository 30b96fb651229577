"""Zero-shot classification, retrieval and linear probes for a CLIP model (Radford et al. 2021).

Metric functions are pure (tensors/arrays in, numbers out) so they can be tested
with hand-built embeddings; `evaluate_model` wires them to eval sets in the
CLIP_benchmark layout (clipscale.data.evalsets) and names results as the rest
of clipscale expects: `zeroshot/<task>/top1|error|top5|mean_per_class_recall`,
`retrieval/<task>/i2t_r1|...|t2i_r10`, `linear_probe/<task>/top1`.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image

from clipscale import storage
from clipscale.data import evalsets
from clipscale.data.transforms import eval_transform
from clipscale.names import zeroshot
from clipscale.storage import StorageError, StorageSettings

TOKENIZER_MODEL = "ViT-B-32"  # only picks open_clip's shipped BPE vocabulary; no weights are loaded


def get_tokenizer(context_length: int):
    import open_clip

    return open_clip.get_tokenizer(TOKENIZER_MODEL, context_length=context_length)


# -- encoders -----------------------------------------------------------------------

@torch.no_grad()
def encode_texts(model, tokenizer, texts: Sequence[str], device: str | torch.device = "cpu",
                 batch_size: int = 256) -> torch.Tensor:
    """L2-normalised text embeddings [N, D], in input order (puts the model in eval mode)."""
    model.eval()
    out = [model.encode_text(tokenizer(list(texts[i: i + batch_size])).to(device), normalize=True).float().cpu()
           for i in range(0, len(texts), batch_size)]
    return torch.cat(out) if out else torch.empty(0)


@torch.no_grad()
def encode_images(model, images: Sequence[np.ndarray] | np.ndarray, image_size: int,
                  device: str | torch.device = "cpu", batch_size: int = 256,
                  preprocess: Callable | None = None) -> torch.Tensor:
    """L2-normalised image embeddings [N, D] of uint8 HxWx3 images, via clipscale's eval
    transform, or `preprocess` (PIL image -> 3xHxW tensor, as open_clip returns it) when given
    (puts the model in eval mode)."""
    model.eval()
    if preprocess is None:
        def transform(im):
            return eval_transform(im, image_size)
    else:
        def transform(im):
            return preprocess(Image.fromarray(np.asarray(im, dtype=np.uint8)).convert("RGB"))
    out = []
    for i in range(0, len(images), batch_size):
        x = torch.stack([transform(im) for im in images[i: i + batch_size]]).to(device)
        out.append(model.encode_image(x, normalize=True).float().cpu())
    return torch.cat(out) if out else torch.empty(0)


def zeroshot_classifier(model, tokenizer, classnames: Sequence[str], templates: Sequence[str],
                        device: str | torch.device = "cpu", batch_size: int = 256) -> torch.Tensor:
    """Class weights [D, C] as in CLIP: per class, embed every template, L2-normalise each,
    average, and renormalise the mean (prompt ensembling, Radford et al. 2021 sec. 3.1.4)."""
    if not classnames or not templates:
        raise ValueError("zeroshot_classifier needs at least one class name and one template")
    texts = [t.replace("{c}", c) for c in classnames for t in templates]
    emb = encode_texts(model, tokenizer, texts, device, batch_size).view(len(classnames), len(templates), -1)
    return average_embeddings(emb).T.contiguous()


def average_embeddings(emb: torch.Tensor) -> torch.Tensor:
    """[C, T, D] -> [C, D]: normalise each of the T embeddings, average them, renormalise."""
    emb = torch.nn.functional.normalize(emb.float(), dim=-1).mean(dim=1)
    return torch.nn.functional.normalize(emb, dim=-1)


# -- metrics ------------------------------------------------------------------------

def classification_metrics(logits: torch.Tensor | np.ndarray, labels: torch.Tensor | np.ndarray,
                           n_classes: int | None = None) -> dict[str, Any]:
    """top1, top5 (only with >= 5 classes), mean_per_class_recall (over classes present)
    and per_class_accuracy (array, NaN for classes absent from labels)."""
    logits, labels = torch.as_tensor(logits).float(), torch.as_tensor(labels).long()
    n_classes = n_classes or logits.shape[1]
    if logits.ndim != 2 or logits.shape[0] != labels.shape[0] or logits.shape[1] != n_classes:
        raise ValueError(f"logits {tuple(logits.shape)} do not match labels {tuple(labels.shape)} / {n_classes} classes")
    out: dict[str, Any] = {"top1": topk_accuracy(logits, labels, 1)}
    if n_classes >= 5:
        out["top5"] = topk_accuracy(logits, labels, 5)
    pred = logits.argmax(dim=1)
    per_class = np.full(n_classes, np.nan)
    for c in range(n_classes):
        mask = labels == c
        if mask.any():
            per_class[c] = (pred[mask] == c).float().mean().item()
    out["mean_per_class_recall"] = float(np.nanmean(per_class)) if np.isfinite(per_class).any() else float("nan")
    out["per_class_accuracy"] = per_class
    return out


def topk_accuracy(logits: torch.Tensor, labels: torch.Tensor, k: int) -> float:
    if len(labels) == 0:
        return float("nan")
    # stable sort so ties resolve to the lower class index on every platform
    topk = torch.sort(logits, dim=1, descending=True, stable=True).indices[:, :k]
    return (topk == labels[:, None]).any(dim=1).float().mean().item()


def retrieval_metrics(similarity: torch.Tensor | np.ndarray, text_to_image: Sequence[int] | np.ndarray | None = None,
                      ks: Sequence[int] = (1, 5, 10)) -> dict[str, float]:
    """Recall@k both ways from similarity [n_images, n_texts]. `text_to_image[j]` is the image of
    caption j (default: the diagonal). An image counts as found when any of its captions is in
    its top k (CLIP_benchmark's convention); `_r1` is used in names because MLflow forbids '@'."""
    sim = torch.as_tensor(similarity).float()
    n_img, n_txt = sim.shape
    owner = torch.arange(n_txt) if text_to_image is None else torch.as_tensor(np.asarray(text_to_image)).long()
    if owner.shape != (n_txt,) or (n_txt and (owner.min() < 0 or owner.max() >= n_img)):
        raise ValueError(f"text_to_image must give one image index in 0..{n_img - 1} per text ({n_txt})")
    positive = owner[None, :] == torch.arange(n_img)[:, None]  # [n_img, n_txt]
    # rank of the best positive = number of entries strictly better than it (ties favour the model)
    best_pos_i2t = sim.masked_fill(~positive, float("-inf")).max(dim=1).values
    rank_i2t = (sim > best_pos_i2t[:, None]).sum(dim=1)
    pos_t2i = sim[owner, torch.arange(n_txt)]
    rank_t2i = (sim.T > pos_t2i[:, None]).sum(dim=1)
    out = {}
    for k in ks:
        out[f"i2t_r{k}"] = (rank_i2t < k).float().mean().item()
        out[f"t2i_r{k}"] = (rank_t2i < k).float().mean().item()
    return out


# -- linear probe ---------------------------------------------------------------------

def linear_probe(features: np.ndarray | torch.Tensor, labels: np.ndarray | torch.Tensor, seed: int = 0,
                 fractions: tuple[float, float] = (0.6, 0.2), Cs: Sequence[float] | None = None) -> float:
    """Top-1 of L2-regularised logistic regression on frozen features (CLIP paper, appendix A.3).

    Split train/val/test by `fractions` (seeded); choose C on val by a log sweep over the
    paper's lambda range [1e-6, 1e6] refined once around the best; refit on train+val; score test."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from threadpoolctl import threadpool_limits

    X, y = np.asarray(features, dtype=np.float64), np.asarray(labels)
    n = len(y)
    if n < 10 or len(np.unique(y)) < 2:
        raise ValueError(f"linear probe needs >= 10 samples of >= 2 classes, got {n} of {len(np.unique(y))}")
    order = np.random.default_rng(seed).permutation(n)
    n_tr, n_val = int(fractions[0] * n), int(fractions[1] * n)
    tr, val, te = order[:n_tr], order[n_tr: n_tr + n_val], order[n_tr + n_val:]

    def fit(C: float, idx: np.ndarray):
        if len(np.unique(y[idx])) < 2:
            return None
        # One BLAS thread: these problems are tiny, and thread start-up and contention with
        # other processes made lbfgs 10-20x slower on a 2-core machine.
        with warnings.catch_warnings(), threadpool_limits(limits=1):
            warnings.simplefilter("ignore", ConvergenceWarning)
            return LogisticRegression(C=C, max_iter=300).fit(X[idx], y[idx])

    def val_acc(C: float) -> float:
        clf = fit(C, tr)
        return 0.0 if clf is None else float((clf.predict(X[val]) == y[val]).mean())

    grid = list(Cs) if Cs is not None else [10.0 ** e for e in range(-6, 7, 2)]
    scores = {C: val_acc(C) for C in grid}
    best = max(grid, key=lambda C: (scores[C], -C))  # ties go to the stronger regularisation
    if Cs is None:
        for C in (best / 10, best * 10):
            scores[C] = val_acc(C)
        best = max(scores, key=lambda C: (scores[C], -C))
    clf = fit(best, np.concatenate([tr, val]))
    return float((clf.predict(X[te]) == y[te]).mean()) if clf is not None else float("nan")


_linear_probe = linear_probe  # evaluate_model's flag of the same name shadows the function


# -- whole-model evaluation ------------------------------------------------------------

def _sizes(spec: Any) -> tuple[int, int]:
    if isinstance(spec, (tuple, list)) and len(spec) == 2:
        return int(spec[0]), int(spec[1])
    if isinstance(spec, dict):
        return int(spec["image_size"]), int(spec["context_length"])
    return int(spec.image_size), int(spec.context_length)


def evaluate_model(model, spec_or_image_size_and_context: Any, tasks: Sequence[str], eval_root: str,
                   device: str | torch.device | None = None, batch_size: int = 256, linear_probe: bool = True,
                   settings: StorageSettings | None = None, seed: int = 0, preprocess: Callable | None = None,
                   tokenizer: Callable | None = None, averages: bool = False) -> dict[str, float]:
    """Evaluate `model` on task folders under `eval_root`; returns flat metric names -> floats.

    A folder with `classnames.txt` is scored zero-shot (+ linear probe); one without, as
    retrieval. With `averages`, the averages over the zero-shot tasks are added (`aggregate_scores`;
    the chance-normalised one is negative below chance, unlike every per-task score).
    `preprocess` and `tokenizer` (open_clip's, for a model from elsewhere) replace clipscale's
    eval transform and tokenizer. The model stays where it is (`device` defaults to that of its
    parameters) and gets its train/eval mode back afterwards, so a training loop can call this."""
    image_size, context_length = _sizes(spec_or_image_size_and_context)
    device = device or next(model.parameters()).device
    tokenizer = tokenizer or get_tokenizer(context_length)
    was_training = model.training
    metrics: dict[str, float] = {}
    try:
        for task in tasks:
            metrics.update(_evaluate_task(model, task, eval_root, Encoding(image_size, tokenizer, preprocess),
                                          device, batch_size, linear_probe, settings, seed))
    finally:
        model.train(was_training)
    if averages:
        metrics.update(aggregate_scores(metrics))
    return metrics


AVERAGE = "average"  # the pseudo-task the averages are logged under: zeroshot/average/...


def aggregate_scores(metrics: dict[str, float]) -> dict[str, float]:
    """`zeroshot/average/top1|error` (the plain mean over zero-shot tasks) and
    `zeroshot/average/normalized_top1`, the mean of (top1 - chance) / (1 - chance): 0 at
    chance and 1 when perfect on every task, so a 2-way task cannot dominate a 64-way one.
    Needs each task's `zeroshot/<task>/chance`; empty when there is no zero-shot task."""
    tasks = sorted({k.split("/")[1] for k in metrics if k.startswith("zeroshot/") and k.endswith("/top1")} - {AVERAGE})
    if not tasks:
        return {}
    top1 = [metrics[zeroshot(t, "top1")] for t in tasks]
    out = {zeroshot(AVERAGE, "top1"): float(np.mean(top1)), zeroshot(AVERAGE, "error"): 1.0 - float(np.mean(top1))}
    chance = [metrics.get(zeroshot(t, "chance")) for t in tasks]
    if all(c is not None and c < 1.0 for c in chance):
        out[zeroshot(AVERAGE, "normalized_top1")] = float(np.mean([(a - c) / (1.0 - c) for a, c in zip(top1, chance)]))
    return out


def chance_level(n_classes: int) -> float:
    """Top-1 of guessing uniformly among the task's classes."""
    return 1.0 / n_classes


@dataclass
class Encoding:
    image_size: int
    tokenizer: Callable
    preprocess: Callable | None = None


def _evaluate_task(model, task: str, eval_root: str, enc: Encoding, device, batch_size: int,
                   probe: bool, settings: StorageSettings | None, seed: int) -> dict[str, float]:
    uri = storage.join(eval_root, task)
    if not storage.exists(storage.join(uri, evalsets.CLASSNAMES), settings):
        ds = evalsets.load_retrieval(uri, settings=settings)
        img = encode_images(model, ds.images, enc.image_size, device, batch_size, enc.preprocess)
        txt = encode_texts(model, enc.tokenizer, ds.captions, device, batch_size)
        return {f"retrieval/{task}/{k}": v for k, v in retrieval_metrics(img @ txt.T, ds.text_to_image).items()}
    ds = evalsets.load_task(uri, settings=settings)
    out, img = score_zeroshot(model, task, ds, enc, device, batch_size)
    if probe and len(ds) >= 10 and len(np.unique(ds.labels)) >= 2:  # too small a set has no probe to report
        out[f"linear_probe/{task}/top1"] = _linear_probe(img.numpy(), ds.labels, seed=seed)
    return out


def score_zeroshot(model, task: str, ds: evalsets.EvalSet, enc: Encoding, device,
                   batch_size: int) -> tuple[dict[str, float], torch.Tensor]:
    """The zero-shot metrics of one loaded classification set, and its image embeddings.
    Split from loading so that a training loop scoring the same set again loads it once."""
    img = encode_images(model, ds.images, enc.image_size, device, batch_size, enc.preprocess)
    weights = zeroshot_classifier(model, enc.tokenizer, ds.classnames, ds.templates, device, batch_size)
    m = classification_metrics(img @ weights, ds.labels, len(ds.classnames))
    out = {zeroshot(task, "top1"): m["top1"]}
    out[zeroshot(task, "error")] = 1.0 - m["top1"]
    out[zeroshot(task, "chance")] = chance_level(len(ds.classnames))
    if "top5" in m:
        out[zeroshot(task, "top5")] = m["top5"]
    out[zeroshot(task, "mean_per_class_recall")] = m["mean_per_class_recall"]
    return out, img


# -- checkpoints ------------------------------------------------------------------------

CHECKPOINT_META = "clipscale.json"
PLAIN_STATE = "model.pt"  # the legacy consolidated file; clipscale.train.checkpoint owns both names


@dataclass
class CheckpointState:
    """What a checkpoint folder holds, read without building a model."""

    state: dict  # consolidated state dict as trained (logit_scale may have shape (1,))
    spec: Any  # clipscale.model.ModelSpec
    meta: dict  # the folder's clipscale.json


def load_checkpoint_model(path_or_uri: str, settings: StorageSettings | None = None,
                          device: str | torch.device = "cpu"):
    """(model, spec) from a clipscale checkpoint folder (local or s3://), in eval mode."""
    from clipscale.model import build_model

    ckpt = load_checkpoint_state(path_or_uri, settings)
    model = build_model(ckpt.spec, objective="siglip" if "logit_bias" in ckpt.state else "clip")
    model.load_state_dict(_fit_state(ckpt.state, model), strict=True)
    return model.to(device).eval(), ckpt.spec


def load_checkpoint_state(path_or_uri: str, settings: StorageSettings | None = None) -> CheckpointState:
    """The consolidated weights, spec and meta of a checkpoint folder: `clipscale.json` + the
    model file it names (`model.safetensors`, or a legacy `model.pt`), else DeepSpeed files under
    `<tag>/` (ZeRO shards are consolidated). s3:// folders are downloaded to a temporary directory."""
    if storage.is_s3(path_or_uri):
        tmp = tempfile.mkdtemp(prefix="clipscale-ckpt-")
        try:
            _download_model_only(path_or_uri, tmp, settings) or _download(path_or_uri, tmp, settings)
            return _load_local(tmp, path_or_uri)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return _load_local(os.path.abspath(os.path.expanduser(path_or_uri)), path_or_uri)


def _download_model_only(uri: str, dest: str, settings: StorageSettings | None) -> bool:
    """Fetch just `clipscale.json` and the consolidated model file when the folder has one: the
    DeepSpeed files beside them (optimizer states included) are several times the model's size."""
    from clipscale.train import checkpoint

    meta_uri = storage.join(uri, CHECKPOINT_META)
    if not storage.exists(meta_uri, settings):
        return False
    meta_bytes = storage.read_bytes(meta_uri, settings)
    name = json.loads(meta_bytes).get(checkpoint.META_KEY) or checkpoint.LEGACY_MODEL_FILE
    if not storage.exists(storage.join(uri, name), settings):
        return False
    with open(os.path.join(dest, CHECKPOINT_META), "wb") as f:
        f.write(meta_bytes)
    _download(storage.join(uri, name), os.path.join(dest, name), settings)  # streamed, not held in memory
    return True


def _download(uri: str, dest: str, settings: StorageSettings | None) -> None:
    import pyarrow.fs as pafs

    fs, path = storage.resolve(uri, settings)
    try:
        pafs.copy_files(path, dest, source_filesystem=fs, destination_filesystem=pafs.LocalFileSystem())
    except (OSError, FileNotFoundError) as e:
        raise StorageError(f"cannot download checkpoint {uri}: {storage.scrub(str(e))}") from None


def _load_local(folder: str, shown: str) -> CheckpointState:
    from clipscale.model import ModelSpec
    from clipscale.train import checkpoint

    meta_path = os.path.join(folder, CHECKPOINT_META)
    if not os.path.isfile(meta_path):
        raise StorageError(f"{shown}: no {CHECKPOINT_META} (not a clipscale checkpoint folder)")
    with open(meta_path) as f:
        meta = json.load(f)
    if "model" not in meta:
        raise StorageError(f"{shown}/{CHECKPOINT_META}: missing the 'model' field (a ModelSpec dict)")
    spec = ModelSpec.from_dict(meta["model"], prefix=f"{CHECKPOINT_META}:model")
    try:
        state = checkpoint.read_model(folder, meta)
    except checkpoint.CheckpointFileError as e:
        raise StorageError(f"{shown}: {e}") from None
    if state is None:
        state = _deepspeed_state(folder, shown, meta.get("tag"))
    return CheckpointState(state, spec, meta)


def _deepspeed_state(folder: str, shown: str, tag: str | None) -> dict:
    if tag is None:
        latest = os.path.join(folder, "latest")
        if not os.path.isfile(latest):
            raise StorageError(f"{shown}: no consolidated model file, no 'tag' in {CHECKPOINT_META} "
                               "and no 'latest' file")
        tag = open(latest).read().strip()
    if not os.path.isdir(os.path.join(folder, tag)):
        raise StorageError(f"{shown}: DeepSpeed tag folder {tag!r} not found")
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    return get_fp32_state_dict_from_zero_checkpoint(folder, tag)


def _fit_state(state: dict, model: torch.nn.Module) -> dict:
    """Undo training-time wrappers: a `module.` prefix, and logit_scale reshaped to (1,)
    for DeepSpeed's broadcast (ARCHITECTURE.md, "Stack facts") in either direction."""
    if "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    state = {k.removeprefix("module."): v for k, v in state.items()}
    target = model.state_dict()
    for key in ("logit_scale", "logit_bias"):
        if key in state and key in target and state[key].shape != target[key].shape:
            state[key] = state[key].reshape(target[key].shape)
    return state
