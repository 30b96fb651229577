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
class Source:
    """One corpus of a data mixture (`data.sources`): its training shards and its share of batches."""

    name: str
    shards: tuple[str, ...]
    weight: float


@dataclass(frozen=True)
class StreamSpec:
    """Everything a worker needs to build its stream; picklable and free of secrets.
    With `sources`, the stream is a mixture of them (`data.mixture`) and `shards` is unused."""

    shards: tuple[str, ...]
    image_size: int
    context_length: int
    train: bool = True
    shuffle: bool = True
    seed: int = 0
    settings: StorageSettings | None = None
    max_bad_fraction: float = 0.2
    min_rows_for_bad_check: int = 500
    sources: tuple[Source, ...] = ()


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


def _read_and_decode(batch: dict, spec: StreamSpec, epoch: int) -> Iterator[dict]:
    """One row per shard in -> that shard's decoded samples out, as one block.

    Reading and decoding are one stage on purpose: as two map_batches, Ray fuses them and
    bundles one-row shard inputs up to the decode batch size, so a single task ended up
    reading every shard in turn (measured: 1 task for 12 shards). One block per shard, not
    several yielded batches, spares Ray a concatenating copy of the shard's pixels.
    """
    for uri, ordinal, skip in zip(batch["uri"], batch["ordinal"], batch["skip_rows"]):
        yield _decode(list(_shard_rows(str(uri), int(ordinal), int(skip), spec, epoch)), spec, epoch)


def _shard_rows(uri: str, ordinal: int, skip: int, spec: StreamSpec, epoch: int) -> Iterator[dict]:
    samples = _read_with_retry(uri, spec)
    if samples is None:
        yield _skip_row(uri, ordinal, 0, "unreadable_shard")
        return
    expected = _expected_count(uri, spec.settings)
    if spec.shuffle:
        # Seeded by the shard's name, not its URI, so a corpus shuffles the same wherever it lives
        # (two runs of the embedded default in different folders trained on different orders).
        name = uri.rsplit("/", 1)[-1]
        order = np.random.default_rng([spec.seed, epoch, zlib.crc32(name.encode())]).permutation(len(samples))
        samples = [samples[i] for i in order]
    for i, s in enumerate(samples):
        if i < skip:
            continue
        image_ext = next((e for e in IMAGE_EXTS if e in s), None)
        yield {"__key__": s["__key__"], "shard": ordinal, "row": i, "skip": "" if image_ext else "no_image",
               "image": s.get(image_ext, b"") if image_ext else b"", "txt": s.get("txt")}
    if expected is not None and len(samples) < expected and skip <= len(samples):
        yield _skip_row(uri, ordinal, len(samples), "truncated_tar")


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


def _decode(rows: list[dict], spec: StreamSpec, epoch: int) -> dict:
    n, size = len(rows), spec.image_size
    images = np.zeros((n, size, size, 3), dtype=np.uint8)
    captions = [""] * n
    skip = [r["skip"] for r in rows]
    for i, r in enumerate(rows):
        if skip[i]:
            continue
        text, reason = _caption(r["txt"])
        if reason:
            skip[i] = reason
            continue
        if not r["image"]:
            skip[i] = "empty_image"
            continue
        try:
            img = transforms.decode_image(r["image"])
        except Exception:  # noqa: BLE001 - PIL raises many types for corrupt bytes
            skip[i] = "bad_image"
            continue
        if spec.train:
            rng = np.random.default_rng([spec.seed, epoch, zlib.crc32(str(r["__key__"]).encode())])
            images[i] = transforms.random_resized_crop(img, size, rng)
        else:
            images[i] = transforms.center_crop_resize(img, size)
        captions[i] = text
    tokens = _tokenizer(spec.context_length)(captions).numpy()
    return {
        "image": images, "tokens": tokens, "skip": np.array(skip, dtype=object),
        "shard": np.array([r["shard"] for r in rows], dtype=np.int64),
        "row": np.array([r["row"] for r in rows], dtype=np.int64),
    }


def build_dataset(spec: StreamSpec, shard_list: list[str], epoch: int, start: DataPosition | None = None):
    """A lazy Ray Dataset over `shard_list` (already in this epoch's order), from `start` on."""
    import ray.data

    from clipscale.data.backoff import IdleBackoff

    start = start or DataPosition(epoch=epoch)
    items = [
        {"uri": uri, "ordinal": i, "skip_rows": start.row if i == start.shard else 0}
        for i, uri in enumerate(shard_list) if i >= start.shard
    ]
    ctx = ray.data.DataContext.get_current()
    ctx.execution_options.preserve_order = True
    # Reservation splits the cluster between operators; this pipeline has one map operator, so it
    # only throttled it: on 2 CPUs the second task waited ~0.6 s and tasks sat idle between shards
    # (68% of task slots busy; 93% without it).
    ctx.op_resource_reservation_enabled = False
    if IdleBackoff not in ctx.custom_execution_callback_classes:
        ctx.custom_execution_callback_classes.append(IdleBackoff)
    # One bar per epoch per worker floods a driver's log; the loop prints its own progress.
    ctx.enable_progress_bars = False
    ds = ray.data.from_items(items, override_num_blocks=max(1, len(items)))
    return ds.map_batches(_read_and_decode, batch_size=1, batch_format="numpy", fn_kwargs={"spec": spec, "epoch": epoch})


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
        self._feed: Iterator[tuple[dict, list[str]]] | None = None
        self._batch: tuple[dict, list[str]] | None = None  # the Ray batch being consumed
        self._start = 0  # its first row not yet consumed
        self._good = np.zeros(0, dtype=np.int64)

    def _batches(self) -> Iterator[tuple[dict, list[str]]]:
        """Ray Data's decoded batches for this worker, epoch after epoch, from `position` on."""
        while True:
            epoch = self.position.epoch
            shard_list = worker_shards(self.spec, self.rank, self.world, epoch)
            ds = build_dataset(self.spec, shard_list, epoch, self.position)
            got_any = False
            batches = iter(ds.iter_batches(batch_size=None, batch_format="numpy", prefetch_batches=self.prefetch_batches))
            try:
                for batch in batches:
                    got_any = got_any or len(batch["skip"]) > 0
                    yield batch, shard_list
            finally:
                batches.close()  # Ray Data's iterator shuts its executor down on close (see `close`)
            if not got_any and self.position.shard == 0 and self.position.row == 0:
                raise DataQualityError(f"worker {self.rank}: epoch {epoch} produced no rows from {len(shard_list)} shards")
            self.position = DataPosition(epoch=epoch + 1)

    def __iter__(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        while True:
            yield self.take(self.micro_batch)

    def close(self) -> None:
        """Stop the Ray Data execution feeding this stream. Left open, its tasks went on decoding
        the prefetched shards while the rung evaluated, and its iterator thread logged a
        traceback when it outlived `ray.shutdown()`. `position` stays valid: taking again
        starts a new execution there."""
        if self._feed is not None:
            self._feed.close()
            self._feed, self._batch, self._start = None, None, 0

    def take(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """The next `n` good samples as (images, tokens), consuming rows up to the n-th of them."""
        # Whole slices of Ray's batches, not row by row: at 224 px a per-row Python loop and
        # np.stack cost as much as the decode they wait for.
        if self._feed is None:
            self._feed = self._batches()
        images, tokens, have = [], [], 0
        while have < n:
            if self._batch is None or self._start >= len(self._batch[0]["skip"]):
                self._batch, self._start = next(self._feed), 0
                self._good = np.flatnonzero(self._batch[0]["skip"] == "")
            (batch, shard_list), start = self._batch, self._start
            take = self._good[np.searchsorted(self._good, start):][: n - have]
            # Consume up to the row that completes the request, or to the batch's end.
            end = int(take[-1]) + 1 if len(take) == n - have else len(batch["skip"])
            self._consume(batch, shard_list, start, end)
            if len(take):
                images.append(batch["image"][take])
                tokens.append(batch["tokens"][take])
                have += len(take)
            self._start = end
        return _cat(images), _cat(tokens)

    def _consume(self, batch: dict, shard_list: list[str], start: int, end: int) -> None:
        """Count rows [start, end) of a batch as read, their skips as skipped, and move `position` past them."""
        skip = batch["skip"][start:end]
        self.skipped.rows += end - start
        for i in np.flatnonzero(skip != ""):
            row = start + int(i)
            self.skipped.reasons[skip[i]] += 1
            self.skipped.by_shard[shard_list[int(batch["shard"][row])]] += 1
            self._check_quality()
        last = end - 1
        self.position = DataPosition(self.position.epoch, int(batch["shard"][last]), int(batch["row"][last]) + 1)

    def _check_quality(self) -> None:
        s = self.skipped
        if s.rows >= self.spec.min_rows_for_bad_check and s.bad > self.spec.max_bad_fraction * s.rows:
            worst = ", ".join(f"{u} ({n} bad)" for u, n in s.by_shard.most_common(3))
            raise DataQualityError(
                f"{s.bad} of {s.rows} samples were bad ({dict(s.reasons)}), above data.max_bad_fraction="
                f"{self.spec.max_bad_fraction}; worst shards: {worst}")


def shard_rows(spec: StreamSpec, rank: int, world: int) -> float:
    """Rows in this worker's shards, from the corpus manifests; NaN when a count is unknown."""
    counts = [_expected_count(uri, spec.settings) for uri in spec.shards[rank::world]]
    return float("nan") if None in counts else float(sum(counts))


def _cat(parts: list[np.ndarray]) -> np.ndarray:
    return parts[0] if len(parts) == 1 else np.concatenate(parts)


def resolve_shards(source: str | list[str], settings: StorageSettings | None = None) -> tuple[str, ...]:
    """Config's `data.shards` (folder, prefix, brace pattern or list) -> sorted shard URIs."""
    return tuple(shard_io.list_shards(source, settings))


__all__ = ["BatchStream", "DataPosition", "SkipCounter", "Source", "StreamSpec", "shard_rows", "build_dataset", "resolve_shards",
           "worker_shards"]
