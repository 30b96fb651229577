"""A rung leaves clipscale: checkpoint model file, open_clip local-dir export, eval of any open_clip model,
aggregate scores. Fast: tiny models, clipscale's own generated eval sets, no Ray."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from clipscale import evaluate, export
from clipscale.train import checkpoint

TASKS = ["shape", "color"]
TINY = str(Path(__file__).resolve().parents[1] / "experiments" / "configs" / "tiny.yaml")


@pytest.fixture(autouse=True)
def one_torch_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # a shared 2-core box: one thread is faster than two fighting
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def eval_root(tmp_path_factory):
    from clipscale.data import evalsets

    root = str(tmp_path_factory.mktemp("eval"))
    evalsets.ensure_eval_sets(root, seed=3, n_per_task=60, image_size=32, tasks=TASKS)
    return root


def _spec():
    from clipscale.model import ModelSpec

    # 24 px against 32 px eval images, so both pipelines really resize and crop.
    return ModelSpec(embed_dim=32, image_size=24, patch_size=8, vision_width=32, vision_layers=1,
                     text_width=32, text_heads=2, text_layers=1, context_length=20)


def _trained_like_state(model) -> dict:
    """A state dict as a final checkpoint holds it: logit_scale with shape (1,)."""
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    state["logit_scale"] = state["logit_scale"].reshape(1)
    return state


@pytest.fixture(scope="module")
def model():
    from clipscale.model import build_model

    torch.manual_seed(7)
    m = build_model(_spec()).eval()
    with torch.no_grad():
        m.logit_scale.fill_(3.0)
    return m


def _checkpoint_folder(folder, model) -> None:
    folder.mkdir()
    meta = {"tag": "step00000004", "model": _spec().to_dict(), "rung": {"name": "r0", "samples": 512},
            "state": {"samples_seen": 512}, "final": True}
    (folder / "clipscale.json").write_text(json.dumps(meta))
    checkpoint.write_model(folder, _trained_like_state(model))


# -- the checkpoint's model file ---------------------------------------------------------------


def test_checkpoint_model_is_safetensors_named_in_meta_and_legacy_pt_still_reads(tmp_path, model):
    _checkpoint_folder(tmp_path / "new", model)
    meta = json.loads((tmp_path / "new" / "clipscale.json").read_text())
    assert meta["model_file"] == "model.safetensors" and meta["tag"] == "step00000004"  # the rest kept
    state = checkpoint.read_model(tmp_path / "new", meta)
    assert state["logit_scale"].shape == (1,)
    assert all(torch.equal(state[k], v) for k, v in _trained_like_state(model).items())

    legacy = tmp_path / "old"
    legacy.mkdir()
    torch.save(_trained_like_state(model), legacy / "model.pt")
    assert torch.equal(checkpoint.read_model(legacy, {"tag": "x"})["visual.proj"], model.visual.proj)
    assert checkpoint.read_model(tmp_path, {}) is None  # no model file: DeepSpeed's files are the fallback
    (tmp_path / "new" / "model.safetensors").unlink()
    with pytest.raises(checkpoint.CheckpointFileError, match="model.safetensors"):
        checkpoint.read_model(tmp_path / "new", meta)


# -- export -> open_clip local-dir -> same numbers -------------------------------------------


def test_export_loads_in_open_clip_and_scores_the_same(tmp_path, model, eval_root):
    import open_clip

    from clipscale.cli import main

    _checkpoint_folder(tmp_path / "ckpt", model)
    out = tmp_path / "exported"
    assert main(["export", "--checkpoint", str(tmp_path / "ckpt"), "--out", str(out)]) == 0
    assert {p.name for p in out.iterdir()} == {"open_clip_config.json", "open_clip_model.safetensors",
                                               "clipscale.json"}
    info = json.loads((out / "clipscale.json").read_text())
    assert info["rung"] == "r0" and info["samples"] == 512 and info["train_flops"] > 0

    loaded = export.load_local_dir(out)
    assert loaded.model.logit_scale.ndim == 0 and loaded.model.logit_scale.item() == pytest.approx(3.0)
    assert loaded.tokenizer.context_length == 20  # the rung's, not open_clip's default 77
    assert open_clip.get_tokenizer(f"local-dir:{out}")(["a red square"]).shape == (1, 20)

    ours = evaluate.evaluate_model(model, _spec(), TASKS, eval_root, linear_probe=False)
    theirs = evaluate.evaluate_model(loaded.model, _spec(), TASKS, eval_root, linear_probe=False,
                                     preprocess=loaded.preprocess, tokenizer=loaded.tokenizer)
    for task in TASKS:
        assert theirs[f"zeroshot/{task}/top1"] == pytest.approx(ours[f"zeroshot/{task}/top1"], abs=0.005)
    # Stronger than equal accuracy: open_clip's preprocess gives clipscale's image features.
    from clipscale.data import evalsets

    images = evalsets.load_task(f"{eval_root}/shape").images[:16]
    a = evaluate.encode_images(model, images, 24)
    b = evaluate.encode_images(loaded.model, images, 24, preprocess=loaded.preprocess)
    assert torch.allclose(a, b, atol=1e-4)


def test_export_errors_name_the_folder(tmp_path):
    from clipscale.cli import main

    assert main(["export", "--checkpoint", str(tmp_path / "nope"), "--out", str(tmp_path / "o")]) == 1
    with pytest.raises(Exception, match="open_clip_config.json"):
        export.load_local_dir(tmp_path)


# -- eval --model on a CLIP_benchmark-layout set ---------------------------------------------


def test_eval_model_local_dir_on_a_clip_benchmark_layout_set(tmp_path, model, eval_root, capsys):
    from clipscale.cli import main

    # A set clipscale did not generate and does not know by name: read as it is.
    root = tmp_path / "bench"
    shutil.copytree(f"{eval_root}/color", root / "my_colors")
    (root / "my_colors" / "meta.json").unlink(missing_ok=True)
    _checkpoint_folder(tmp_path / "ckpt", model)
    export.export_checkpoint(str(tmp_path / "ckpt"), tmp_path / "m")

    code = main(["eval", "--model", f"local-dir:{tmp_path / 'm'}", "--task", "my_colors", "--eval-root", str(root),
                 "--no-linear-probe"])
    assert code == 0
    table = capsys.readouterr().out
    row = next(line for line in table.splitlines() if line.startswith("zeroshot/my_colors") and " top1 " in line)
    ours = evaluate.evaluate_model(model, _spec(), ["my_colors"], str(root), linear_probe=False)
    assert float(row.split()[-1]) == pytest.approx(ours["zeroshot/my_colors/top1"], abs=0.005)
    assert "zeroshot/average" in table

    with pytest.raises(SystemExit):  # --model and --checkpoint are exclusive
        main(["eval", "--model", "x", "--checkpoint", "y"])


# -- aggregate scores ---------------------------------------------------------------------------


def test_averages_and_chance_normalised_average():
    metrics = {"zeroshot/a/top1": 0.75, "zeroshot/a/chance": 0.5, "zeroshot/b/top1": 0.28, "zeroshot/b/chance": 0.1,
               "zeroshot/a/top5": 1.0, "linear_probe/a/top1": 0.9, "retrieval/r/i2t_r1": 0.3}
    out = evaluate.aggregate_scores(metrics)
    assert out["zeroshot/average/top1"] == pytest.approx((0.75 + 0.28) / 2)
    assert out["zeroshot/average/error"] == pytest.approx(1 - (0.75 + 0.28) / 2)
    # (0.75-0.5)/0.5 = 0.5 and (0.28-0.1)/0.9 = 0.2
    assert out["zeroshot/average/normalized_top1"] == pytest.approx(0.35)
    assert evaluate.aggregate_scores({"retrieval/r/i2t_r1": 0.3}) == {}
    no_chance = evaluate.aggregate_scores({"zeroshot/a/top1": 0.5, "zeroshot/b/top1": 0.7})
    assert "zeroshot/average/normalized_top1" not in no_chance and no_chance["zeroshot/average/top1"] == 0.6


def test_evaluate_model_records_chance_and_averages(model, eval_root):
    from clipscale.data import evalsets

    m = evaluate.evaluate_model(model, _spec(), TASKS, eval_root, linear_probe=False, averages=True)
    for task in TASKS:
        n = len(evalsets.load_task(f"{eval_root}/{task}").classnames)
        assert m[f"zeroshot/{task}/chance"] == pytest.approx(1 / n)
    top1 = [m[f"zeroshot/{t}/top1"] for t in TASKS]
    assert m["zeroshot/average/top1"] == pytest.approx(np.mean(top1))
    norm = np.mean([(a - m[f"zeroshot/{t}/chance"]) / (1 - m[f"zeroshot/{t}/chance"]) for a, t in zip(top1, TASKS)])
    assert m["zeroshot/average/normalized_top1"] == pytest.approx(norm)


@pytest.mark.slow  # a real MLflow sqlite store: ~10-20 s of schema migrations
def test_eval_reference_for_logs_one_reference_run_with_its_compute(tmp_path, model, eval_root, monkeypatch):
    from mlflow.tracking import MlflowClient

    from clipscale.cli import main

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'm.db'}")
    _checkpoint_folder(tmp_path / "ckpt", model)
    export.export_checkpoint(str(tmp_path / "ckpt"), tmp_path / "m")
    args = ["eval", "--model", f"local-dir:{tmp_path / 'm'}", "--task", "shape", "--eval-root", eval_root,
            "--no-linear-probe", "--reference-for", "ladder-x", "--flops", "2.5e15"]
    assert main(args) == 0 and main(args) == 0  # the second updates the first's run
    client = MlflowClient(f"sqlite:///{tmp_path / 'm.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("ladder-x").experiment_id])
    assert run.data.tags["clipscale.reference"] == f"local-dir:{tmp_path / 'm'}"
    assert "mlflow.parentRunId" not in run.data.tags  # beside the ladder, not one of its rungs
    assert run.data.metrics["compute/flops"] == 2.5e15 and "zeroshot/shape/top1" in run.data.metrics
    ours = evaluate.evaluate_model(model, _spec(), ["shape"], eval_root, linear_probe=False)
    assert run.data.metrics["zeroshot/shape/top1"] == pytest.approx(ours["zeroshot/shape/top1"], abs=0.005)


@pytest.mark.slow  # a real MLflow sqlite store: ~10-20 s of schema migrations
def test_rung_model_artifact_switch_size_limit_and_checkpoint_fallback(tmp_path, model, monkeypatch, capsys):
    from types import SimpleNamespace

    from clipscale.config import load_config
    from clipscale.tracking import Tracker

    monkeypatch.chdir(tmp_path)  # MLflow's default artifact root (./mlruns) lands here
    uri = f"sqlite:///{tmp_path / 'm.db'}"
    tracker = Tracker.open(uri, "art")
    _checkpoint_folder(tmp_path / "ckpt", model)
    result = SimpleNamespace(status="finished", checkpoint=str(tmp_path / "ckpt"), rung="r0", samples_seen=512,
                             train_flops=0, eval={"zeroshot/shape/top1": 0.5})
    runs = [tracker.client.create_run(tracker.experiment_id).info.run_id for _ in range(3)]

    cfg = load_config(TINY, ["eval.max_model_mb=0.001"])
    assert export.log_rung_model(tracker, runs[0], cfg, result).startswith("skipped")
    assert "eval.max_model_mb=0.001" in capsys.readouterr().err  # the message says which limit
    assert tracker.client.list_artifacts(runs[0], "model") == []
    cfg = load_config(TINY, ["eval.log_model=false"])
    assert export.log_rung_model(tracker, runs[1], cfg, result).startswith("off")
    assert export.log_rung_model(tracker, runs[2], load_config(TINY), result).startswith("logged")
    logged = {a.path for a in tracker.client.list_artifacts(runs[2], "model")}
    assert logged == {"model/open_clip_config.json", "model/open_clip_model.safetensors", "model/clipscale.json"}

    # A run without model/ artifacts exports from the checkpoint its tag names.
    out = export.export_run(runs[1], tmp_path / "from_ckpt", uri)
    assert json.loads((out / "clipscale.json").read_text())["mlflow_run_id"] == runs[1]
    out2 = export.export_run(runs[2], tmp_path / "from_artifacts", uri)
    assert (out / "open_clip_config.json").read_bytes() == (out2 / "open_clip_config.json").read_bytes()
    assert export.load_local_dir(out2).model.logit_scale.item() == pytest.approx(3.0)
    bare = tracker.client.create_run(tracker.experiment_id).info.run_id
    with pytest.raises(Exception, match=bare):
        export.export_run(bare, tmp_path / "none", uri)


def test_a_logit_bias_is_exported_with_init_logit_bias(tmp_path, model):
    state = _trained_like_state(model)
    state["logit_bias"] = torch.tensor([-10.0])  # as a SigLIP-trained rung would hold it, shape (1,)
    export.write_local_dir(tmp_path, state, _spec(), export.ExportInfo(rung="r0"))
    cfg = json.loads((tmp_path / "open_clip_config.json").read_text())
    assert cfg["model_cfg"]["init_logit_bias"] == -10.0
    loaded = export.load_local_dir(tmp_path)
    assert loaded.model.logit_bias.ndim == 0 and loaded.model.logit_bias.item() == -10.0


@pytest.mark.slow  # the session's moto S3 server
def test_export_from_s3_fetches_only_the_model_file(tmp_path, model, s3, monkeypatch):
    _checkpoint_folder(tmp_path / "ckpt", model)
    client = s3.client()
    for f in ("clipscale.json", "model.safetensors"):
        client.upload_file(str(tmp_path / "ckpt" / f), s3.bucket, f"exp/ckpt/{f}")
    client.put_object(Bucket=s3.bucket, Key="exp/ckpt/step00000004/mp_rank_00_model_states.pt", Body=b"x" * 1000)
    fetched = []
    real = evaluate._download
    monkeypatch.setattr(evaluate, "_download", lambda uri, dest, st: fetched.append(uri) or real(uri, dest, st))
    out = export.export_checkpoint(s3.uri("exp", "ckpt"), tmp_path / "out", s3.settings)
    assert fetched == [s3.uri("exp", "ckpt", "model.safetensors")]  # not the folder with DeepSpeed's files
    assert export.load_local_dir(out).model.logit_scale.item() == pytest.approx(3.0)
    assert json.loads((out / "clipscale.json").read_text())["checkpoint"] == s3.uri("exp", "ckpt")
