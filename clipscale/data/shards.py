"""Webdataset tar shards: write them, list them, count their samples.

Layout is the one img2dataset writes: each sample is adjacent members
`{key}.{ext}` in a tar (`jpg|png|webp`, `txt`, optional `json`, `cls`), and a
shard folder may carry `NNNNN_stats.json` per shard. clipscale adds one
`sizes.json` manifest (`{"shard-000000.tar": 1000, ...}`) so that readers know
exact sample counts without opening the tars.
"""

from __future__ import annotations

import io
import json
import posixpath
import re
import tarfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import pyarrow.fs as pafs

from clipscale import storage
from clipscale.storage import StorageError, StorageSettings

MANIFEST = "sizes.json"
_BRACE = re.compile(r"\{(\d+)\.\.(\d+)\}")


def shard_name(prefix: str, index: int) -> str:
    return f"{prefix}-{index:06d}.tar"


def split_member(name: str) -> tuple[str, str]:
    """`dir/abc.seg.png` -> ("dir/abc", "seg.png"): webdataset splits at the first dot of the basename."""
    dirname, base = posixpath.split(name)
    stem, _, ext = base.partition(".")
    return posixpath.join(dirname, stem) if dirname else stem, ext


def encode_sample(sample: dict) -> list[tuple[str, bytes]]:
    """Sample dict (`__key__` + ext -> bytes|str|dict|int) -> tar members, in a stable order."""
    key = sample["__key__"]
    if "." in posixpath.basename(key):
        raise ValueError(f"sample key {key!r} contains a dot; webdataset splits keys at the first dot")
    out = []
    for ext in sorted(k for k in sample if not k.startswith("__")):
        value = sample[ext]
        if isinstance(value, str):
            value = value.encode("utf-8")
        elif isinstance(value, (dict, list)):
            value = json.dumps(value).encode("utf-8")
        elif isinstance(value, int):
            value = str(value).encode("ascii")
        out.append((f"{key}.{ext}", bytes(value)))
    return out


def tar_bytes(samples: Iterable[dict]) -> tuple[bytes, int]:
    """Pack samples into one in-memory tar; returns (bytes, sample count)."""
    buf = io.BytesIO()
    n = 0
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for sample in samples:
            for name, data in encode_sample(sample):
                info = tarfile.TarInfo(name)
                info.size = len(data)
                info.mtime = 0  # deterministic bytes for a given seed
                info.mode = 0o644
                tar.addfile(info, io.BytesIO(data))
            n += 1
    return buf.getvalue(), n


@dataclass
class ShardWriter:
    """Streams samples into `{out}/{prefix}-000000.tar`, ... and writes `sizes.json` on close.

    Shards are built in memory and uploaded whole, so each tar object is
    complete the moment it appears (no partial tars on S3 after a crash).
    """

    out: str
    shard_size: int = 1000
    prefix: str = "shard"
    settings: StorageSettings | None = None
    sizes: dict[str, int] = field(default_factory=dict)
    _pending: list[dict] = field(default_factory=list)

    def __post_init__(self):
        if self.shard_size <= 0:
            raise ValueError(f"shard_size must be > 0, got {self.shard_size}")
        storage.makedirs(self.out, self.settings)

    def write(self, sample: dict) -> None:
        self._pending.append(sample)
        if len(self._pending) >= self.shard_size:
            self._flush()

    def _flush(self) -> None:
        if not self._pending:
            return
        name = shard_name(self.prefix, len(self.sizes))
        data, n = tar_bytes(self._pending)
        storage.write_bytes(storage.join(self.out, name), data, self.settings)
        self.sizes[name] = n
        self._pending = []

    def close(self) -> dict[str, int]:
        self._flush()
        write_manifest(self.out, self.sizes, self.settings)
        return self.sizes

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()


def write_shards(samples: Iterable[dict], out: str, shard_size: int = 1000, prefix: str = "shard",
                 settings: StorageSettings | None = None) -> dict[str, int]:
    with ShardWriter(out, shard_size, prefix, settings) as writer:
        for sample in samples:
            writer.write(sample)
    return writer.sizes


def expand_braces(pattern: str) -> list[str]:
    """`shard-{00000..00002}.tar` -> three names, zero padding kept. Several ranges multiply."""
    m = _BRACE.search(pattern)
    if not m:
        return [pattern]
    lo, hi = m.group(1), m.group(2)
    width = len(lo)
    out = []
    for i in range(int(lo), int(hi) + 1):
        out.extend(expand_braces(pattern[: m.start()] + f"{i:0{width}d}" + pattern[m.end():]))
    return out


def list_shards(source: str | list[str], settings: StorageSettings | None = None) -> list[str]:
    """Shard URIs from a folder/prefix, a brace pattern, or an explicit list; sorted, checked to exist."""
    if isinstance(source, (list, tuple)):
        return [u for s in source for u in list_shards(s, settings)]
    source = str(source)
    if _BRACE.search(source):
        return expand_braces(source)
    if source.endswith(".tar"):
        return [source]
    fs, path = storage.resolve(source, settings)
    try:
        infos = fs.get_file_info(pafs.FileSelector(path, recursive=False, allow_not_found=False))
    except (OSError, FileNotFoundError) as e:
        raise StorageError(f"cannot list shards under {source}: {storage.scrub(str(e))}") from None
    tars = sorted(i.path for i in infos if i.type == pafs.FileType.File and i.path.endswith(".tar"))
    if not tars:
        raise StorageError(f"no .tar shards under {source}")
    return [storage.to_uri(fs, p) for p in tars]


def write_manifest(root: str, sizes: dict[str, int], settings: StorageSettings | None = None) -> None:
    storage.write_bytes(storage.join(root, MANIFEST), json.dumps(sizes, indent=1, sort_keys=True).encode(), settings)


def read_manifest(root: str, settings: StorageSettings | None = None) -> dict[str, int]:
    """Sample counts per shard name: `sizes.json`, else derived from img2dataset `*_stats.json`."""
    if storage.exists(storage.join(root, MANIFEST), settings):
        return json.loads(storage.read_bytes(storage.join(root, MANIFEST), settings))
    fs, path = storage.resolve(root, settings)
    infos = fs.get_file_info(pafs.FileSelector(path, recursive=False, allow_not_found=True))
    sizes = {}
    for info in infos:
        if info.path.endswith("_stats.json"):
            stats = json.loads(storage.read_bytes(storage.to_uri(fs, info.path), settings))
            stem = posixpath.basename(info.path)[: -len("_stats.json")]
            sizes[f"{stem}.tar"] = int(stats["successes"])
    if not sizes:
        raise StorageError(f"no {MANIFEST} and no *_stats.json under {root}: cannot count samples")
    return sizes


class _EndAwareTarInfo(tarfile.TarInfo):
    """Records how the member headers ended. tarfile stops quietly both at the end-of-archive
    zero block and at a header cut short, but only the first means the last sample is whole."""

    @classmethod
    def fromtarfile(cls, tar):
        try:
            return super().fromtarfile(tar)
        except tarfile.HeaderError as e:
            tar.clipscale_clean_end = isinstance(e, tarfile.EOFHeaderError)
            raise


def iter_tar(fileobj) -> Iterator[dict]:
    """Group a tar stream's members into samples (`__key__` + ext -> bytes), as webdataset does.

    Truncated tars end the iteration with the samples read so far; the sample at
    the cut is dropped, since some of its members may be missing.
    """
    current: dict | None = None
    try:
        with tarfile.open(fileobj=fileobj, mode="r|*", tarinfo=_EndAwareTarInfo) as tar:
            for member in tar:
                if not member.isfile():
                    continue
                key, ext = split_member(member.name)
                data = tar.extractfile(member).read()
                if current is not None and current["__key__"] != key:
                    yield current
                    current = None
                if current is None:
                    current = {"__key__": key}
                current[ext] = data
            if not getattr(tar, "clipscale_clean_end", False):
                current = None  # cut at a header boundary
    except (tarfile.ReadError, EOFError, OSError):
        current = None  # cut inside a member
    if current is not None:
        yield current


def iter_shard(uri: str, settings: StorageSettings | None = None) -> Iterator[dict]:
    with storage.open_stream(uri, settings) as f:
        yield from iter_tar(f)


def count_samples(uris: list[str], settings: StorageSettings | None = None) -> int:
    """Exact sample count for shard URIs, from manifests where present, by reading otherwise."""
    total = 0
    by_root: dict[str, list[str]] = {}
    for uri in uris:
        root, name = uri.rsplit("/", 1)
        by_root.setdefault(root, []).append(name)
    for root, names in by_root.items():
        try:
            sizes = read_manifest(root, settings)
        except StorageError:
            sizes = {}
        for name in names:
            if name in sizes:
                total += sizes[name]
            else:
                total += sum(1 for _ in iter_shard(f"{root}/{name}", settings))
    return total

