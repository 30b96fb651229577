"""bench_train's two-worker case: clipscale's training path and a bare torch DDP loop, both fed the
same pre-made in-memory batches, so their ratio measures training overhead alone (no Ray Data).

- candidate: `fit_from_memory` runs clipscale's own worker loop (`train_loop_per_worker`: DeepSpeed
  engine, hooks, logit-scale clamp, metrics windows) under a Ray Train `TorchTrainer`, with the
  Ray Data `BatchStream` swapped for `MemoryStream` inside each worker process.
- baseline: `ddp_samples_per_s` spawns one process per rank, gloo, `DistributedDataParallel`
  around the same open_clip model, torch AdamW, the same loss and clamp, the same per-rank batch.

Both turn the same uint8 images into CLIP-normalised floats each step (`to_model_input`), as
clipscale's loop does with what its stream hands it.
"""

from __future__ import annotations

import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from clipscale.config import ExperimentConfig, RungConfig, TrainConfig
from clipscale.data.pipeline import DataPosition, SkipCounter


def memory_batch(rung: RungConfig, micro: int, rank: int) -> tuple[np.ndarray, np.ndarray]:
    """One rank's batch as clipscale's stream yields it: uint8 NxHxWx3 images, int64 tokens."""
    rng = np.random.default_rng(rank)
    size, ctx = rung.model.image_size, rung.model.context_length
    images = rng.integers(0, 256, (micro, size, size, 3), dtype=np.uint8)
    tokens = rng.integers(1, 49405, (micro, ctx), dtype=np.int64)
    tokens[:, 0], tokens[:, -1] = 49406, 49407
    return images, tokens


class MemoryStream:
    """Stands in for `clipscale.data.pipeline.BatchStream` (same constructor, same batches' form)."""

    def __init__(self, _spec, micro_batch: int, rank: int = 0, _world: int = 1, position=None):
        self.position = position or DataPosition()
        self.skipped = SkipCounter()  # the loop adds a restored checkpoint's counts to it
        self.batch = memory_batch(_RUNG[0], micro_batch, rank)

    def __iter__(self):
        while True:
            yield self.batch


_RUNG: list[RungConfig] = []  # the rung of the job this worker process runs (set by memory_train_loop)


def memory_train_loop(job):
    """clipscale's `train_loop_per_worker`, fed from memory: the stream class is swapped in this
    worker process only (each Ray Train worker is its own process)."""
    from clipscale.train import loop

    _RUNG[:] = [job.rung]
    loop.open_stream = MemoryStream  # the loop opens its stream through open_stream (data/mixture.py)
    # No corpus behind it: rows unknown (NaN), as for a corpus without manifests.
    loop.rank_counts = lambda stream, seen: [float(seen), float("nan"), float("nan")]
    return loop.train_loop_per_worker(job)


def fit_from_memory(cfg: ExperimentConfig, rung: RungConfig, name: str):
    """fit_rung's TorchTrainer, with `memory_train_loop` as the worker function. Returns rank 0's result."""
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from clipscale.train.job import WorkerJob
    from clipscale.train.trainer import stream_spec

    job = WorkerJob(rung=rung, train=cfg.train, stream=stream_spec(cfg, rung, ("memory://",)), seed=0)
    trainer = TorchTrainer(
        memory_train_loop, train_loop_config=job,
        scaling_config=ScalingConfig(num_workers=rung.workers, resources_per_worker={"CPU": cfg.cluster.cpus_per_worker}),
        run_config=RunConfig(name=name, storage_path=cfg.cluster.storage_path, failure_config=FailureConfig(0)),
    )
    result = trainer.fit()
    if result.error is not None:
        raise result.error
    return result.return_value


@dataclass
class DdpJob:
    rung: RungConfig
    train: TrainConfig
    world: int
    steps: int
    warmup: int
    threads: int
    port: int
    out: str  # rank 0 writes its samples/s here


def _ddp_rank(rank: int, job: DdpJob) -> None:
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    from clipscale.data.transforms import to_model_input
    from clipscale.model import build_model
    from clipscale.train.loss import clamp_logit_scale_, clip_loss
    from clipscale.train.optim import adamw

    torch.set_num_threads(job.threads)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{job.port}", rank=rank, world_size=job.world)
    torch.manual_seed(0)
    model = DistributedDataParallel(build_model(job.rung.model))
    t = job.train
    opt = adamw(model.module, t)
    micro = job.rung.batch_size // job.world
    images_u8, tokens = (torch.from_numpy(a) for a in memory_batch(job.rung, micro, rank))
    for step in range(job.warmup + job.steps):
        if step == job.warmup:
            dist.barrier()
            t0 = time.perf_counter()
        image_features, text_features, scale = model(to_model_input(images_u8), tokens)[:3]
        loss = clip_loss(image_features, text_features, scale, rank, job.world)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if t.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), t.grad_clip)
        opt.step()
        clamp_logit_scale_(model.module)
    dist.barrier()
    if rank == 0:
        Path(job.out).write_text(str(job.rung.batch_size * job.steps / (time.perf_counter() - t0)))
    dist.destroy_process_group()


def ddp_samples_per_s(rung: RungConfig, train: TrainConfig, world: int, steps: int, warmup: int, threads: int,
                      port: int) -> float:
    """Global samples/s of a bare `world`-process DDP loop (gloo) after `warmup` steps."""
    import torch.multiprocessing as mp

    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "sps")
        mp.start_processes(_ddp_rank, args=(DdpJob(rung, train, world, steps, warmup, threads, port, out),),
                           nprocs=world, start_method="spawn")
        return float(Path(out).read_text())
