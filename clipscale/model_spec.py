"""A rung's model shape, as the config holds it: plain data, no torch.

`clipscale.model` turns a spec into an open_clip CLIP and counts its parameters and
FLOPs; this module only describes and validates the shape, so that loading a config
never imports torch.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from enum import StrEnum
from typing import Any

from clipscale.errors import ConfigError


class ModelFamily(StrEnum):
    VIT = "vit"
    RESNET = "resnet"


FAMILIES = tuple(f.value for f in ModelFamily)
# ModifiedResNet downsamples by 32 (stride-2 stem + avgpool + 3 strided stages)
# and sizes its attention-pool positional embedding from image_size // 32.
RESNET_STRIDE = 32


def _is_pos_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v > 0


@dataclass
class ModelSpec:
    family: ModelFamily = ModelFamily.VIT
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
    # Start every attention layer's query projection at zero, so attention begins uniform in
    # every seed (the muP recipe, Yang et al. 2022, "Tensor Programs V", appendix D.2). At the
    # embedded ladder's widths the random initial attention decides when a seed leaves the
    # loss plateau: w16-l1 at 32k samples, val-loss SD over six seeds 0.41 -> 0.09 nats.
    zero_init_query: bool = False

    def validate(self, prefix: str = "model") -> "ModelSpec":
        """Raise ConfigError naming the first bad dotted key; return self when valid."""
        def key(name: str) -> str:
            return f"{prefix}.{name}"

        if self.family not in FAMILIES:
            raise ConfigError(key("family"), self.family, f"one of {list(FAMILIES)}")
        self.family = ModelFamily(self.family)
        for name in ("embed_dim", "image_size", "vision_width", "vision_head_width",
                     "context_length", "text_width", "text_heads", "text_layers", "vocab_size"):
            if not _is_pos_int(getattr(self, name)):
                raise ConfigError(key(name), getattr(self, name), "a positive integer")
        if not isinstance(self.zero_init_query, bool):
            raise ConfigError(key("zero_init_query"), self.zero_init_query, "true or false")
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
        d["family"] = str(d["family"].value if isinstance(d["family"], ModelFamily) else d["family"])
        if isinstance(d["vision_layers"], tuple):
            d["vision_layers"] = list(d["vision_layers"])
        if not d["zero_init_query"]:
            del d["zero_init_query"]  # the default before the key existed: earlier rungs keep their hashes
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
