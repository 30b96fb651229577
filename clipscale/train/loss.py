"""The contrastive objectives over the global batch, and the learnable temperature.

CLIP (softmax):

Each rank scores its local images (texts) against the texts (images) of all ranks,
gathered with gradient (open_clip ``ClipLoss(local_loss=True, gather_with_grad=True)``).
The loss a rank returns covers its own rows only; the mean over ranks equals the
single-process loss on the concatenated batch, and rank-averaged gradients (what
DeepSpeed and DDP apply) equal the single-process gradients. Local batches must
have equal sizes on all ranks (all_gather and the label offsets assume it).

SigLIP (sigmoid; Zhai et al. 2023): every (image, text) pair of the global batch is a binary
classification, `-log sigmoid(z * (t x.y + b))` with z = 1 on the diagonal and -1 off it, summed
and divided by the local batch. open_clip's ``SigLipLoss`` passes the texts from rank to rank
(its neighbour exchange, both directions at once) instead of gathering them, so each rank's loss
covers its own images against every text; the mean over ranks is again the one-process loss.
"""
from __future__ import annotations

import functools
import math

import torch
from open_clip.loss import ClipLoss, SigLipLoss

# CLIP (Radford et al. 2021, sec. 2.5): the logit scale is clipped at 100 "to
# prevent scaling the logits by more than 100".
MAX_LOGIT_SCALE = 100.0


@functools.lru_cache(maxsize=8)
def _loss_module(rank: int, world_size: int) -> ClipLoss:
    # cache_labels avoids re-creating arange(B) each step; the cache keys on the
    # device and batch size, so a short final batch is still handled.
    return ClipLoss(local_loss=True, gather_with_grad=True, cache_labels=True,
                    rank=rank, world_size=world_size)


def clip_loss(image_features: torch.Tensor, text_features: torch.Tensor,
              logit_scale: torch.Tensor, rank: int = 0, world_size: int = 1) -> torch.Tensor:
    """This rank's share of the symmetric InfoNCE loss over the global batch.

    ``image_features``/``text_features`` are this rank's L2-normalised features (B x D);
    ``logit_scale`` is the multiplier, i.e. ``exp(model.logit_scale)`` as CLIP.forward
    returns it (0-dim or shape (1,)). With ``world_size > 1`` torch.distributed must
    be initialised.
    """
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} outside world_size {world_size}")
    return _loss_module(rank, world_size)(image_features, text_features, logit_scale)


@functools.lru_cache(maxsize=8)
def _siglip_module(rank: int, world_size: int) -> SigLipLoss:
    return SigLipLoss(rank=rank, world_size=world_size, dist_impl="bidir")


def siglip_loss(image_features: torch.Tensor, text_features: torch.Tensor, logit_scale: torch.Tensor,
                logit_bias: torch.Tensor, rank: int = 0, world_size: int = 1) -> torch.Tensor:
    """This rank's share of the sigmoid loss over the global batch (arguments as `clip_loss`, plus
    the learnt ``logit_bias``)."""
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} outside world_size {world_size}")
    return _siglip_module(rank, world_size)(image_features, text_features, logit_scale, logit_bias)


def objective_loss(objective: str, rank: int = 0, world_size: int = 1):
    """The loss of ``objective`` (`clip` or `siglip`) as a function of the model's outputs:
    ``(image_features, text_features, logit_scale[, logit_bias])`` -> this rank's loss."""
    if objective == "siglip":
        return functools.partial(siglip_loss, rank=rank, world_size=world_size)
    return functools.partial(clip_loss, rank=rank, world_size=world_size)


@torch.no_grad()
def clamp_logit_scale_(model: torch.nn.Module, max_scale: float = MAX_LOGIT_SCALE) -> None:
    """Clamp the log-parameter ``logit_scale`` at log(max_scale), in place.

    Call after every optimiser step, on every rank (under ZeRO 1-2 it is a collective).
    ``model`` is the CLIP module, or under DeepSpeed the engine: pass the engine.

    Clamping the module's parameter alone is not enough under DeepSpeed: ZeRO 1-3
    and the bf16 optimisers keep a separate fp32 master copy, which the next step
    copies back over the parameter (measured: the clamp was undone at ZeRO 1-3).
    So the master copy is clamped too, and the working copy (the parameter, or its
    ZeRO-3 partition ``ds_tensor``) so the next forward sees the clamped value.
    """
    param = getattr(model, "module", model).logit_scale
    ceiling = math.log(max_scale)
    for master in _fp32_masters(model, param):
        master.clamp_(max=ceiling)
    if hasattr(param, "ds_id"):
        # ZeRO-3: clamp this rank's fp32 partition (a clamp is elementwise). The
        # "full" setter fails for a 1-element parameter at world size > 1
        # (DeepSpeed 0.19.8 narrows past the end on rank 1).
        from deepspeed.utils import safe_get_local_fp32_param, safe_set_local_fp32_param
        master = safe_get_local_fp32_param(param)
        if master is not None:
            safe_set_local_fp32_param(param, master.clamp(max=ceiling))
    elif hasattr(param, "_hp_mapping"):
        # ZeRO 1-2 and DeepSpeed's BF16_Optimizer (all-reduces: call on every rank).
        from deepspeed.utils import safe_get_full_fp32_param, safe_set_full_fp32_param
        master = safe_get_full_fp32_param(param)
        if master is not None:
            safe_set_full_fp32_param(param, master.clamp(max=ceiling))
    param.clamp_(max=ceiling)
    partition = getattr(param, "ds_tensor", None)
    if partition is not None:
        partition.clamp_(max=ceiling)


def _fp32_masters(engine: torch.nn.Module, param: torch.nn.Parameter) -> list[torch.Tensor]:
    """Masters kept by DeepSpeed's unfused fp16/bf16 wrapper (bf16 at ZeRO stage 0),
    which has no safe_* API: its ``fp32_groups`` mirror ``fp16_groups`` one to one."""
    optimizer = getattr(engine, "optimizer", None)
    lp_groups, hp_groups = getattr(optimizer, "fp16_groups", None), getattr(optimizer, "fp32_groups", None)
    if not lp_groups or not hp_groups or not isinstance(hp_groups[0], list):
        return []
    return [hp for lp_group, hp_group in zip(lp_groups, hp_groups)
            for lp, hp in zip(lp_group, hp_group) if lp is param]


def flatten_scalar_params_(model: torch.nn.Module) -> list[str]:
    """Reshape every 0-dim parameter to shape (1,), in place; return their names.

    DeepSpeed 0.19.8 crashes in ``_broadcast_model`` on 0-dim parameters when the
    world size is > 1. CLIP's forward is unaffected: ``logit_scale.exp()`` of shape
    (1,) broadcasts against the B x B logits. Call before ``deepspeed.initialize``
    and before building the optimiser (it replaces the Parameter objects).
    """
    renamed = []
    for module_name, module in model.named_modules():
        for name, param in list(module.named_parameters(recurse=False)):
            if param.dim() == 0:
                new = torch.nn.Parameter(param.detach().reshape(1).clone(),
                                         requires_grad=param.requires_grad)
                setattr(module, name, new)
                renamed.append(f"{module_name}.{name}" if module_name else name)
    return renamed
