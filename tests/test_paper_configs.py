"""The GPU configs: clip_paper.yaml reproduces the CLIP paper's ladder, gpu_small.yaml
fits one 8-GPU node. Checked through the same dry run a user reads before paying."""

from __future__ import annotations

import contextlib
import io
import json
import re
from pathlib import Path

import open_clip
import pytest

from clipscale import ladder_cli
from clipscale.config import load_config
from clipscale.model import CLIP_PAPER_MODELS

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "experiments" / "configs"
CLIP_PAPER = CONFIGS / "clip_paper.yaml"
GPU_SMALL = CONFIGS / "gpu_small.yaml"

# open_clip's published profile (docs/model_profile.csv): total parameters in millions and
# forward GFLOPs per sample (image + text, native resolution, 77 tokens).
PUBLISHED = {
    "RN50": (102.01, 18.18),
    "RN101": (119.69, 25.5),
    "RN50x4": (178.3, 51.82),
    "RN50x16": (290.98, 162.69),
    "RN50x64": (623.26, 552.65),
    "ViT-B-32": (151.28, 14.78),
    "ViT-B-16": (149.62, 41.09),
    "ViT-L-14": (427.62, 175.33),
}
# Radford et al. 2021, appendix F, tables 19 (CLIP-ResNet) and 20 (CLIP-ViT).
PAPER_LR = {"RN50": 5e-4, "RN101": 5e-4, "RN50x4": 5e-4, "RN50x16": 4e-4, "RN50x64": 3.6e-4,
            "ViT-B-32": 5e-4, "ViT-B-16": 5e-4, "ViT-L-14": 4e-4}
PAPER_SAMPLES = 32 * 400_000_000  # sec. 2.5: 32 epochs of 400M pairs
PAPER_BATCH = 32_768  # table 18
THROUGHPUT = 2000.0  # samples/s/GPU at the cheapest rung, the value clip_paper.yaml's header quotes
SMALL_THROUGHPUT = 5000.0  # likewise for gpu_small.yaml


def dry_run(config: Path, throughput: float) -> dict:
    """`experiments/ladder.py --config ... --dry-run --json --throughput ...`, in-process."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        rc = ladder_cli.main(["--config", str(config), "--dry-run", "--json", "--throughput", str(throughput)])
    assert rc == 0
    return json.loads(out.getvalue())


@pytest.fixture(scope="module")
def paper() -> dict:
    return dry_run(CLIP_PAPER, THROUGHPUT)


@pytest.fixture(scope="module")
def small() -> dict:
    return dry_run(GPU_SMALL, SMALL_THROUGHPUT)


def header_gpu_days(config: Path) -> float:
    """The GPU-day total a config's header comment promises (e.g. 'about 5,200 GPU-days')."""
    m = re.search(r"(?:about|~)\s*([\d,]+) GPU-days", config.read_text())
    assert m, f"{config.name} should state its estimated GPU-days"
    return float(m.group(1).replace(",", ""))


# ---- clip_paper.yaml ----------------------------------------------------------------------


def test_clip_paper_has_the_papers_eight_models_with_open_clip_shapes():
    cfg = load_config(CLIP_PAPER)
    assert [r.name for r in cfg.ladder.rungs] == [n.replace("/", "-") for n in CLIP_PAPER_MODELS]
    for rung, (name, spec) in zip(cfg.ladder.rungs, CLIP_PAPER_MODELS.items()):
        assert rung.model.to_dict() == spec.to_dict(), name


def test_clip_paper_params_match_open_clip_published_counts(paper):
    rungs = {r["name"]: r for r in paper["rungs"]}
    assert set(rungs) == set(PUBLISHED)
    for name, (params_m, _) in PUBLISHED.items():
        assert rungs[name]["params"] / 1e6 == pytest.approx(params_m, rel=0.01), name


def test_clip_paper_flops_are_three_times_forward_times_samples(paper):
    for r in paper["rungs"]:
        gflops = PUBLISHED[r["name"]][1]
        assert r["flops_per_sample"] / 1e9 == pytest.approx(gflops, rel=0.01), r["name"]
        assert r["samples"] == PAPER_SAMPLES  # 12.8B is a whole number of 32,768-batches
        assert r["train_flops"] == 3 * r["flops_per_sample"] * PAPER_SAMPLES
    rn50x64 = next(r for r in paper["rungs"] if r["name"] == "RN50x64")
    assert rn50x64["train_flops"] == pytest.approx(3 * 552.65e9 * 12.8e9, rel=0.01)  # ~2.12e22
    assert paper["total_train_flops"] == sum(r["train_flops"] for r in paper["rungs"])


def test_clip_paper_gpu_days_follow_the_given_throughput(paper):
    assert paper["throughput"] == {"samples_per_sec_per_device": THROUGHPUT, "source": "given",
                                   "at_rung": "ViT-B-32"}  # fewest FLOPs per sample
    base = min(r["flops_per_sample"] for r in paper["rungs"])
    for r in paper["rungs"]:
        per_gpu = THROUGHPUT * base / r["flops_per_sample"]
        assert r["est_device_days"] == pytest.approx(r["samples"] / per_gpu / 86400, rel=1e-9)
    vit_b32 = next(r for r in paper["rungs"] if r["name"] == "ViT-B-32")
    assert vit_b32["est_device_days"] == pytest.approx(12.8e9 / 2000 / 86400)  # 74.1
    assert paper["total_est_device_days"] == pytest.approx(header_gpu_days(CLIP_PAPER), rel=0.05)


def test_clip_paper_trains_as_the_paper_did():
    cfg = load_config(CLIP_PAPER)
    for rung in cfg.ladder.rungs:
        assert rung.batch_size == PAPER_BATCH and rung.budget == PAPER_SAMPLES
        assert rung.lr == PAPER_LR[rung.name]
        assert 32 <= rung.workers <= 256 and PAPER_BATCH % rung.workers == 0
    zero = {r.name: r.zero_stage if r.zero_stage is not None else cfg.train.zero_stage for r in cfg.ladder.rungs}
    assert {n for n, z in zero.items() if z == 3} == {"RN50x64", "ViT-L-14"}
    assert set(zero.values()) == {2, 3}
    t = cfg.train
    assert (t.weight_decay, t.betas, t.eps, t.precision) == (0.2, [0.9, 0.98], 1e-6, "bf16")
    assert t.warmup_samples == 2000 * PAPER_BATCH  # table 18: 2,000 warm-up iterations
    c = cfg.cluster
    assert (c.gpus_per_worker, c.cpus_per_worker) == (1, 8)
    assert c.storage_path.startswith("s3://")
    assert re.fullmatch(r"s3://[^/]+/.+/\{0+\.\.\d+\}\.tar", cfg.data.shards)


def test_gpu_configs_evaluate_like_the_default_ladder():
    tiny = load_config(CONFIGS / "tiny.yaml")
    for path in (CLIP_PAPER, GPU_SMALL):
        cfg = load_config(path)
        assert cfg.eval.tasks == tiny.eval.tasks, path.name
        assert cfg.scaling.task in cfg.eval.tasks, path.name
        assert cfg.data.synthetic.image_size == 224, path.name  # eval sets drawn at the models' size


@pytest.mark.parametrize("path", [CLIP_PAPER, GPU_SMALL], ids=lambda p: p.name)
def test_warmup_fits_inside_every_rung(path):
    # The schedule refuses warmup_samples > a rung's budget, at its first step on the cluster.
    cfg = load_config(path)
    assert all(cfg.train.warmup_samples <= r.budget for r in cfg.ladder.rungs)


# ---- gpu_small.yaml -----------------------------------------------------------------------


def open_clip_config(name: str) -> dict:
    path = Path(open_clip.__file__).parent / "model_configs" / f"{name}.json"
    return json.loads(path.read_text())


def test_gpu_small_towers_are_open_clips():
    cfg = load_config(GPU_SMALL)
    for rung in cfg.ladder.rungs:
        arch = rung.name.rsplit("-", 1)[0]  # "ViT-S-32-alt-102M" -> "ViT-S-32-alt"
        ref, m = open_clip_config(arch), rung.model
        v, t = ref["vision_cfg"], ref["text_cfg"]
        assert (m.family, m.embed_dim, m.image_size, m.vision_width, m.vision_layers, m.patch_size) == (
            "vit", ref["embed_dim"], v["image_size"], v["width"], v["layers"], v["patch_size"]), rung.name
        assert (m.context_length, m.text_width, m.text_heads, m.text_layers, m.vocab_size) == (
            t["context_length"], t["width"], t["heads"], t["layers"], t["vocab_size"]), rung.name
        assert m.vision_head_width == v.get("head_width", 64)


def test_gpu_small_fits_one_node_and_spans_100x(small):
    cfg = load_config(GPU_SMALL)
    assert len(cfg.ladder.rungs) == 8
    assert all(r.workers == 8 and r.batch_size % 8 == 0 for r in cfg.ladder.rungs)
    assert cfg.train.precision == "bf16" and cfg.cluster.gpus_per_worker == 1
    assert all(1e8 <= r["samples"] <= 1.3e9 for r in small["rungs"])
    assert small["compute_span"] >= 100
    flops = [r["train_flops"] for r in small["rungs"]]
    assert flops == sorted(flops)  # so ladder.only=[0,1,2] is the cheap smoke test the header suggests
    assert small["total_est_device_days"] == pytest.approx(header_gpu_days(GPU_SMALL), rel=0.05)
    # "in days" on one node: the header's claim, at the header's throughput
    assert small["total_est_device_days"] / 8 < 14
