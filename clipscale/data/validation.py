"""The validation split: which shards are held out, and the fixed batches `val/loss` reads.

A rung's validation loss must be comparable across rungs and across a rung's own
measurements, so it is always computed on the same samples, in the same order, with
the same deterministic eval transform (center crop; no augmentation). The split is
disjoint from training by construction: held-out shards never enter the training
shard list, and the synthetic corpus draws its validation samples from an RNG stream
of their own.
"""

from __future__ import annotations

import hashlib
import posixpath
from dataclasses import dataclass

import numpy as np

from clipscale.data import shards as shard_io
from clipscale.data import transforms
from clipscale.storage import StorageSettings


def _unit_hash(name: str) -> float:
    """A stable number in [0, 1) from a shard's file name (not its URI: the same corpus splits
    the same way wherever it lives)."""
    return int(hashlib.sha256(posixpath.basename(name).encode()).hexdigest()[:12], 16) / float(1 << 48)


def split_by_name(shards: tuple[str, ...], fraction: float) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(train, val): whole shards whose name hashes below `fraction` are held out. At least one
    shard is held out, and at least one is left to train on."""
    if len(shards) < 2:
        raise ValueError(f"data.val_fraction: {len(shards)} shard(s) cannot be split into training and "
                         "validation; name a validation split with data.val_shards instead")
    ranked = sorted(shards, key=_unit_hash)
    n_val = min(max(1, sum(_unit_hash(s) < fraction for s in shards)), len(shards) - 1)
    val = set(ranked[:n_val])
    return tuple(s for s in shards if s not in val), tuple(s for s in shards if s in val)


@dataclass
class ValSpec:
    """What a worker needs to measure `val/loss`: plain data."""

    shards: tuple[str, ...]
    samples: int
    batch_size: int
    every_samples: int
    settings: StorageSettings | None = None
    # A mixture's split: (a source's validation shards, its share of `samples`) per source.
    parts: tuple[tuple[tuple[str, ...], int], ...] = ()


def quotas(sources, samples: int) -> tuple[tuple[tuple[str, ...], int], ...]:
    """Each source's share of the validation set by weight (rounded so the shares sum to
    `samples`): the mixture's loss on a fixed set with the mixture's own proportions."""
    total = sum(s.weight for s in sources)
    out, cum, given = [], 0.0, 0
    for s in sources:
        cum += s.weight
        n = round(samples * cum / total) - given
        given += n
        if n:
            out.append((tuple(s.shards), n))
    return tuple(out)


def load_val_set(spec: ValSpec, image_size: int, context_length: int) -> tuple[np.ndarray, np.ndarray]:
    """The validation set as uint8 images (N x H x W x 3, center-cropped) and tokens: the first
    `spec.samples` usable samples of the split, in shard then tar order, or for a mixture each
    source's first ones by its share. Samples the training stream would skip are skipped."""
    from clipscale.data.pipeline import _tokenizer

    images, captions = [], []
    for shards, n in spec.parts or ((spec.shards, spec.samples),):
        got_images, got_captions = _first_usable(shards, n, image_size, spec.settings)
        images += got_images
        captions += got_captions
    if not images:
        raise ValueError(f"the validation split {spec.shards[0]} ... holds no usable sample")
    return np.stack(images), _tokenizer(context_length)(captions).numpy()


def _first_usable(shards: tuple[str, ...], n: int, image_size: int,
                  settings: StorageSettings | None) -> tuple[list[np.ndarray], list[str]]:
    from clipscale.data.pipeline import _caption

    images, captions = [], []
    for uri in shards:
        for sample in shard_io.iter_shard(uri, settings):
            image = next((sample[k] for k in ("jpg", "jpeg", "png", "webp") if sample.get(k)), None)
            text, reason = _caption(sample.get("txt"))
            if image is None or reason:
                continue
            try:
                images.append(transforms.center_crop_resize(transforms.decode_image(image), image_size))
            except Exception:  # noqa: BLE001 - a corrupt image is skipped, as in training
                continue
            captions.append(text)
            if len(images) == n:
                return images, captions
    return images, captions
