"""Images/s of clipscale's Ray Data stream against the peer a user would otherwise run, side by side.

All sides read the same tars from a moto S3 server on 127.0.0.1:

- candidate: clipscale's `BatchStream` (Ray Data), then normalised on the consumer as training does;
- peer: open_clip's own path, `webdataset` + `DataLoader(num_workers=<cores>)` (benchmarks/wds_peer.py);
- single process: tarfile + PIL in one process (what a user writes without any loader);
- limit: JPEG decode + random resized crop alone, one process per core, no IPC, no tokenizing
  (benchmarks/jpeg_path.py): what no loader can beat on these cores.

The loaders end in the same thing: normalised float image batches and token batches as torch
tensors (random resized crop, CLIP mean/std, open_clip tokenizer). Cases: 32 px PNG (the synthetic
corpus) and 224 px crops of ~256 px JPEG sources.

    python benchmarks/bench_data.py [--images N] [--case png32|jpeg224|all] [--sides candidate,peer,...]

Per case it prints the ratio to the peer and to the single process and the fraction of the limit.
The last line is `ratio=<x>` for the 224 px JPEG case: clipscale / webdataset peer throughput.

Where clipscale's stream spends its time (Ray Data workers included):

    py-spy record --subprocesses --rate 25 --format raw -o stream.txt -- \
        python benchmarks/bench_data.py --case jpeg224 --sides candidate --repeats 1
"""

from __future__ import annotations

import argparse
import logging
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
from jpeg_path import cores, decode_crop_limit, make_image  # noqa: E402
from wds_peer import peer, shard_urls  # noqa: E402

from clipscale.data import shards as shard_io  # noqa: E402
from clipscale.data import transforms  # noqa: E402
from clipscale.data.pipeline import BatchStream, StreamSpec, _tokenizer, resolve_shards  # noqa: E402
from clipscale.storage import StorageSettings  # noqa: E402

BATCH = 128
CONTEXT = 32
SHARD_SIZE = 250


def make_corpus(root: str, n: int, case: str, settings: StorageSettings) -> None:
    rng = np.random.default_rng(0)
    side, fmt, ext = (256, "JPEG", "jpg") if case == "jpeg224" else (32, "PNG", "png")

    def samples():
        for i in range(n):
            yield {"__key__": f"{i:08d}", ext: make_image(i, rng, side, fmt),
                   "txt": f"a picture of thing {i} in scene {i % 97}"}

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
    stream = BatchStream(spec, micro_batch=BATCH)
    try:
        for images, tokens in stream:
            x = transforms.to_model_input(torch.from_numpy(images))
            torch.from_numpy(tokens)
            yield x.shape[0]
    finally:
        stream.close()


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
    rate = n / (time.perf_counter() - t0)
    getattr(batches, "close", lambda: None)()  # a side's loader stops here, not at exit
    return n, rate


SIDES = ("candidate", "peer", "baseline", "limit")


def limit_rate(shards: tuple[str, ...], size: int, settings: StorageSettings, images: int) -> float:
    """The limit on these cores: decode + crop of the same images, already in memory (reading them is not timed)."""
    blobs = [s.get("jpg") or s.get("png") for uri in shards for s in shard_io.iter_shard(uri, settings)][:images]
    return decode_crop_limit(blobs, size, cores()).rate


def measure_case(case: str, args, settings: StorageSettings, endpoint: str) -> dict:
    """Medians over alternating passes of every side, on one freshly written corpus."""
    size = 224 if case == "jpeg224" else 32
    root = f"s3://bench/{case}"
    make_corpus(root, args.images, case, settings)
    shards = resolve_shards(root, settings)
    urls, workers = shard_urls(shards, endpoint), cores()
    runs = {
        "candidate": lambda: steady_rate(candidate(shards, size, settings), args.images)[1],
        "peer": lambda: steady_rate(peer(urls, size, CONTEXT, BATCH, workers), args.images)[1],
        "baseline": lambda: steady_rate(baseline(shards, size, settings), args.images)[1],
        "limit": lambda: limit_rate(shards, size, settings, args.images),
    }
    if "candidate" in args.sides:
        # Warm every Ray worker process (imports, tokenizer), not just the first one.
        warm = shards[:2 * os.cpu_count()]
        steady_rate(candidate(warm, size, settings), len(warm) * SHARD_SIZE)
    # Alternate the sides, then take medians: on a shared 2-core box one pass is too noisy.
    rates: dict[str, list[float]] = {side: [] for side in args.sides}
    for _ in range(args.repeats):
        for side in args.sides:
            rates[side].append(runs[side]())
    med = {side: float(np.median(r)) for side, r in rates.items()}
    out = {"images_per_s": med, "runs": rates, "workers": workers,
           # the names the issue asks for: img/s of each side
           "candidate": med.get("candidate"), "peer": med.get("peer"),
           "single_process": med.get("baseline"), "limit": med.get("limit")}
    c = med.get("candidate")
    if c is not None:
        out["ratio"] = c / med["peer"] if "peer" in med else None
        out["ratio_to_single_process"] = c / med["baseline"] if "baseline" in med else None
        out["fraction_of_limit"] = c / med["limit"] if "limit" in med else None
    print(f"{case}: " + ", ".join(f"{side} {rate:.0f} img/s" for side, rate in med.items())
          + f" (medians of {args.repeats}, {args.images} images, {workers} cores)", flush=True)
    if c is not None:
        print(f"{case}: clipscale / peer {_fmt(out['ratio'])}, / single process "
              f"{_fmt(out['ratio_to_single_process'])}, fraction of the limit {_fmt(out['fraction_of_limit'])}",
              flush=True)
    return out


def _fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.2f}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=4000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--case", default="all", choices=["png32", "jpeg224", "all"])
    parser.add_argument("--sides", default=",".join(SIDES),
                        help="comma-separated subset of candidate,peer,baseline,limit (e.g. candidate alone under py-spy)")
    args = parser.parse_args()
    args.sides = [s for s in args.sides.split(",") if s]
    if unknown := set(args.sides) - set(SIDES):
        parser.error(f"--sides: unknown {sorted(unknown)}; expected some of {list(SIDES)}")

    import boto3
    import ray
    from moto.server import ThreadedMotoServer

    os.environ.setdefault("AWS_ACCESS_KEY_ID", "bench")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "bench")
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request once anything logs at INFO
    endpoint = f"http://127.0.0.1:{port}"
    settings = StorageSettings(endpoint_url=endpoint)
    boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(Bucket="bench")
    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False, configure_logging=False)
    ray.data.DataContext.get_current().enable_progress_bars = False

    cases = ["png32", "jpeg224"] if args.case == "all" else [args.case]
    results = {case: measure_case(case, args, settings, endpoint) for case in cases}
    ray.shutdown()
    server.stop()

    head = results.get("jpeg224") or results[cases[0]]
    if head.get("ratio") is None:
        print("no ratio: the headline needs both the candidate and the peer (--sides)", flush=True)
        return 0
    report("bench_data", head["ratio"], head["peer"], head["candidate"], "images/s", baseline_name="webdataset peer",
           cases=results, images=args.images)
    return 0


if __name__ == "__main__":
    sys.exit(main())
