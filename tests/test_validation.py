"""The validation split never reaches training, and `val/loss` reads the same samples every time."""

from __future__ import annotations

import hashlib

import pytest
import yaml

from clipscale.config import load_config
from clipscale.data import shards as shard_io
from clipscale.data.validation import ValSpec, load_val_set, split_by_name
from clipscale.errors import ConfigError
from clipscale.ladder import ensure_data
from tests.helpers import sample


def _digests(uris) -> set[str]:
    return {hashlib.sha256(s["png"]).hexdigest() + s["txt"].decode() for u in uris for s in shard_io.iter_shard(u)}


def test_synthetic_validation_split_is_its_own_stream_and_never_trained_on(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({
        "ladder": {"rungs": [{"name": "r0", "samples": 64, "batch_size": 32, "model": {}}]},
        "data": {"synthetic": {"out": str(tmp_path / "syn"), "samples": 96, "val_samples": 48, "shard_size": 32}}}))
    corpus = ensure_data(load_config(config))
    assert len(corpus.train) == 3 and len(corpus.val) == 2
    assert not set(corpus.train) & set(corpus.val)
    assert all("/val/" in u for u in corpus.val) and not any("/val/" in u for u in corpus.train)
    train, val = _digests(corpus.train), _digests(corpus.val)
    assert len(val) == 48 and not train & val  # same keys 0..47 in both, different samples
    assert ensure_data(load_config(config)) == corpus  # found again, not regenerated


def test_val_fraction_holds_out_whole_shards_by_name(tmp_path):
    shards = tuple(f"s3://bucket/laion/{i:05d}.tar" for i in range(40))
    train, val = split_by_name(shards, 0.1)
    assert not set(train) & set(val) and set(train) | set(val) == set(shards)
    assert 1 <= len(val) <= 10
    moved = tuple(s.replace("s3://bucket/laion", "/mnt/copy") for s in shards)
    assert [s.rsplit("/", 1)[1] for s in split_by_name(moved, 0.1)[1]] == [s.rsplit("/", 1)[1] for s in val]
    assert len(split_by_name(shards[:3], 0.01)[1]) == 1  # at least one shard held out
    with pytest.raises(ValueError, match="data.val_shards"):
        split_by_name(shards[:1], 0.5)


def test_val_shards_are_taken_out_of_the_training_list(tmp_path):
    shard_io.write_shards((sample(i) for i in range(64)), str(tmp_path / "c"), shard_size=16)
    config = tmp_path / "c.yaml"
    val = str(tmp_path / "c" / "shard-000003.tar")
    config.write_text(yaml.safe_dump({
        "ladder": {"rungs": [{"name": "r0", "samples": 32, "batch_size": 16, "model": {}}]},
        "data": {"shards": str(tmp_path / "c"), "val_shards": [val]}}))
    corpus = ensure_data(load_config(config))
    assert corpus.val == (val,) and val not in corpus.train and len(corpus.train) == 3


def test_both_val_keys_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="data.val_fraction"):
        load_config(None, ["ladder.rungs=[{name: r0, samples: 64, batch_size: 32, model: {}}]",
                           "data.val_shards=s3://b/val/", "data.val_fraction=0.1"])


def test_val_set_is_fixed_order_and_skips_what_training_skips(tmp_path):
    rows = [sample(i, size=16) for i in range(12)]
    rows[3]["txt"] = "   "  # training skips an empty caption; so does validation
    shard_io.write_shards(iter(rows), str(tmp_path / "v"), shard_size=6)
    spec = ValSpec(shards=tuple(shard_io.list_shards(str(tmp_path / "v"))), samples=8, batch_size=4, every_samples=0)
    images, tokens = load_val_set(spec, image_size=16, context_length=16)
    again, _ = load_val_set(spec, image_size=16, context_length=16)
    assert images.shape == (8, 16, 16, 3) and tokens.shape == (8, 16)
    assert (images == again).all()


class _Engine:
    """What the probe reads of a DeepSpeed engine: the module and its device."""

    def __init__(self, module):
        self.module, self.device = module, "cpu"


def test_probe_scores_loss_and_task_top1_and_decodes_the_task_once(tmp_path, monkeypatch):
    import torch

    from clipscale.config import EvalConfig
    from clipscale.data import evalsets
    from clipscale.model import build_model
    from clipscale.model_spec import ModelSpec
    from clipscale.train.validation import ValidationProbe

    shard_io.write_shards(iter([sample(i, size=16) for i in range(8)]), str(tmp_path / "v"), shard_size=8)
    evalsets.ensure_eval_sets(str(tmp_path / "eval"), seed=0, n_per_task=20, image_size=16, tasks=["shape"],
                              n_retrieval=20)
    spec = ModelSpec(embed_dim=16, image_size=16, patch_size=4, vision_width=16, vision_layers=1, vision_head_width=8,
                     context_length=16, text_width=16, text_heads=2, text_layers=1)
    val = ValSpec(shards=tuple(shard_io.list_shards(str(tmp_path / "v"))), samples=8, batch_size=4, every_samples=0)
    probe = ValidationProbe(val, spec, EvalConfig(root=str(tmp_path / "eval")), "shape", rank=0, zero_stage=0)
    loads = []
    real_load = evalsets.load_task
    monkeypatch.setattr(evalsets, "load_task", lambda *a, **k: loads.append(a) or real_load(*a, **k))
    torch.manual_seed(0)
    engine = _Engine(build_model(spec))
    first, second = probe.measure(engine, torch.float32), probe.measure(engine, torch.float32)
    assert first == second  # same weights, same fixed batches
    assert set(first) == {"val/loss", "val/zeroshot/shape/top1"}
    assert 0.0 <= first["val/zeroshot/shape/top1"] <= 1.0 and first["val/loss"] > 0
    assert len(loads) == 1 and probe.seconds > 0
    assert engine.module.training  # handed back in the mode it came in


def test_a_mixture_holds_out_a_validation_split_per_source(tmp_path, monkeypatch):
    """One synthetic source (its own val stream) and one user corpus (data.val_fraction of its
    shards), given as relative paths as a user writes them: each source's split stays out of its
    training shards, and the validation set takes each source's share by weight."""
    from clipscale.data.validation import quotas
    from clipscale.ladder import resolve_paths

    monkeypatch.chdir(tmp_path)
    shard_io.write_shards(({**sample(i), "txt": f"user caption {i}"} for i in range(64)), "user", shard_size=8)
    cfg = resolve_paths(load_config(None, [
        "ladder.rungs=[{name: r0, samples: 64, batch_size: 32, model: {}}]", "data.val_fraction=0.2",
        "data.sources=[{name: syn, weight: 1, synthetic: {out: syn, samples: 64, val_samples: 32, shard_size: 32}},"
        " {name: user, weight: 3, shards: user}]"]))
    corpus = ensure_data(cfg)
    syn, user = corpus.sources
    assert syn.name == "syn" and all(u.startswith(str(tmp_path / "syn")) for u in syn.shards)
    assert len(user.shards) + len(corpus.val_sources[1].shards) == 8  # whole shards held out
    assert not set(corpus.train) & set(corpus.val) and set(corpus.train) == set(syn.shards) | set(user.shards)
    spec = ValSpec(shards=corpus.val, samples=16, batch_size=8, every_samples=0,
                   parts=quotas(corpus.val_sources, 16))
    _, tokens = load_val_set(spec, image_size=16, context_length=16)
    from clipscale.data.pipeline import _tokenizer

    user_token = int(_tokenizer(16)(["user"])[0, 1])
    assert len(tokens) == 16 and int((tokens[:, 1] == user_token).sum()) == 12  # 3:1
