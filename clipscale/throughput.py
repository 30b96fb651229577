"""Bare single-process training throughput: the reference a rung's measured speed
is compared with (benchmarks) and the basis of dry-run device-day estimates.

Same model, same AdamW settings and loss as the real loop, but batches are
already in memory and there is no Ray, DeepSpeed or data pipeline.
"""

from __future__ import annotations

import time

import torch

from clipscale.config import RungConfig, TrainConfig
from clipscale.model import build_model
from clipscale.train.loss import clamp_logit_scale_, clip_loss
from clipscale.train.optim import adamw


def synthetic_batch(rung: RungConfig, batch_size: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    size, ctx = rung.model.image_size, rung.model.context_length
    images = torch.randn(batch_size, 3, size, size, generator=g)
    tokens = torch.randint(1, 49405, (batch_size, ctx), generator=g)
    tokens[:, 0], tokens[:, -1] = 49406, 49407
    return images, tokens


def bare_loop(rung: RungConfig, train: TrainConfig, batches: list[tuple[torch.Tensor, torch.Tensor]],
              steps: int, warmup: int = 2, device: str = "cpu") -> float:
    """Samples per second of a plain AdamW loop over in-memory batches (after `warmup` steps)."""
    torch.manual_seed(0)
    model = build_model(rung.model, device)
    opt = adamw(model, train)
    batches = [(i.to(device), t.to(device)) for i, t in batches]
    n = 0
    t0 = time.perf_counter()
    for step in range(warmup + steps):
        if step == warmup:
            t0, n = time.perf_counter(), 0
        images, tokens = batches[step % len(batches)]
        image_features, text_features, scale = model(images, tokens)[:3]
        loss = clip_loss(image_features, text_features, scale)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if train.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), train.grad_clip)
        opt.step()
        clamp_logit_scale_(model)
        n += images.shape[0]
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return n / (time.perf_counter() - t0)


def measure_samples_per_sec(rung: RungConfig, train: TrainConfig, steps: int = 5) -> float:
    device = "cuda" if torch.cuda.is_available() else "cpu"
    micro = max(1, rung.batch_size // rung.workers)
    return bare_loop(rung, train, [synthetic_batch(rung, micro)], steps, device=device)
