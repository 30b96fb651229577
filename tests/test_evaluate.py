"""Zero-shot classifier, metrics, retrieval, linear probe, checkpoints and the `eval` CLI."""

from __future__ import annotations

import io
import json
import math
import os
import socket

import numpy as np
import pytest
import torch
from PIL import Image

from clipscale import evaluate
from clipscale.data import evalsets

@pytest.fixture(autouse=True)
def one_torch_thread():
    # On a shared 2-core box, two intra-op threads fighting other processes ran 3-10x slower.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# -- hand-built embeddings -------------------------------------------------------------


class TableModel(torch.nn.Module):
    """encode_text looks each text up in a table of known vectors (the tokenizer passes row ids)."""

    def __init__(self, table: dict[str, torch.Tensor]):
        super().__init__()
        self.texts = list(table)
        self.vectors = torch.stack([table[t] for t in self.texts]).float()

    def tokenizer(self, texts):
        return torch.tensor([self.texts.index(t) for t in texts])

    def encode_text(self, ids, normalize=False):
        v = self.vectors[ids]
        return torch.nn.functional.normalize(v, dim=-1) if normalize else v


def test_zeroshot_classifier_is_normalised_mean_of_normalised_templates():
    templates = ["a {c}.", "the {c}!", "{c}"]
    rng = torch.Generator().manual_seed(0)
    table = {t.replace("{c}", c): torch.randn(6, generator=rng) * (1 + 3 * k)  # unequal norms on purpose
             for c in ("cat", "dog") for k, t in enumerate(templates)}
    model = TableModel(table)
    w = evaluate.zeroshot_classifier(model, model.tokenizer, ["cat", "dog"], templates, batch_size=2)
    assert w.shape == (6, 2)
    for j, c in enumerate(("cat", "dog")):
        unit = [table[t.replace("{c}", c)] / table[t.replace("{c}", c)].norm() for t in templates]
        mean = torch.stack(unit).mean(0)
        assert torch.allclose(w[:, j], mean / mean.norm(), atol=1e-6)
        # not the plain (unnormalised) mean, which the largest-norm template would dominate
        raw = torch.stack([table[t.replace("{c}", c)] for t in templates]).mean(0)
        assert not torch.allclose(w[:, j], raw / raw.norm(), atol=1e-3)


def test_classifier_picks_the_known_classes():
    classes = ["circle", "square", "star", "ring", "cross", "moon"]
    basis = torch.eye(6)
    table = {f"a {c}.": basis[i] + 0.1 * basis[(i + 1) % 6] for i, c in enumerate(classes)}
    model = TableModel(table)
    w = evaluate.zeroshot_classifier(model, model.tokenizer, classes, ["a {c}."])
    labels = torch.tensor([3, 0, 5, 1, 1, 4, 2])
    images = torch.nn.functional.normalize(basis[labels] + 0.05 * torch.randn(7, 6, generator=torch.Generator().manual_seed(1)), dim=-1)
    m = evaluate.classification_metrics(images @ w, labels)
    assert m["top1"] == 1.0 and m["top5"] == 1.0 and m["mean_per_class_recall"] == 1.0


def test_classification_metrics_hand_computed():
    # 3 classes: no top5; class 0 has 3 samples (2 right), class 1 has 1 (wrong), class 2 has 0
    logits = torch.tensor([[3.0, 1, 0], [2, 1, 0], [0, 5, 1], [1, 0, 2]])
    labels = torch.tensor([0, 0, 0, 1])
    m = evaluate.classification_metrics(logits, labels)
    assert "top5" not in m
    assert m["top1"] == pytest.approx(0.5)
    assert m["per_class_accuracy"][0] == pytest.approx(2 / 3) and m["per_class_accuracy"][1] == 0.0
    assert math.isnan(m["per_class_accuracy"][2])
    assert m["mean_per_class_recall"] == pytest.approx((2 / 3 + 0) / 2)  # classes absent from labels excluded


def test_top5_counts_the_right_class_in_the_top_five():
    logits = torch.arange(7.0).repeat(3, 1)  # class 6 best, class 0 worst
    m = evaluate.classification_metrics(logits, torch.tensor([6, 2, 1]))
    assert m["top1"] == pytest.approx(1 / 3) and m["top5"] == pytest.approx(2 / 3)
    with pytest.raises(ValueError):
        evaluate.classification_metrics(logits, torch.tensor([0, 1]))


def test_retrieval_metrics_on_a_known_matrix():
    sim = torch.tensor([[0.9, 0.1, 0.2, 0.0],
                        [0.8, 0.5, 0.7, 0.1],   # image 1: own text 1 is 3rd
                        [0.1, 0.2, 0.3, 0.9],   # image 2: own text 2 is 2nd
                        [0.0, 0.1, 0.2, 0.95]])
    m = evaluate.retrieval_metrics(sim, ks=(1, 2, 3))
    assert m["i2t_r1"] == pytest.approx(2 / 4) and m["i2t_r2"] == pytest.approx(3 / 4) and m["i2t_r3"] == 1.0
    # text 0: image 0 best; text 1: image 1 best; text 2: image 1 beats image 2; text 3: image 3 best
    assert m["t2i_r1"] == pytest.approx(3 / 4) and m["t2i_r2"] == 1.0


def test_retrieval_with_several_captions_per_image():
    sim = torch.tensor([[0.1, 0.9, 0.5], [0.8, 0.2, 0.7]])
    owner = [0, 0, 1]  # captions 0 and 1 belong to image 0
    m = evaluate.retrieval_metrics(sim, owner, ks=(1,))
    assert m["i2t_r1"] == pytest.approx(1 / 2)  # image 0 finds caption 1; image 1's best is caption 0
    assert m["t2i_r1"] == pytest.approx(2 / 3)  # caption 0 -> image 1 (wrong), 1 -> 0, 2 -> 1
    with pytest.raises(ValueError):
        evaluate.retrieval_metrics(sim, [0, 2, 1])


def test_linear_probe_separable_and_random():
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(5, 16)) * 3
    labels = rng.integers(0, 5, size=400)
    feats = centers[labels] + rng.normal(size=(400, 16))
    assert evaluate.linear_probe(feats, labels, seed=0) > 0.95
    shuffled = rng.permutation(labels)  # no signal: should stay near chance (0.2)
    assert evaluate.linear_probe(feats, shuffled, seed=0) < 0.4


# -- real (tiny, untrained) models ---------------------------------------------------

def _tiny_spec():
    from clipscale.model import ModelSpec

    return ModelSpec(embed_dim=32, vision_width=32, vision_layers=1, text_width=32, text_heads=1, text_layers=1)


@pytest.fixture(scope="module")
def eval_root(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("eval"))
    evalsets.ensure_eval_sets(root, n_per_task=40, n_retrieval=30, tasks=["shape", "count", "retrieval"])
    return root


def test_evaluate_model_names_and_ranges(eval_root):
    from clipscale.model import build_model

    torch.manual_seed(0)
    spec = _tiny_spec()
    model = build_model(spec).train()
    m = evaluate.evaluate_model(model, spec, ["shape", "count", "retrieval"], eval_root, batch_size=16)
    assert model.training  # a training loop gets its model back in train mode
    for task in ("shape", "count"):
        assert m[f"zeroshot/{task}/error"] == pytest.approx(1 - m[f"zeroshot/{task}/top1"])
        assert 0 <= m[f"linear_probe/{task}/top1"] <= 1
    assert "zeroshot/shape/top5" in m and "zeroshot/count/top5" not in m  # count has 4 classes
    assert {f"retrieval/retrieval/{d}_r{k}" for d in ("i2t", "t2i") for k in (1, 5, 10)} <= set(m)
    assert all("@" not in k and 0 <= v <= 1 for k, v in m.items())
    # deterministic: the same model gives the same numbers with another batch size
    again = evaluate.evaluate_model(model, (spec.image_size, spec.context_length), ["shape", "retrieval"],
                                    eval_root, batch_size=7, linear_probe=False)
    assert again["zeroshot/shape/top1"] == m["zeroshot/shape/top1"]
    assert again["retrieval/retrieval/t2i_r5"] == m["retrieval/retrieval/t2i_r5"]


def _save_plain_checkpoint(folder, model, spec, reshape_logit_scale=True):
    os.makedirs(folder, exist_ok=True)
    state = {f"module.{k}": v.clone() for k, v in model.state_dict().items()}
    if reshape_logit_scale:  # as trained under DeepSpeed (0-dim params break its broadcast; ARCHITECTURE.md)
        state["module.logit_scale"] = state["module.logit_scale"].reshape(1)
    torch.save(state, os.path.join(folder, "model.pt"))
    with open(os.path.join(folder, "clipscale.json"), "w") as f:
        json.dump({"model": spec.to_dict(), "rung": {"name": "r0"}, "tag": "step1"}, f)


def test_load_checkpoint_model_plain_state(tmp_path):
    from clipscale.model import build_model

    spec = _tiny_spec()
    torch.manual_seed(1)
    model = build_model(spec)
    with torch.no_grad():
        model.logit_scale.fill_(2.5)
    _save_plain_checkpoint(tmp_path / "ckpt", model, spec)
    loaded, loaded_spec = evaluate.load_checkpoint_model(str(tmp_path / "ckpt"))
    assert loaded_spec == spec
    assert loaded.logit_scale.shape == model.logit_scale.shape and loaded.logit_scale.item() == pytest.approx(2.5)
    x = torch.randn(2, 3, 32, 32)
    assert torch.allclose(loaded.encode_image(x), model.eval().encode_image(x))


def test_load_checkpoint_errors_name_the_folder(tmp_path):
    from clipscale.storage import StorageError

    with pytest.raises(StorageError, match="clipscale.json"):
        evaluate.load_checkpoint_model(str(tmp_path))
    (tmp_path / "clipscale.json").write_text(json.dumps({"model": _tiny_spec().to_dict()}))
    with pytest.raises(StorageError, match=str(tmp_path)):
        evaluate.load_checkpoint_model(str(tmp_path))


@pytest.mark.slow  # a real MLflow sqlite store: ~10-20 s of schema migrations
def test_eval_cli_prints_table_and_logs_to_mlflow(tmp_path, eval_root, monkeypatch, capsys):
    import mlflow

    from clipscale.cli import main
    from clipscale.model import build_model

    spec = _tiny_spec()
    _save_plain_checkpoint(tmp_path / "ckpt", build_model(spec), spec)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    client = mlflow.tracking.MlflowClient(uri)
    run = client.create_run(client.create_experiment("eval-test"))
    rc = main(["eval", "--checkpoint", str(tmp_path / "ckpt"), "--task", "shape", "--task", "retrieval",
               "--eval-root", eval_root, "--no-linear-probe", "--mlflow-run", run.info.run_id])
    assert rc == 0
    out = capsys.readouterr().out
    assert "zeroshot/shape" in out and "i2t_r1" in out
    logged = client.get_run(run.info.run_id).data.metrics
    assert "zeroshot/shape/top1" in logged and "retrieval/retrieval/t2i_r10" in logged
    assert not any(k.startswith("linear_probe/") for k in logged)


def test_eval_cli_reports_a_missing_checkpoint(tmp_path, eval_root, capsys):
    from clipscale.cli import main

    rc = main(["eval", "--checkpoint", str(tmp_path / "nope"), "--task", "shape", "--eval-root", eval_root])
    assert rc == 1 and "nope" in capsys.readouterr().err


# -- slow: real training and real DeepSpeed checkpoints -------------------------------------

@pytest.mark.slow
def test_briefly_trained_model_beats_chance_on_shape(tmp_path):
    """~120 AdamW steps of a tiny CLIP, then the real eval path on a held-out shape set.

    Why this setup: with the corpus's rich captions, tiny models learn color and count within
    a few hundred steps but shape needs far more than a test can spend. Captions reduced to
    the shape name, and a conv image tower (a 32 px patch-4 ViT stayed at log(batch) here),
    learn shape in ~100 steps, which is enough to check that evaluation sees what was learned."""
    import open_clip

    from clipscale.data.synthetic import generate
    from clipscale.data.transforms import eval_transform
    from clipscale.model import ModelSpec, build_model

    root = str(tmp_path / "eval")
    n_eval = 500
    evalsets.ensure_eval_sets(root, seed=11, n_per_task=n_eval, tasks=["shape"])
    samples = list(generate(3000, seed=5, kind_weights={"shape": 1.0}))
    images = torch.stack([eval_transform(np.asarray(Image.open(io.BytesIO(s["png"])).convert("RGB")), 32)
                          for s in samples])
    tokens = evaluate.get_tokenizer(32)([f"a photo of a {s['json']['shape']}." for s in samples])
    torch.manual_seed(0)
    spec = ModelSpec(family="resnet", vision_layers=[1, 1, 1, 1], vision_width=16, vision_head_width=16)
    model = build_model(spec)
    steps, batch = 120, 64
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / 15) * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)))
    loss_fn = open_clip.ClipLoss()
    gen = torch.Generator().manual_seed(0)
    model.train()
    for _ in range(steps):
        idx = torch.randint(0, len(samples), (batch,), generator=gen)
        loss = loss_fn(*model(images[idx], tokens[idx]))
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
    m = evaluate.evaluate_model(model, spec, ["shape"], root, linear_probe=False)
    chance = 1 / 8
    sigma = math.sqrt(chance * (1 - chance) / n_eval)
    print(f"shape top1 after {steps} steps: {m['zeroshot/shape/top1']:.3f} (chance {chance:.3f}, sigma {sigma:.3f})")
    assert m["zeroshot/shape/top1"] > chance + 4 * sigma, m


_DS_SCRIPT = r"""
import json, os, sys, torch
os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=sys.argv[2], RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
import deepspeed
from clipscale.model import ModelSpec, build_model
spec = ModelSpec(**json.loads(sys.argv[3]))
torch.manual_seed(3)
model = build_model(spec)
model.logit_scale = torch.nn.Parameter(model.logit_scale.detach().reshape(1))  # as the trainer does
opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
engine, *_ = deepspeed.initialize(model=model, optimizer=opt, config={
    "train_micro_batch_size_per_gpu": 2, "zero_optimization": {"stage": 2}, "zero_allow_untested_optimizer": True})
engine.save_checkpoint(sys.argv[1], tag="step7")
json.dump({"model": spec.to_dict(), "rung": {"name": "r0"}, "tag": "step7"}, open(os.path.join(sys.argv[1], "clipscale.json"), "w"))
torch.save({k: v.clone() for k, v in model.state_dict().items()}, os.path.join(sys.argv[1], "..", "reference.pt"))
"""


@pytest.mark.slow
def test_load_deepspeed_zero_checkpoint_local_and_s3(tmp_path, s3):
    import subprocess
    import sys

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    spec = _tiny_spec()
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    # DeepSpeed initialises torch.distributed; a child process keeps that out of the test session.
    subprocess.run([sys.executable, "-c", _DS_SCRIPT, str(ckpt), str(port), json.dumps(spec.to_dict())],
                   check=True, capture_output=True, timeout=300)
    assert (ckpt / "step7").is_dir() and not (ckpt / "model.pt").exists()
    reference = torch.load(tmp_path / "reference.pt")
    model, loaded_spec = evaluate.load_checkpoint_model(str(ckpt))
    assert loaded_spec == spec and model.logit_scale.ndim == 0
    for k, v in model.state_dict().items():
        assert torch.equal(v, reference[k].reshape(v.shape)), k

    client = s3.client()
    for dirpath, _, files in os.walk(ckpt):
        for name in files:
            path = os.path.join(dirpath, name)
            client.upload_file(path, s3.bucket, "ckpts/r0/" + os.path.relpath(path, ckpt))
    from_s3, _ = evaluate.load_checkpoint_model(s3.uri("ckpts", "r0"), settings=s3.settings)
    assert all(torch.equal(a, b) for a, b in zip(from_s3.state_dict().values(), model.state_dict().values()))
