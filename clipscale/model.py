"""A rung's model: spec -> open_clip CLIP, plus parameter and FLOP accounting.

Conventions (ARCHITECTURE.md, "Units and names"):
- FLOPs = 2 x multiply-accumulates, counted by ``torch.utils.flop_counter`` (which
  already counts 2 per MAC for mm/addmm/bmm/conv).
- Forward FLOPs per sample = image tower at ``image_size`` + text tower at
  ``context_length`` (all tokens, padding included). The similarity matmul of the
  loss is left out: it depends on the batch size, not the model (2 x batch x
  embed_dim per sample per direction: ~0.5% of ViT-B/32's forward at CLIP's batch
  of 32,768, less for smaller batches). This is the convention of open_clip's
  published profile (docs/model_profile.csv), which the tests reproduce to its
  two decimals, per tower.
"""
from __future__ import annotations

import functools
import math

import open_clip
import torch
from torch.utils.flop_counter import FlopCounterMode

from clipscale.model_spec import ModelSpec

# CLIP's temperature initialisation (Radford et al. 2021, sec. 2.5): tau = 0.07.
INIT_LOGIT_SCALE = math.log(1 / 0.07)
# SigLIP's (Zhai et al. 2023, sec. 3): t' = log 10 and bias -10, so that training starts close to
# the prior that almost every pair in a batch is a negative.
SIGLIP_INIT_LOGIT_SCALE = math.log(10.0)
SIGLIP_INIT_LOGIT_BIAS = -10.0


def build_model(spec: ModelSpec, device: str | torch.device = "cpu", objective: str = "clip") -> open_clip.CLIP:
    """A freshly initialised CLIP for ``spec``, with the temperature (and for ``siglip`` the
    logit bias) its objective starts from.

    ``model(images, tokens)`` returns ``(image_features, text_features, logit_scale.exp())``,
    plus ``logit_bias`` for ``siglip``, with both feature sets L2-normalised. Building under the
    device context lets ``device="meta"`` create arbitrarily large models without allocating memory.
    """
    spec.validate()
    init = ({"init_logit_scale": SIGLIP_INIT_LOGIT_SCALE, "init_logit_bias": SIGLIP_INIT_LOGIT_BIAS}
            if objective == "siglip" else {"init_logit_scale": INIT_LOGIT_SCALE})
    with torch.device(device):
        model = open_clip.CLIP(**spec.open_clip_cfg(), **init)
    if spec.zero_init_query:
        _zero_queries(model)
    return model


def _zero_queries(model: torch.nn.Module) -> None:
    """Zero the query third of every ``nn.MultiheadAttention``'s packed in-projection (ViT and
    text towers; a ResNet's attention pool keeps its own init). Keys stay random, so the
    queries' gradient is not zero and they train from the first step."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.MultiheadAttention):
                m.in_proj_weight[:m.embed_dim].zero_()
                if m.in_proj_bias is not None:
                    m.in_proj_bias[:m.embed_dim].zero_()


# -- accounting ---------------------------------------------------------------

def _key(spec: ModelSpec) -> tuple:
    """A hashable form of a spec, for the caches below."""
    d = spec.validate().to_dict()
    d["vision_layers"] = tuple(d["vision_layers"]) if isinstance(d["vision_layers"], list) else d["vision_layers"]
    return tuple(sorted(d.items()))


def _from_key(key: tuple) -> ModelSpec:
    d = dict(key)
    if isinstance(d["vision_layers"], tuple):
        d["vision_layers"] = list(d["vision_layers"])
    return ModelSpec(**d)


def _is_embedding(name: str) -> bool:
    # Lookup tables, not compute: the text token embedding and every positional
    # embedding (text; ViT patch grid; ResNet attention pool). ViT's class_embedding
    # is a single width-vector, used like a bias, and stays in nonembedding.
    return name == "token_embedding.weight" or name.endswith("positional_embedding")


@functools.lru_cache(maxsize=256)
def _param_counts(key: tuple) -> dict[str, int]:
    model = build_model(_from_key(key), device="meta")
    counts = {"total": 0, "embedding": 0, "image": 0, "text": 0}
    for name, p in model.named_parameters():
        n = p.numel()
        counts["total"] += n
        if _is_embedding(name):
            counts["embedding"] += n
        if name.startswith("visual."):
            counts["image"] += n
        elif name not in ("logit_scale", "logit_bias"):
            counts["text"] += n
    counts["nonembedding"] = counts["total"] - counts["embedding"]
    return counts


def param_counts(spec: ModelSpec) -> dict[str, int]:
    """Parameter counts: ``total``, ``nonembedding``, ``embedding``, ``image``, ``text``.

    - ``nonembedding`` = ``total`` minus the token embedding (vocab x text_width)
      and all positional embeddings (text, ViT, ResNet attention pool). In tiny
      models the token embedding is most of the parameters, so scaling fits use this.
    - ``image`` = everything under ``visual`` (includes its projection to embed_dim);
      ``text`` = the text tower incl. token/positional embeddings and its projection.
      ``total`` = image + text + 1 (the logit scale).
    """
    return dict(_param_counts(_key(spec)))


@functools.lru_cache(maxsize=256)
def _forward_flops(key: tuple) -> tuple[int, int]:
    spec = _from_key(key)
    model = build_model(spec, device="meta")
    # Eval mode so BatchNorm accepts one sample at 1x1 spatial size (tiny ResNets);
    # grad stays enabled so nn.MultiheadAttention skips its inference fast path,
    # a fused op that FlopCounterMode does not count (on CPU it lost a third of
    # ViT-B/32's image FLOPs when the counter ran under no_grad).
    model.eval()
    image = torch.empty(1, 3, spec.image_size, spec.image_size, device="meta")
    tokens = torch.zeros(1, spec.context_length, dtype=torch.long, device="meta")
    with torch.enable_grad(), FlopCounterMode(display=False) as counter:
        model.encode_image(image)
    image_flops = counter.get_total_flops()
    with torch.enable_grad(), FlopCounterMode(display=False) as counter:
        model.encode_text(tokens)
    return image_flops, counter.get_total_flops()


def forward_flops_by_tower(spec: ModelSpec) -> dict[str, int]:
    """Forward FLOPs per sample, ``{"image": ..., "text": ...}`` (see module docstring)."""
    image, text = _forward_flops(_key(spec))
    return {"image": image, "text": text}


def forward_flops(spec: ModelSpec) -> int:
    """Forward FLOPs per sample, image tower + text tower (training compute = 3x this per sample)."""
    return sum(_forward_flops(_key(spec)))


# -- the CLIP paper's models ---------------------------------------------------
# Tower shapes from open_clip 3.3.0's model_configs/{RN50,RN101,RN50x4,RN50x16,
# RN50x64,ViT-B-32,ViT-B-16,ViT-L-14}.json; head width 64 is open_clip's default.

def _resnet(embed: int, size: int, width: int, layers: list[int], text_width: int) -> ModelSpec:
    return ModelSpec(family="resnet", embed_dim=embed, image_size=size, vision_width=width,
                     vision_layers=layers, vision_head_width=64,
                     context_length=77, text_width=text_width, text_heads=text_width // 64,
                     text_layers=12, vocab_size=49408)


def _vit(embed: int, width: int, layers: int, patch: int, text_width: int) -> ModelSpec:
    return ModelSpec(family="vit", embed_dim=embed, image_size=224, vision_width=width,
                     vision_layers=layers, vision_head_width=64, patch_size=patch,
                     context_length=77, text_width=text_width, text_heads=text_width // 64,
                     text_layers=12, vocab_size=49408)


CLIP_PAPER_MODELS: dict[str, ModelSpec] = {
    "RN50": _resnet(1024, 224, 64, [3, 4, 6, 3], 512),
    "RN101": _resnet(512, 224, 64, [3, 4, 23, 3], 512),
    "RN50x4": _resnet(640, 288, 80, [4, 6, 10, 6], 640),
    "RN50x16": _resnet(768, 384, 96, [6, 8, 18, 8], 768),
    "RN50x64": _resnet(1024, 448, 128, [3, 15, 36, 10], 1024),
    "ViT-B/32": _vit(512, 768, 12, 32, 512),
    "ViT-B/16": _vit(512, 768, 12, 16, 512),
    "ViT-L/14": _vit(768, 1024, 24, 14, 768),
}
