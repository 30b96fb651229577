"""AdamW parameter groups and the learning-rate schedule.

The schedule is a pure function of samples seen (not steps), so a resumed run,
or one restarted with a different world size or accumulation, lands on exactly
the learning rate it would have had.
"""
from __future__ import annotations

import math
from typing import Any

import torch

# open_clip's training rule (open_clip_train/main.py): gains, biases, norm
# weights, the temperature and 1-d embeddings get no weight decay. CLIP's
# 2-d token/positional embeddings are decayed under this rule, as in open_clip.
_NO_DECAY_SUBSTRINGS = ("bn", "ln", "bias", "logit_scale")


def is_no_decay(name: str, param: torch.Tensor) -> bool:
    return param.ndim < 2 or any(s in name for s in _NO_DECAY_SUBSTRINGS)


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Two AdamW groups over the trainable parameters: decayed, and not decayed.

    Empty groups are dropped (a tiny or frozen model may have none to decay). The group
    dicts also carry ``"name"`` ("decay" / "no_decay") for logging; torch and
    DeepSpeed pass unknown group keys through.
    """
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        (no_decay if is_no_decay(name, param) else decay).append(param)
    groups = [
        {"name": "decay", "params": decay, "weight_decay": weight_decay},
        {"name": "no_decay", "params": no_decay, "weight_decay": 0.0},
    ]
    return [g for g in groups if g["params"]]


def lr_at(samples_seen: int, base_lr: float, warmup_samples: int, total_samples: int,
          min_lr: float = 0.0) -> float:
    """Linear warm-up from 0 to ``base_lr`` over ``warmup_samples``, then cosine to ``min_lr``
    at ``total_samples``; ``min_lr`` afterwards.

    Pass the samples seen *including* the batch about to be trained on, so the
    first step has a non-zero rate.
    """
    if total_samples <= 0 or not 0 <= warmup_samples <= total_samples:
        raise ValueError(f"need 0 <= warmup_samples ({warmup_samples}) <= total_samples ({total_samples}), total > 0")
    if not 0 <= min_lr <= base_lr:
        raise ValueError(f"need 0 <= min_lr ({min_lr}) <= base_lr ({base_lr})")
    if samples_seen < warmup_samples:
        return base_lr * max(samples_seen, 0) / warmup_samples
    if samples_seen >= total_samples:
        return min_lr
    progress = (samples_seen - warmup_samples) / (total_samples - warmup_samples)
    return min_lr + 0.5 * (base_lr - min_lr) * (1.0 + math.cos(math.pi * progress))


def set_lr_(optimizer: Any, lr: float) -> None:
    """Set every group's rate on ``optimizer``: a torch optimiser, a DeepSpeed
    ZeRO/bf16 wrapper, or the engine (``engine.optimizer`` is used)."""
    if isinstance(optimizer, torch.nn.Module):  # a DeepSpeedEngine
        optimizer = optimizer.optimizer
    for group in optimizer.param_groups:
        group["lr"] = lr
