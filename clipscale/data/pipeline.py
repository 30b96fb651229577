"""The Ray Data pipeline: webdataset shards (S3 or local) -> decoded, cropped,
tokenized batches for one training worker.

Why each worker gets its own shards instead of `streaming_split`: streaming_split
hands blocks to whichever consumer asks first, so neither the global batch of a
step nor the data position survives a restart. Here worker r owns shards
r, r+W, r+2W, ... in an order that is a pure function of (seed, epoch, rank),
and rows inside a shard are permuted by (seed, epoch, shard). A position
(epoch, shard ordinal, row) then names exactly where to resume, and
`preserve_order` keeps Ray Data's parallel reads in that order.

Reading uses clipscale's tolerant tar reader inside Ray Data tasks rather than
`read_webdataset`, whose tar iterator aborts the whole dataset on a truncated
shard. Bad input becomes a row with a `skip` reason and no payload; the worker
counts and drops it (`data/skipped_<reason>`).
"""

from __future__ import annotations

import functools
import time
import zlib
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field

import numpy as np
import pandas as pd

from clipscale.data import shards as shard_io
from clipscale.data import transforms
from clipscale.errors import DataQualityError
from clipscale.storage import StorageSettings

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")
MAX_CAPTION_CHARS = 4096  # longer captions are cut before BPE; the tokenizer truncates to context anyway
SKIP_REASONS = (
    "unreadable_shard", "truncated_tar", "no_image", "empty_image", "bad_image",
    "no_caption", "empty_caption", "bad_caption_encoding",
)


@dataclass
class DataPosition:
    """Where a worker's stream stands: rows consumed in shard `shard` of epoch `epoch`."""

    epoch: int = 0
    shard: int = 0
    row: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class StreamSpec:
    """Everything a worker needs to build its stream; picklable and free of secrets."""

    shards: tuple[str, ...]
    image_size: int
    context_length: int
    train: bool = True
    shuffle: bool = True
    seed: int = 0
    settings: StorageSettings | None = None
    max_bad_fraction: float = 0.2
    min_rows_for_bad_check: int = 500


def worker_shards(spec: StreamSpec, rank: int, world: int, epoch: int) -> list[str]:
    mine = list(spec.shards[rank::world])
    if not mine:
        raise ValueError(
            f"data.shards: {len(spec.shards)} shard(s) cannot feed {world} workers; "
            "write smaller shards (clipscale data synth --shard-size) or use fewer workers")
    if spec.shuffle:
        order = np.random.default_rng([spec.seed, epoch, rank]).permutation(len(mine))
        mine = [mine[i] for i in order]
    return mine


# ---- Ray Data stages (run in Ray tasks) -------------------------------------------------


def _skip_row(key: str, shard: int, row: int, reason: str) -> dict:
    return {"__key__": key, "shard": shard, "row": row, "skip": reason, "image": b"", "txt": b""}


def _read_shards(batch: pd.DataFrame, spec: StreamSpec, epoch: int) -> Iterator[pd.DataFrame]:
    """One row per shard in -> one row per sample out, streamed in chunks."""
    chunk = 64
    for uri, ordinal, skip in zip(batch["uri"], batch["ordinal"], batch["skip_rows"]):
        samples = _read_with_retry(uri, spec)
        if samples is None:
            yield pd.DataFrame([_skip_row(uri, int(ordinal), 0, "unreadable_shard")])
            continue
        expected = _expected_count(uri, spec.settings)
        truncated = expected is not None and len(samples) < expected
        if spec.shuffle:
            order = np.random.default_rng([spec.seed, epoch, zlib.crc32(uri.encode())]).permutation(len(samples))
            samples = [samples[i] for i in order]
        rows = []
        for i, s in enumerate(samples):
            if i < skip:
                continue
            image_ext = next((e for e in IMAGE_EXTS if e in s), None)
            rows.append({
                "__key__": s["__key__"], "shard": int(ordinal), "row": i, "skip": "" if image_ext else "no_image",
                "image": s.get(image_ext, b"") if image_ext else b"", "txt": s.get("txt"),
            })
            if len(rows) >= chunk:
                yield pd.DataFrame(rows)
                rows = []
        if truncated and skip <= len(samples):
            rows.append(_skip_row(uri, int(ordinal), len(samples), "truncated_tar"))
        if rows:
            yield pd.DataFrame(rows)


def _read_with_retry(uri: str, spec: StreamSpec, attempts: int = 4) -> list[dict] | None:
    """A whole shard, read again from the start when the store drops the connection
    (a restarted S3 endpoint, a throttled request). None when it stays unreadable."""
    expected = _expected_count(uri, spec.settings)
    for attempt in range(attempts):
        try:
            samples = list(shard_io.iter_shard(uri, spec.settings))
        except FileNotFoundError:
            return None  # missing objects do not come back
        except Exception:  # noqa: BLE001 - connection resets, timeouts, 5xx: retry, then give up
            samples = None
        # A short read may be a cut connection rather than a truncated object: read once more.
        if samples is not None and (expected is None or len(samples) >= expected or attempt >= 1):
            return samples
        time.sleep(min(8.0, 0.5 * 2 ** attempt))
    return samples


@functools.lru_cache(maxsize=256)
def _manifest_for(root: str, settings: StorageSettings | None) -> dict:
    try:
        return shard_io.read_manifest(root, settings)
    except Exception:  # noqa: BLE001 - no manifest means we cannot detect truncation by count
        return {}


def _expected_count(uri: str, settings: StorageSettings | None) -> int | None:
    root, name = uri.rsplit("/", 1)
    return _manifest_for(root, settings).get(name)


@functools.lru_cache(maxsize=8)
def _tokenizer(context_length: int):
    import open_clip

    return open_clip.get_tokenizer("ViT-B-32", context_length=context_length)


def _caption(raw) -> tuple[str | None, str]:
    if not isinstance(raw, (bytes, bytearray, str)):  # None, or a null after the Arrow round trip
        return None, "no_caption"
    try:
        text = raw.decode("utf-8") if isinstance(raw, (bytes, bytearray)) else raw
    except UnicodeDecodeError:
        return None, "bad_caption_encoding"
    text = text.strip()
    if not text:
        return None, "empty_caption"
    return text[:MAX_CAPTION_CHARS], ""


def _decode(batch: pd.DataFrame, spec: StreamSpec, epoch: int) -> dict:
    n, size = len(batch), spec.image_size
    images = np.zeros((n, size, size, 3), dtype=np.uint8)
    captions = [""] * n
    skip = list(batch["skip"])
    for i, (key, data, raw_txt) in enumerate(zip(batch["__key__"], batch["image"], batch["txt"])):
        if skip[i]:
            continue
        text, reason = _caption(raw_txt)
        if reason:
            skip[i] = reason
            continue
        if not data:
            skip[i] = "empty_image"
            continue
        try:
            img = transforms.decode_image(data)
        except Exception:  # noqa: BLE001 - PIL raises many types for corrupt bytes
            skip[i] = "bad_image"
            continue
        if spec.train:
            rng = np.random.default_rng([spec.seed, epoch, zlib.crc32(str(key).encode())])
            images[i] = transforms.random_resized_crop(img, size, rng)
        else:
            images[i] = transforms.center_crop_resize(img, size)
        captions[i] = text
    tokens = _tokenizer(spec.context_length)(captions).numpy()
    return {
        "image": images, "tokens": tokens, "skip": np.array(skip, dtype=object),
        "shard": batch["shard"].to_numpy(np.int64), "row": batch["row"].to_numpy(np.int64),
    }


def build_dataset(spec: StreamSpec, shard_list: list[str], epoch: int, start: DataPosition | None = None):
    """A lazy Ray Dataset over `shard_list` (already in this epoch's order), from `start` on."""
    import ray.data

    start = start or DataPosition(epoch=epoch)
    items = [
        {"uri": uri, "ordinal": i, "skip_rows": start.row if i == start.shard else 0}
        for i, uri in enumerate(shard_list) if i >= start.shard
    ]
    ctx = ray.data.DataContext.get_current()
    ctx.execution_options.preserve_order = True
    # One bar per epoch per worker floods a driver's log; the loop prints its own progress.
    ctx.enable_progress_bars = False
    ds = ray.data.from_items(items, override_num_blocks=max(1, len(items)))
    ds = ds.map_batches(_read_shards, batch_size=1, batch_format="pandas", fn_kwargs={"spec": spec, "epoch": epoch})
    return ds.map_batches(_decode, batch_size=128, batch_format="pandas", fn_kwargs={"spec": spec, "epoch": epoch})


# ---- Worker side ------------------------------------------------------------------------


@dataclass
class SkipCounter:
    rows: int = 0
    reasons: Counter = field(default_factory=Counter)
    by_shard: Counter = field(default_factory=Counter)

    @property
    def bad(self) -> int:
        return sum(self.reasons.values())

    def metrics(self) -> dict[str, float]:
        out = {f"data/skipped_{r}": float(self.reasons.get(r, 0)) for r in SKIP_REASONS}
        out["data/rows_read"] = float(self.rows)
        return out


class BatchStream:
    """Fixed-size micro-batches of good samples for one worker, epoch after epoch.

    `position` always names the first row not yet consumed, so a checkpoint
    taken between steps resumes exactly there.
    """

    def __init__(self, spec: StreamSpec, micro_batch: int, rank: int = 0, world: int = 1,
                 position: DataPosition | None = None, prefetch_batches: int = 2):
        self.spec, self.micro_batch, self.rank, self.world = spec, micro_batch, rank, world
        self.position = position or DataPosition()
        self.skipped = SkipCounter()
        self.prefetch_batches = prefetch_batches

    def _rows(self) -> Iterator[tuple[np.ndarray, np.ndarray, str, int, int, str]]:
        while True:
            epoch = self.position.epoch
            shard_list = worker_shards(self.spec, self.rank, self.world, epoch)
            ds = build_dataset(self.spec, shard_list, epoch, self.position)
            got_any = False
            for batch in ds.iter_batches(batch_size=None, batch_format="numpy", prefetch_batches=self.prefetch_batches):
                for i in range(len(batch["skip"])):
                    got_any = True
                    shard, row = int(batch["shard"][i]), int(batch["row"][i])
                    yield batch["image"][i], batch["tokens"][i], batch["skip"][i], shard, row, shard_list[shard]
            if not got_any and self.position.shard == 0 and self.position.row == 0:
                raise DataQualityError(f"worker {self.rank}: epoch {epoch} produced no rows from {len(shard_list)} shards")
            self.position = DataPosition(epoch=epoch + 1)

    def __iter__(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        images, tokens = [], []
        for image, tok, skip, shard, row, uri in self._rows():
            self.skipped.rows += 1
            self.position = DataPosition(self.position.epoch, shard, row + 1)
            if skip:
                self.skipped.reasons[skip] += 1
                self.skipped.by_shard[uri] += 1
                self._check_quality()
                continue
            images.append(image)
            tokens.append(tok)
            if len(images) == self.micro_batch:
                yield np.stack(images), np.stack(tokens)
                images, tokens = [], []

    def _check_quality(self) -> None:
        s = self.skipped
        if s.rows >= self.spec.min_rows_for_bad_check and s.bad > self.spec.max_bad_fraction * s.rows:
            worst = ", ".join(f"{u} ({n} bad)" for u, n in s.by_shard.most_common(3))
            raise DataQualityError(
                f"{s.bad} of {s.rows} samples were bad ({dict(s.reasons)}), above data.max_bad_fraction="
                f"{self.spec.max_bad_fraction}; worst shards: {worst}")


def resolve_shards(source: str | list[str], settings: StorageSettings | None = None) -> tuple[str, ...]:
    """Config's `data.shards` (folder, prefix, brace pattern or list) -> sorted shard URIs."""
    return tuple(shard_io.list_shards(source, settings))


__all__ = ["BatchStream", "DataPosition", "SkipCounter", "StreamSpec", "build_dataset", "resolve_shards",
           "worker_shards"]
