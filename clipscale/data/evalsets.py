"""Evaluation sets in the CLIP_benchmark webdataset layout: write them, read them, build ours.

A task folder (local or s3://) holds `classnames.txt` (one class per line),
`zeroshot_classification_templates.txt` (one prompt per line, `{c}` for the
class) and `{split}/0.tar, 1.tar, ...` (+ `nshards.txt`) whose samples carry an
image (`png|jpg|jpeg|webp`) and a `cls` (integer label as text). Retrieval
folders have no classnames; their samples carry `txt` (captions, one per line).

`ensure_eval_sets` writes clipscale's own tasks once: the synthetic probes of
shape/color/composition/position/count/digits (each also as `<task>-shift`, a
rendering training never sees), scikit-learn's 1,797 real handwritten digits,
and held-out synthetic image-caption pairs for retrieval. Eval images are drawn
from RNG streams `[EVAL_STREAM, crc32(task), seed, i]`, disjoint from training's.
"""

from __future__ import annotations

import io
import json
import re
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from clipscale import storage
from clipscale.data import shards
from clipscale.data import synthetic as syn
from clipscale.storage import StorageError, StorageSettings

EVAL_STREAM = 1  # training uses syn.TRAIN_STREAM = 0
EVALSET_VERSION = 1
IMAGE_EXTS = ("png", "jpg", "jpeg", "webp")
CLASSNAMES = "classnames.txt"
TEMPLATES_FILE = "zeroshot_classification_templates.txt"
META = "meta.json"  # written last: its presence marks a complete task folder

# Prompts in the spirit of CLIP's ImageNet templates, phrased like the corpus captions.
OBJECT_TEMPLATES = ("a photo of a {c}.", "a picture of a {c}.", "a drawing of a {c}.", "an image of a {c}.",
                    "a rendering of a {c}.", "there is a {c}.", "a simple graphic of a {c}.", "{c}.")
COLOR_TEMPLATES = ("a photo of a {c} shape.", "a picture of a {c} object.", "a drawing of a {c} thing.",
                   "an image of a {c} figure.", "a {c} shape.", "there is a {c} object.")
POSITION_TEMPLATES = ("a shape in the {c}.", "a photo of an object in the {c}.", "there is a shape in the {c}.",
                      "a picture of a thing in the {c}.", "an object in the {c} of the image.")
COUNT_TEMPLATES = ("a photo of {c} shapes.", "a picture of {c} objects.", "{c} shapes.", "there are {c} things.",
                   "an image with {c} objects.")
DIGIT_TEMPLATES = ("a photo of the number {c}.", "the digit {c}.", "a picture of the number {c}.",
                   "an image of the digit {c}.", "the numeral {c}.")

_NOVEL = sorted(syn.HELD_OUT_PAIRS)
# task -> (scene kind, allowed (color, shape) pairs, classnames, templates, label of a scene)
_SYNTHETIC = {
    "shape": ("shape", syn.SEEN_PAIRS, list(syn.SHAPES), OBJECT_TEMPLATES, lambda s: syn.SHAPES.index(s["shape"])),
    "color": ("shape", syn.SEEN_PAIRS, list(syn.COLORS), COLOR_TEMPLATES, lambda s: list(syn.COLORS).index(s["color"])),
    "shape_color": ("shape", syn.SEEN_PAIRS, [f"{c} {s}" for c, s in syn.SEEN_PAIRS], OBJECT_TEMPLATES,
                    lambda s: syn.SEEN_PAIRS.index((s["color"], s["shape"]))),
    "position": ("shape", syn.SEEN_PAIRS, list(syn.POSITIONS), POSITION_TEMPLATES,
                 lambda s: syn.POSITIONS.index(s["position"])),
    "count": ("count", syn.SEEN_PAIRS, list(syn.COUNT_WORDS), COUNT_TEMPLATES, lambda s: s["count"] - 1),
    "digit": ("digit", syn.SEEN_PAIRS, [str(d) for d in range(10)], DIGIT_TEMPLATES, lambda s: s["digit"]),
    "novel": ("shape", _NOVEL, [f"{c} {s}" for c, s in _NOVEL], OBJECT_TEMPLATES,
              lambda s: _NOVEL.index((s["color"], s["shape"]))),
}
SYNTHETIC_TASKS = tuple(_SYNTHETIC)
SHIFT_TASKS = tuple(f"{t}-shift" for t in SYNTHETIC_TASKS)
CLASSIFICATION_TASKS = (*SYNTHETIC_TASKS, *SHIFT_TASKS, "digits_uci")
RETRIEVAL_TASKS = ("retrieval",)
ALL_TASKS = (*CLASSIFICATION_TASKS, *RETRIEVAL_TASKS)
DEFAULT_TASKS = ALL_TASKS


@dataclass
class EvalSet:
    """A loaded task. Classification: classnames/templates/labels. Retrieval: captions and
    `text_to_image` (index of each caption's image); `labels` then numbers the images."""

    name: str
    classnames: list[str]
    templates: list[str]
    images: np.ndarray | list[np.ndarray]  # stacked N x H x W x 3 uint8 when all sizes agree
    labels: np.ndarray
    captions: list[str] = field(default_factory=list)
    text_to_image: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.labels)


# -- writing ------------------------------------------------------------------------

def write_task(out_uri: str, classnames: Sequence[str] | None, templates: Sequence[str] | None,
               samples: Iterable[dict], split: str = "test", shard_size: int = 1000,
               settings: StorageSettings | None = None, meta: dict | None = None) -> dict[str, int]:
    """Write one task folder. `samples` are dicts with `__key__`, one image ext (bytes) and
    `cls` (int) or `txt` (str). Returns samples per shard; `meta.json` is written last."""
    for name, lines in ((CLASSNAMES, classnames), (TEMPLATES_FILE, templates)):
        if lines:
            bad = [x for x in lines if "\n" in x] + ([t for t in lines if "{c}" not in t] if name == TEMPLATES_FILE else [])
            if bad:
                raise ValueError(f"{name}: bad entries {bad[:3]} (no newlines; templates need '{{c}}')")
            storage.write_bytes(storage.join(out_uri, name), ("\n".join(lines) + "\n").encode(), settings)
    storage.makedirs(storage.join(out_uri, split), settings)
    sizes: dict[str, int] = {}
    batch: list[dict] = []

    def flush() -> None:
        if batch:
            data, n = shards.tar_bytes(batch)
            name = f"{len(sizes)}.tar"  # CLIP_benchmark names shards 0.tar, 1.tar, ...
            storage.write_bytes(storage.join(out_uri, split, name), data, settings)
            sizes[name] = n
            batch.clear()

    for sample in samples:
        batch.append(sample)
        if len(batch) >= shard_size:
            flush()
    flush()
    storage.write_bytes(storage.join(out_uri, split, "nshards.txt"), f"{len(sizes)}\n".encode(), settings)
    shards.write_manifest(storage.join(out_uri, split), sizes, settings)
    info = {"split": split, "samples": sum(sizes.values()), "version": EVALSET_VERSION, **(meta or {})}
    storage.write_bytes(storage.join(out_uri, META), json.dumps(info, indent=1, sort_keys=True).encode(), settings)
    return sizes


# -- reading ------------------------------------------------------------------------

def _read_lines(uri: str, settings: StorageSettings | None) -> list[str]:
    return [ln.strip() for ln in storage.read_bytes(uri, settings).decode("utf-8").splitlines() if ln.strip()]


def _decode_image(data: bytes, where: str) -> np.ndarray:
    try:
        with Image.open(io.BytesIO(data)) as im:
            return np.asarray(im.convert("RGB"))  # any mode (L, P, RGBA, CMYK...) -> RGB
    except Exception as e:  # PIL raises several types for corrupt data
        raise StorageError(f"cannot decode image {where}: {e}") from None


def _iter_split(uri: str, split: str, settings: StorageSettings | None) -> Iterable[tuple[str, dict]]:
    root = storage.join(uri, split)
    tars = shards.list_shards(root, settings)
    # 0.tar, 1.tar, ..., 10.tar: numeric order where names are numbers, so labels keep write order
    tars.sort(key=lambda u: (0, int(m.group(1)), u) if (m := re.search(r"/(\d+)\.tar$", u)) else (1, 0, u))
    for tar in tars:
        for sample in shards.iter_shard(tar, settings):
            yield tar, sample


def _image_of(sample: dict, tar: str) -> np.ndarray:
    for ext in IMAGE_EXTS:
        if ext in sample:
            return _decode_image(sample[ext], f"{sample['__key__']}.{ext} in {tar}")
    raise StorageError(f"sample {sample['__key__']!r} in {tar} has no image ({'/'.join(IMAGE_EXTS)}); "
                       f"it has {sorted(k for k in sample if k != '__key__')}")


def _stack(images: list[np.ndarray]) -> np.ndarray | list[np.ndarray]:
    return np.stack(images) if images and len({im.shape for im in images}) == 1 else images


def load_task(uri: str, split: str = "test", settings: StorageSettings | None = None) -> EvalSet:
    """Read a CLIP_benchmark-layout classification task (local folder or s3:// prefix)."""
    cn_uri = storage.join(uri, CLASSNAMES)
    if not storage.exists(cn_uri, settings):
        raise StorageError(f"{cn_uri} not found: {uri} is not a classification task folder")
    classnames = _read_lines(cn_uri, settings)
    tpl_uri = storage.join(uri, TEMPLATES_FILE)
    templates = _read_lines(tpl_uri, settings) if storage.exists(tpl_uri, settings) else ["a photo of a {c}."]
    images, labels = [], []
    for tar, sample in _iter_split(uri, split, settings):
        if "cls" not in sample:
            raise StorageError(f"sample {sample['__key__']!r} in {tar} has no .cls label")
        try:
            label = int(sample["cls"].decode().strip())
        except ValueError:
            raise StorageError(f"sample {sample['__key__']!r} in {tar}: .cls is not an integer: {sample['cls'][:20]!r}") from None
        if not 0 <= label < len(classnames):
            raise StorageError(f"sample {sample['__key__']!r} in {tar}: label {label} outside 0..{len(classnames) - 1}")
        images.append(_image_of(sample, tar))
        labels.append(label)
    return EvalSet(_task_name(uri), classnames, templates, _stack(images), np.asarray(labels, dtype=np.int64))


def load_retrieval(uri: str, split: str = "test", settings: StorageSettings | None = None) -> EvalSet:
    """Read an image-caption retrieval set: each sample's `txt` may hold several captions, one a line."""
    images, captions, owner = [], [], []
    for tar, sample in _iter_split(uri, split, settings):
        if "txt" not in sample:
            raise StorageError(f"sample {sample['__key__']!r} in {tar} has no .txt caption")
        lines = [ln.strip() for ln in sample["txt"].decode("utf-8").splitlines() if ln.strip()]
        if not lines:
            raise StorageError(f"sample {sample['__key__']!r} in {tar} has an empty caption")
        owner += [len(images)] * len(lines)
        captions += lines
        images.append(_image_of(sample, tar))
    return EvalSet(_task_name(uri), [], [], _stack(images), np.arange(len(images)), captions,
                   np.asarray(owner, dtype=np.int64))


def _task_name(uri: str) -> str:
    return uri.rstrip("/").rsplit("/", 1)[-1]


# -- clipscale's own tasks ------------------------------------------------------------

def load_uci_digits(image_size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's bundled 1,797 handwritten digits (UCI; 8x8, ink 0..16) as RGB images.

    Rendered as light ink on black, the polarity of the corpus's neutral digits, with a
    1-cell margin so the glyph fills ~80% of the frame like a large training digit."""
    from sklearn.datasets import load_digits

    d = load_digits()
    out = np.empty((len(d.images), image_size, image_size, 3), dtype=np.uint8)
    for k, grid in enumerate(d.images):
        padded = np.pad(np.clip(grid / 16.0 * 255.0, 0, 255).round().astype(np.uint8), 1)
        big = Image.fromarray(padded, mode="L").resize((image_size, image_size), Image.BICUBIC)
        out[k] = np.asarray(big.convert("RGB"))
    return out, d.target.astype(np.int64)


def _rng(task: str, seed: int, i: int) -> np.random.Generator:
    return np.random.default_rng([EVAL_STREAM, zlib.crc32(task.encode()), int(seed), int(i)])


def synthetic_task_samples(task: str, n: int, seed: int, image_size: int = 32) -> Iterable[dict]:
    """Samples of a synthetic task (`shape`, ..., or `<task>-shift`)."""
    base, shift = (task[: -len("-shift")], True) if task.endswith("-shift") else (task, False)
    if base not in _SYNTHETIC:
        raise ValueError(f"unknown synthetic task {task!r}; expected one of {list(SYNTHETIC_TASKS + SHIFT_TASKS)}")
    kind, pairs, _, _, label_of = _SYNTHETIC[base]
    for i in range(n):
        rng = _rng(task, seed, i)
        # A huge shape has nowhere to move, so position-shift uses only the tiny odd size.
        scene = syn.sample_scene(rng, kind, pairs=pairs, shift=shift,
                                 shift_sizes=("tiny",) if base == "position" else ("tiny", "huge"))
        yield {"__key__": f"{i:06d}", "png": syn.png_bytes(syn.render(scene, image_size, rng)), "cls": label_of(scene)}


def retrieval_samples(n: int, seed: int, image_size: int = 32) -> Iterable[dict]:
    for i in range(n):
        rng = _rng("retrieval", seed, i)
        scene = syn.sample_scene(rng)
        image = syn.render(scene, image_size, rng)
        yield {"__key__": f"{i:06d}", "png": syn.png_bytes(image), "txt": syn.caption(scene, rng)}


def task_spec(task: str) -> tuple[list[str], list[str]]:
    """(classnames, templates) of one of clipscale's classification tasks."""
    if task == "digits_uci":
        return [str(d) for d in range(10)], list(DIGIT_TEMPLATES)
    _, _, classnames, templates, _ = _SYNTHETIC[task.removesuffix("-shift")]
    return list(classnames), list(templates)


def ensure_eval_sets(root_uri: str, seed: int = 0, n_per_task: int = 500, image_size: int = 32,
                     tasks: Sequence[str] | None = None, n_retrieval: int = 500,
                     settings: StorageSettings | None = None, strict: bool = True) -> list[str]:
    """Write any of `tasks` (default: all) missing under `root_uri`; returns those written.

    A task whose `meta.json` exists is complete and skipped. With `strict`, one written
    with other parameters is an error (delete it or pick another root) rather than a
    silent mix; without, whatever is there is kept (the eval CLI's "generate if missing")."""
    written = []
    for task in tasks or ALL_TASKS:
        if task not in ALL_TASKS:
            raise ValueError(f"unknown eval task {task!r}; expected one of {list(ALL_TASKS)}")
        uri = storage.join(root_uri, task)
        n = 1797 if task == "digits_uci" else n_retrieval if task == "retrieval" else n_per_task
        want = {"task": task, "seed": seed, "samples": n, "image_size": image_size, "version": EVALSET_VERSION}
        meta_uri = storage.join(uri, META)
        if storage.exists(meta_uri, settings):
            have = json.loads(storage.read_bytes(meta_uri, settings))
            diff = {k: (have.get(k), v) for k, v in want.items() if have.get(k) != v}
            if diff and strict:
                raise ValueError(f"{meta_uri} was written with other parameters {diff} (have, want); "
                                 "remove that folder or use another eval root")
            continue
        if task == "retrieval":
            write_task(uri, None, None, retrieval_samples(n, seed, image_size), settings=settings, meta=want)
        else:
            classnames, templates = task_spec(task)
            if task == "digits_uci":
                images, labels = load_uci_digits(image_size)
                samples = ({"__key__": f"{k:06d}", "png": syn.png_bytes(im), "cls": int(y)}
                           for k, (im, y) in enumerate(zip(images, labels)))
            else:
                samples = synthetic_task_samples(task, n, seed, image_size)
            write_task(uri, classnames, templates, samples, settings=settings, meta=want)
        written.append(task)
    return written
