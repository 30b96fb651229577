"""Images/s of the Ray Data pipeline against a plain single-process loop, side by side.

Both read the same tars from a moto S3 server on 127.0.0.1 and end in the same
thing: normalised float image batches and token batches as torch tensors
(random resized crop, CLIP mean/std, open_clip tokenizer). Cases: 32 px PNG (the
synthetic corpus) and 224 px crops of ~256 px JPEG sources.

    python benchmarks/bench_data.py [--images N] [--case png32|jpeg224|all]

The last line is `ratio=<x>` for the 224 px JPEG case (pipeline / baseline throughput).
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import free_port, report  # noqa: E402

from clipscale.data import shards as shard_io  # noqa: E402
from clipscale.data import transforms  # noqa: E402
from clipscale.data.pipeline import BatchStream, StreamSpec, _tokenizer, resolve_shards  # noqa: E402
from clipscale.storage import StorageSettings  # noqa: E402

BATCH = 128
CONTEXT = 32
SHARD_SIZE = 250


def make_corpus(root: str, n: int, case: str, settings: StorageSettings) -> None:
    from PIL import Image

    rng = np.random.default_rng(0)
    side, fmt, ext = (256, "JPEG", "jpg") if case == "jpeg224" else (32, "PNG", "png")

    def samples():
        for i in range(n):
            # Smooth random fields compress like photos rather than like noise.
            small = rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)
            img = Image.fromarray(small).resize((side, side + (i % 3) * 16), Image.BICUBIC)
            buf = io.BytesIO()
            img.save(buf, format=fmt, quality=90) if fmt == "JPEG" else img.save(buf, format=fmt)
            yield {"__key__": f"{i:08d}", ext: buf.getvalue(), "txt": f"a picture of thing {i} in scene {i % 97}"}

    shard_io.write_shards(samples(), root, shard_size=SHARD_SIZE, settings=settings)


def baseline(shards: tuple[str, ...], size: int, settings: StorageSettings) -> Iterator[int]:
    """tarfile + PIL in one process: what a user would write without Ray. Yields batch sizes."""
    tok = _tokenizer(CONTEXT)
    rng = np.random.default_rng(0)
    images, captions = [], []
    for uri in shards:
        for s in shard_io.iter_shard(uri, settings):
            data = s.get("jpg") or s.get("png")
            img = transforms.decode_image(data)
            images.append(transforms.random_resized_crop(img, size, rng))
            captions.append(s["txt"].decode())
            if len(images) == BATCH:
                x = transforms.to_model_input(torch.from_numpy(np.stack(images)))
                tok(captions)
                yield x.shape[0]
                images, captions = [], []


def candidate(shards: tuple[str, ...], size: int, settings: StorageSettings) -> Iterator[int]:
    spec = StreamSpec(shards=shards, image_size=size, context_length=CONTEXT, train=True, shuffle=False,
                      settings=settings)
    for images, tokens in BatchStream(spec, micro_batch=BATCH):
        x = transforms.to_model_input(torch.from_numpy(images))
        torch.from_numpy(tokens)
        yield x.shape[0]


def steady_rate(batches: Iterator[int], total: int) -> tuple[int, float]:
    """(images, images/s) from the end of the first batch to `total` images.

    The first batch is left out on both sides: it holds Ray Data's start-up (planning,
    launching tasks), which a training run pays once per epoch, not per batch.
    """
    n, t0 = 0, None
    for size in batches:
        if t0 is None:
            t0 = time.perf_counter()
            continue
        n += size
        if n + 2 * BATCH > total:
            break
    return n, n / (time.perf_counter() - t0)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=4000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--case", default="all", choices=["png32", "jpeg224", "all"])
    args = parser.parse_args()

    import boto3
    import ray
    from moto.server import ThreadedMotoServer

    os.environ.setdefault("AWS_ACCESS_KEY_ID", "bench")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "bench")
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    settings = StorageSettings(endpoint_url=endpoint)
    boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(Bucket="bench")
    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False, configure_logging=False)
    ray.data.DataContext.get_current().enable_progress_bars = False

    cases = ["png32", "jpeg224"] if args.case == "all" else [args.case]
    results = {}
    for case in cases:
        size = 224 if case == "jpeg224" else 32
        root = f"s3://bench/{case}"
        make_corpus(root, args.images, case, settings)
        shards = resolve_shards(root, settings)
        # Warm every Ray worker process (imports, tokenizer), not just the first one.
        warm = shards[:2 * os.cpu_count()]
        steady_rate(candidate(warm, size, settings), len(warm) * SHARD_SIZE)
        # Alternate the two, then take medians: on a shared 2-core box one pass is too noisy.
        rates_b, rates_c = [], []
        for _ in range(args.repeats):
            n_b, rate = steady_rate(baseline(shards, size, settings), args.images)
            rates_b.append(rate)
            n_c, rate = steady_rate(candidate(shards, size, settings), args.images)
            rates_c.append(rate)
        b, c = float(np.median(rates_b)), float(np.median(rates_c))
        results[case] = {"baseline": b, "candidate": c, "ratio": c / b, "baseline_runs": rates_b,
                         "candidate_runs": rates_c}
        print(f"{case}: baseline {b:.0f} img/s, pipeline {c:.0f} img/s (medians of {args.repeats}, {n_b} images each), "
              f"ratio {c / b:.2f}", flush=True)
    ray.shutdown()
    server.stop()

    headline = results.get("jpeg224") or results[cases[0]]
    report("bench_data", headline["ratio"], headline["baseline"], headline["candidate"], "images/s",
           cases=results, images=args.images)
    return 0


if __name__ == "__main__":
    sys.exit(main())
