"""The 224 px JPEG data path shared by bench_data and gpu_check: the source images, and the
limit of that path on a machine (JPEG decode + random resized crop alone, one process per core).

The limit is what no loader can beat on the same CPUs: each process decodes and crops its own
slice of images already in its memory (inherited at fork), so there is no IPC, no tokenizing,
no normalising and no batching. A loader's fraction of it says how much its machinery costs.
"""

from __future__ import annotations

import io
import multiprocessing as mp
import os
import time
from dataclasses import dataclass

import numpy as np

JPEG_SIDE = 256  # sources a little larger than the 224 crop, as in img2dataset's resized corpora


def cores() -> int:
    """The cores this process may use (a container's CPU set, not the host's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def make_image(i: int, rng: np.random.Generator, side: int = JPEG_SIDE, fmt: str = "JPEG") -> bytes:
    """One encoded source image. Smooth random fields compress like photos rather than like noise;
    heights vary (side, +16, +32) so crops see more than one aspect ratio."""
    from PIL import Image

    small = rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)
    img = Image.fromarray(small).resize((side, side + (i % 3) * 16), Image.BICUBIC)
    buf = io.BytesIO()
    if fmt == "JPEG":
        img.save(buf, format=fmt, quality=90)
    else:
        img.save(buf, format=fmt)
    return buf.getvalue()


@dataclass
class LimitResult:
    rate: float  # images/s over all processes
    images: int
    procs: int
    seconds: float


def _decode_crop_slice(blobs: list[bytes], size: int, seed: int, start, done) -> None:
    # clipscale's own decode and crop (the functions its data workers call), nothing else.
    from clipscale.data import transforms

    rng = np.random.default_rng(seed)
    start.wait()
    t0 = time.perf_counter()
    for data in blobs:
        transforms.random_resized_crop(transforms.decode_image(data), size, rng)
    done.put(time.perf_counter() - t0)


def decode_crop_limit(blobs: list[bytes], size: int = 224, procs: int | None = None) -> LimitResult:
    """Images/s of decode + random resized crop in `procs` forked processes (default: all cores).

    Time runs from a common start barrier to the slowest process's end, so process start-up and
    imports are not counted, as a loader's warm-up is not counted against it either.
    """
    procs = procs or cores()
    if not blobs:
        raise ValueError("decode_crop_limit needs at least one image")
    from clipscale.data import transforms  # noqa: F401  (import once before fork, not in each child)

    ctx = mp.get_context("fork")  # children inherit their slice: no pickling, no IPC of images
    start, done = ctx.Barrier(procs + 1), ctx.Queue()
    workers = [ctx.Process(target=_decode_crop_slice, args=(blobs[i::procs], size, i, start, done))
               for i in range(procs)]
    for w in workers:
        w.start()
    start.wait()
    seconds = max(done.get() for _ in workers)
    for w in workers:
        w.join()
        if w.exitcode != 0:
            raise RuntimeError(f"a decode+crop process exited with {w.exitcode}")
    return LimitResult(rate=len(blobs) / seconds, images=len(blobs), procs=procs, seconds=seconds)
