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
from dataclasses import asdict, dataclass, fields
from typing import Any

import open_clip
import torch
from torch.utils.flop_counter import FlopCounterMode

from clipscale.errors import ConfigError

FAMILIES = ("vit", "resnet")
# ModifiedResNet downsamples by 32 (stride-2 stem + avgpool + 3 strided stages)
# and sizes its attention-pool positional embedding from image_size // 32.
RESNET_STRIDE = 32
# CLIP's temperature initialisation (Radford et al. 2021, sec. 2.5): tau = 0.07.
INIT_LOGIT_SCALE = math.log(1 / 0.07)


def _is_pos_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v > 0


@dataclass
class ModelSpec:
    family: str = "vit"                 # "vit" | "resnet"
    embed_dim: int = 64
    image_size: int = 32
    vision_width: int = 64              # ViT width; for ResNet the open_clip vision_cfg.width (64 for RN50)
    vision_layers: int | list[int] = 2  # int for ViT; list of 4 ints for ResNet (e.g. [3,4,6,3])
    vision_head_width: int = 32         # ViT heads = vision_width // vision_head_width (open_clip convention, 64 for real models)
    patch_size: int = 4                 # ViT only
    context_length: int = 32
    text_width: int = 64
    text_heads: int = 2
    text_layers: int = 2
    vocab_size: int = 49408

    def validate(self, prefix: str = "model") -> "ModelSpec":
        """Raise ConfigError naming the first bad dotted key; return self when valid."""
        def key(name: str) -> str:
            return f"{prefix}.{name}"

        if self.family not in FAMILIES:
            raise ConfigError(key("family"), self.family, f"one of {list(FAMILIES)}")
        for name in ("embed_dim", "image_size", "vision_width", "vision_head_width",
                     "context_length", "text_width", "text_heads", "text_layers", "vocab_size"):
            if not _is_pos_int(getattr(self, name)):
                raise ConfigError(key(name), getattr(self, name), "a positive integer")
        if self.text_width % self.text_heads:
            raise ConfigError(key("text_heads"), self.text_heads,
                              f"a divisor of text_width={self.text_width}")
        if self.family == "vit":
            if not _is_pos_int(self.vision_layers):
                raise ConfigError(key("vision_layers"), self.vision_layers,
                                  "a positive integer for family 'vit'")
            if not _is_pos_int(self.patch_size):
                raise ConfigError(key("patch_size"), self.patch_size, "a positive integer")
            if self.vision_width % self.vision_head_width:
                raise ConfigError(key("vision_head_width"), self.vision_head_width,
                                  f"a divisor of vision_width={self.vision_width}")
            if self.image_size % self.patch_size:
                raise ConfigError(key("image_size"), self.image_size,
                                  f"a multiple of patch_size={self.patch_size}")
        else:
            layers = self.vision_layers
            if not (isinstance(layers, (list, tuple)) and len(layers) == 4
                    and all(_is_pos_int(n) for n in layers)):
                raise ConfigError(key("vision_layers"), layers,
                                  "a list of 4 positive integers for family 'resnet'")
            # open_clip: the attention pool runs at width*32 channels with
            # width*32 // head_width heads.
            if (self.vision_width * 32) % self.vision_head_width:
                raise ConfigError(key("vision_head_width"), self.vision_head_width,
                                  f"a divisor of 32*vision_width={32 * self.vision_width}")
            if self.image_size % RESNET_STRIDE:
                raise ConfigError(key("image_size"), self.image_size,
                                  f"a multiple of {RESNET_STRIDE} for family 'resnet'")
        return self

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        if isinstance(d["vision_layers"], tuple):
            d["vision_layers"] = list(d["vision_layers"])
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any], prefix: str = "model") -> "ModelSpec":
        """Build and validate a spec; unknown keys raise ConfigError naming the key."""
        if not isinstance(d, dict):
            raise ConfigError(prefix, d, "a mapping of model fields")
        known = {f.name for f in fields(cls)}
        for k in d:
            if k not in known:
                raise ConfigError(f"{prefix}.{k}", d[k], f"one of {sorted(known)}")
        kw = dict(d)
        if isinstance(kw.get("vision_layers"), tuple):
            kw["vision_layers"] = list(kw["vision_layers"])
        return cls(**kw).validate(prefix)

    def open_clip_cfg(self) -> dict[str, Any]:
        """Keyword arguments for ``open_clip.CLIP`` (the shape of open_clip's model_configs JSON)."""
        vision: dict[str, Any] = {
            "image_size": self.image_size,
            "width": self.vision_width,
            "head_width": self.vision_head_width,
        }
        if self.family == "vit":
            vision.update(layers=self.vision_layers, patch_size=self.patch_size)
        else:
            # A list/tuple of layers is what makes open_clip build a ModifiedResNet.
            vision.update(layers=list(self.vision_layers), patch_size=None)
        text = {
            "context_length": self.context_length,
            "vocab_size": self.vocab_size,
            "width": self.text_width,
            "heads": self.text_heads,
            "layers": self.text_layers,
        }
        return {"embed_dim": self.embed_dim, "vision_cfg": vision, "text_cfg": text}


def build_model(spec: ModelSpec, device: str | torch.device = "cpu") -> open_clip.CLIP:
    """A freshly initialised CLIP for ``spec``.

    ``model(images, tokens)`` returns ``(image_features, text_features, logit_scale.exp())``
    with both feature sets L2-normalised. Building under the device context lets
    ``device="meta"`` create arbitrarily large models without allocating memory.
    """
    spec.validate()
    with torch.device(device):
        return open_clip.CLIP(**spec.open_clip_cfg(), init_logit_scale=INIT_LOGIT_SCALE)


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
