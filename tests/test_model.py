"""ModelSpec validation, model building, and parameter/FLOP accounting against published figures."""
from __future__ import annotations

import math

import pytest
import torch

from clipscale.errors import ConfigError
from clipscale.model import (CLIP_PAPER_MODELS, ModelSpec, build_model, forward_flops,
                             forward_flops_by_tower, param_counts)

# open_clip's published profile of its model configs (mlfoundations/open_clip,
# docs/model_profile.csv): forward GFLOPs per sample (image at native size, text
# at 77 tokens) as (image, text, total), and total parameters in millions.
PUBLISHED_GFLOPS = {
    "ViT-B/32": (8.82, 5.96, 14.78), "ViT-B/16": (35.13, 5.96, 41.09),
    "ViT-L/14": (162.03, 13.3, 175.33), "RN50": (12.22, 5.96, 18.18),
    "RN101": (19.54, 5.96, 25.5), "RN50x4": (42.56, 9.27, 51.82),
    "RN50x16": (149.39, 13.3, 162.69), "RN50x64": (529.11, 23.55, 552.65),
}
PUBLISHED_MPARAMS = {
    "ViT-B/32": 151.3, "ViT-B/16": 149.6, "ViT-L/14": 427.6, "RN50": 102.0, "RN50x64": 623.3,
}
NATIVE_SIZE = {"RN50x4": 288, "RN50x16": 384, "RN50x64": 448}


@pytest.mark.parametrize("name", sorted(PUBLISHED_GFLOPS))
def test_forward_flops_match_open_clip_profile(name):
    spec = CLIP_PAPER_MODELS[name]
    assert spec.image_size == NATIVE_SIZE.get(name, 224) and spec.context_length == 77
    image, text, total = PUBLISHED_GFLOPS[name]
    assert forward_flops(spec) / 1e9 == pytest.approx(total, rel=0.01)
    towers = forward_flops_by_tower(spec)
    assert towers["image"] / 1e9 == pytest.approx(image, rel=0.01)
    assert towers["text"] / 1e9 == pytest.approx(text, rel=0.01)


@pytest.mark.parametrize("name", sorted(PUBLISHED_MPARAMS))
def test_param_counts_match_open_clip_profile(name):
    counts = param_counts(CLIP_PAPER_MODELS[name])
    assert counts["total"] / 1e6 == pytest.approx(PUBLISHED_MPARAMS[name], rel=0.01)
    assert counts["total"] == counts["image"] + counts["text"] + 1  # + logit_scale


def test_nonembedding_excludes_token_and_positional_embeddings():
    spec = ModelSpec()
    counts = param_counts(spec)
    vit_grid = (spec.image_size // spec.patch_size) ** 2 + 1
    expected = (spec.vocab_size * spec.text_width + spec.context_length * spec.text_width
                + vit_grid * spec.vision_width)
    assert counts["total"] - counts["nonembedding"] == expected
    # The reason the key exists: in the tiny default the embedding is most of the model.
    assert counts["nonembedding"] < counts["total"] / 4


def test_flops_scale_with_image_size_and_split_by_tower():
    small = ModelSpec()
    big = ModelSpec(image_size=64)
    a, b = forward_flops_by_tower(small), forward_flops_by_tower(big)
    assert b["text"] == a["text"]
    assert b["image"] > 3.9 * a["image"]  # 4x the patches, plus attention's quadratic part
    assert forward_flops(small) == a["image"] + a["text"]


def test_built_model_forward_and_init():
    spec = ModelSpec(vision_layers=1, text_layers=1)
    model = build_model(spec)
    assert model.logit_scale.item() == pytest.approx(math.log(1 / 0.07))
    img_f, txt_f, scale = model(torch.randn(3, 3, 32, 32), torch.randint(0, 100, (3, 32)))
    assert img_f.shape == txt_f.shape == (3, spec.embed_dim)
    assert torch.allclose(img_f.norm(dim=-1), torch.ones(3), atol=1e-5)
    assert scale.item() == pytest.approx(1 / 0.07, rel=1e-5)
    counts = param_counts(spec)
    assert sum(p.numel() for p in model.parameters()) == counts["total"]


def _in_projs(model):
    return [m for m in model.modules() if isinstance(m, torch.nn.MultiheadAttention)]


def test_zero_init_query_starts_every_attention_uniform_and_the_queries_still_train():
    spec = ModelSpec(vision_width=16, vision_head_width=8, text_width=16, text_layers=2, embed_dim=16,
                     zero_init_query=True)
    torch.manual_seed(0)
    model = build_model(spec)
    attns = _in_projs(model)
    assert len(attns) == 4  # two ViT blocks, two text blocks
    for m in attns:
        w = m.embed_dim
        assert not m.in_proj_weight[:w].any() and not m.in_proj_bias[:w].any()
        assert m.in_proj_weight[w:].abs().min() > 0  # keys and values keep their random init
    torch.manual_seed(0)
    plain = build_model(ModelSpec(**{**spec.to_dict(), "zero_init_query": False}))
    same = [n for n, p in model.named_parameters() if "in_proj" not in n]
    assert all(torch.equal(dict(model.named_parameters())[n], dict(plain.named_parameters())[n]) for n in same)
    img, txt, scale = model(torch.randn(8, 3, 32, 32), torch.randint(1, 100, (8, 32)))
    (img @ txt.T * scale).logsumexp(1).mean().backward()
    assert all(m.in_proj_weight.grad[:m.embed_dim].abs().sum() > 0 for m in attns)


def test_zero_init_query_leaves_default_specs_and_their_hashes_alone():
    assert "zero_init_query" not in ModelSpec().to_dict()
    assert ModelSpec.from_dict({"zero_init_query": True}).to_dict()["zero_init_query"] is True
    assert ModelSpec.from_dict({"zero_init_query": True}).validate() != ModelSpec()


def test_tiny_resnet_builds_and_counts():
    spec = ModelSpec(family="resnet", vision_layers=[1, 1, 1, 1], vision_width=16,
                     vision_head_width=16, image_size=32)
    model = build_model(spec)
    img_f = model.encode_image(torch.randn(2, 3, 32, 32))
    assert img_f.shape == (2, spec.embed_dim)
    assert type(model.visual).__name__ == "ModifiedResNet"
    assert forward_flops(spec) > forward_flops_by_tower(spec)["text"] > 0


@pytest.mark.parametrize("change, key", [
    ({"family": "convnext"}, "model.family"),
    ({"embed_dim": 0}, "model.embed_dim"),
    ({"text_layers": -1}, "model.text_layers"),
    ({"vision_width": 48, "vision_head_width": 32}, "model.vision_head_width"),
    ({"text_width": 64, "text_heads": 3}, "model.text_heads"),
    ({"image_size": 30, "patch_size": 4}, "model.image_size"),
    ({"vision_layers": [1, 1, 1, 1]}, "model.vision_layers"),
    ({"family": "resnet", "vision_layers": [3, 4, 6]}, "model.vision_layers"),
    ({"family": "resnet", "vision_layers": 2}, "model.vision_layers"),
    ({"family": "resnet", "vision_layers": [1, 1, 1, 1], "image_size": 48}, "model.image_size"),
    ({"vocab_size": True}, "model.vocab_size"),
    ({"zero_init_query": "yes"}, "model.zero_init_query"),
])
def test_validate_names_the_key(change, key):
    with pytest.raises(ConfigError) as err:
        ModelSpec(**change).validate()
    assert err.value.key == key


def test_dict_round_trip_and_unknown_key():
    spec = CLIP_PAPER_MODELS["RN50x4"]
    again = ModelSpec.from_dict(spec.to_dict())
    assert again == spec and again.vision_layers == [4, 6, 10, 6]
    with pytest.raises(ConfigError) as err:
        ModelSpec.from_dict({"width": 64}, prefix="ladder.rungs.r1")
    assert err.value.key == "ladder.rungs.r1.width"
    with pytest.raises(ConfigError) as err:
        ModelSpec.from_dict({"patch_size": 5}, prefix="m")
    assert err.value.key == "m.image_size"
