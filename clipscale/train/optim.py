"""AdamW parameter groups and the learning-rate schedules (cosine, WSD).

The schedule is a pure function of samples seen (not steps), so a resumed run,
or one restarted with a different world size or accumulation, lands on exactly
the learning rate it would have had.
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # torch at import time only where it is used: config.py checks schedules without it
    import torch

# open_clip's training rule (open_clip_train/main.py): gains, biases, norm
# weights, the temperature and 1-d embeddings get no weight decay. CLIP's
# 2-d token/positional embeddings are decayed under this rule, as in open_clip.
_NO_DECAY_SUBSTRINGS = ("bn", "ln", "bias", "logit_scale")


# torch's fused AdamW kernel (CPU and CUDA), not its default per-tensor loop: the same update,
# one kernel per parameter group. Measured on CPU, one thread, per step: 3.5 -> 1.0 ms at
# w12-l1, 14.3 -> 1.9 ms at w32-l2, 57 -> 10 ms at w128-l2 (the 49408-row token embedding is
# most of a tiny model's parameters). The loop (through DeepSpeed's config), the bare loops it
# is benchmarked against and the dry run's throughput estimate all build AdamW with these (`adamw`
# outside DeepSpeed).
ADAMW_IMPL = {"fused": True}


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


def adamw(model: torch.nn.Module, train: Any) -> torch.optim.AdamW:
    """AdamW over ``model``'s two groups with a TrainConfig's settings, built as DeepSpeed builds
    the loop's (``ADAMW_IMPL``): for the plain torch loops clipscale is measured against."""
    import torch

    return torch.optim.AdamW(param_groups(model, train.weight_decay), lr=train.lr, betas=tuple(train.betas),
                             eps=train.eps, **ADAMW_IMPL)


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


def wsd_lr_at(samples_seen: int, base_lr: float, warmup_samples: int, decay_start: int, total_samples: int,
              min_lr: float = 0.0) -> float:
    """Warmup-stable-decay (WSD; Hu et al. 2024, MiniCPM; Hägele et al. 2024, "Scaling Laws and
    Compute-Optimal Training Beyond Fixed Training Durations"): linear warm-up to ``base_lr`` over
    ``warmup_samples``, ``base_lr`` up to ``decay_start``, then linear to ``min_lr`` at
    ``total_samples``; ``min_lr`` afterwards.

    Because the rate is constant until the decay, a run of any shorter length is the same run up to
    its own decay: a cooldown branch resumes the stable phase's state and decays from there
    (Hägele et al.). As in `lr_at`, pass the samples seen *including* the batch about to be
    trained: the step that reaches ``decay_start`` trains at ``base_lr``, the last at ``min_lr``.
    """
    if not 0 <= warmup_samples <= decay_start <= total_samples or total_samples <= 0:
        raise ValueError(f"need 0 <= warmup_samples ({warmup_samples}) <= decay_start ({decay_start}) <= "
                         f"total_samples ({total_samples}), total > 0")
    if not 0 <= min_lr <= base_lr:
        raise ValueError(f"need 0 <= min_lr ({min_lr}) <= base_lr ({base_lr})")
    if samples_seen < warmup_samples:
        return base_lr * max(samples_seen, 0) / warmup_samples
    if samples_seen <= decay_start:
        return base_lr
    if samples_seen >= total_samples:
        return min_lr
    return min_lr + (base_lr - min_lr) * (total_samples - samples_seen) / (total_samples - decay_start)


def branch_point(total_samples: int, decay_fraction: float, batch_size: int) -> int:
    """Where a WSD run of ``total_samples`` leaves the stable phase, in whole global batches: the
    state a cooldown branch of that length starts from (the main run passes it, still stable)."""
    if not 0 < decay_fraction < 1 or batch_size <= 0:
        raise ValueError(f"need 0 < decay_fraction ({decay_fraction}) < 1 and batch_size ({batch_size}) > 0")
    return int((1.0 - decay_fraction) * total_samples) // batch_size * batch_size


def warmup_samples(fixed: int, fraction: float, total_samples: int) -> int:
    """A run's warm-up in samples: `train.warmup_samples` when > 0, else `train.warmup_fraction` of the budget."""
    return fixed or int(fraction * total_samples)


def cooldown_budget(total_samples: int, fraction: float, batch_size: int) -> int:
    """A cooldown branch's sample budget D_b: `fraction` of the main run's, in whole global batches."""
    return int(fraction * total_samples) // batch_size * batch_size


def wsd_decay_start(total_samples: int, decay_fraction: float, batch_size: int) -> int:
    """The samples (batch included) of the decay's first step: one batch past `branch_point`, so that
    step trains at the stable rate and a branch's first step matches the main run's (both ends of
    the linear decay are trained, as in Hägele et al.'s step-indexed ramp)."""
    return min(branch_point(total_samples, decay_fraction, batch_size) + batch_size, total_samples)


def schedule_lr(kind: str, samples_seen: int, base_lr: float, warmup_samples: int, total_samples: int,
                min_lr: float = 0.0, decay_start: int = 0) -> float:
    """The one dispatch over schedules (`train.schedule`): "cosine" (`lr_at`) or "wsd" (`wsd_lr_at`,
    whose ``decay_start`` comes from `wsd_decay_start`)."""
    if kind == "cosine":
        return lr_at(samples_seen, base_lr, warmup_samples, total_samples, min_lr)
    if kind == "wsd":
        return wsd_lr_at(samples_seen, base_lr, warmup_samples, decay_start, total_samples, min_lr)
    raise ValueError(f"unknown schedule {kind!r}: cosine or wsd")


def set_lr_(optimizer: Any, lr: float) -> None:
    """Set every group's rate on ``optimizer``: a torch optimiser, a DeepSpeed
    ZeRO/bf16 wrapper, or the engine (``engine.optimizer`` is used)."""
    import torch

    if isinstance(optimizer, torch.nn.Module):  # a DeepSpeedEngine
        optimizer = optimizer.optimizer
    for group in optimizer.param_groups:
        group["lr"] = lr
