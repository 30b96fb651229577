"""The path a user takes: a one-rung ladder (2 workers, ZeRO-3), then `clipscale export --run-id`,
then open_clip's `local-dir:` loader scores what the MLflow run recorded."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import yaml
from mlflow.tracking import MlflowClient

from clipscale import evaluate, export
from clipscale.config import load_config
from clipscale.ladder import run_ladder
from tests.test_job_submit import micro_config

pytestmark = pytest.mark.slow
REPO = __import__("pathlib").Path(__file__).resolve().parents[1]


def test_zero3_rung_exports_from_its_run_and_open_clip_scores_the_same(tmp_path, s3, s3_corpus, ray_local,
                                                                      monkeypatch):
    monkeypatch.chdir(tmp_path)  # MLflow's default artifact root (./mlruns) lands in the test's folder
    path = micro_config(tmp_path, s3, s3.uri("corpus"), "exportmicro", n_rungs=1)
    raw = yaml.safe_load(path.read_text())
    # Two workers at ZeRO-3: the consolidated weights are gathered from partitions.
    raw["ladder"]["rungs"][0].update(workers=2, zero_stage=3, samples=128)
    raw["train"]["checkpoint_every_samples"] = 128  # only the final checkpoint: each save costs seconds
    raw["eval"]["tasks"] = ["shape", "color"]
    raw["train"]["keep_checkpoints_at"] = [64, 4096]  # mid-rung (gathered from ZeRO-3 partitions), past the budget
    path.write_text(yaml.safe_dump(raw))
    result = run_ladder(load_config(str(path)))
    assert result.trained == ["j0"] and not result.failed

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("exportmicro")
    (child,) = [r for r in client.search_runs([exp.experiment_id]) if r.data.tags.get("clipscale.rung") == "j0"]
    assert child.data.tags["clipscale.zero_stage"] == "3"
    assert child.data.tags["clipscale.model_artifact"].startswith("logged")
    logged = {a.path for a in client.list_artifacts(child.info.run_id, "model")}
    assert {"model/open_clip_config.json", "model/open_clip_model.safetensors", "model/clipscale.json"} <= logged
    m = child.data.metrics
    assert m["zeroshot/shape/chance"] > 0 and {"zeroshot/average/error", "zeroshot/average/normalized_top1"} <= m.keys()

    out = tmp_path / "exported"
    done = subprocess.run([sys.executable, "-m", "clipscale.cli", "export", "--run-id", child.info.run_id,
                           "--out", str(out), "--tracking-uri", uri], cwd=tmp_path, capture_output=True,
                          text=True, timeout=300, env={**__import__("os").environ, "PYTHONPATH": str(REPO)})
    assert done.returncode == 0, done.stderr[-2000:]
    info = json.loads((out / "clipscale.json").read_text())
    assert info["mlflow_run_id"] == child.info.run_id and info["config_hash"] == child.data.tags[
        "clipscale.config_hash"]

    loaded = export.load_local_dir(out)
    scores = evaluate.evaluate_model(loaded.model, loaded.info["model"], ["shape", "color"],
                                     str(tmp_path / "eval"), linear_probe=False, preprocess=loaded.preprocess,
                                     tokenizer=loaded.tokenizer)
    for task in ("shape", "color"):
        assert scores[f"zeroshot/{task}/top1"] == pytest.approx(m[f"zeroshot/{task}/top1"], abs=0.005)

    # The model kept at 64 samples sits on the run in the same layout, as its own model.
    kept = {a.path for a in client.list_artifacts(child.info.run_id, "checkpoints")}
    assert kept == {"checkpoints/samples-64"}  # 4096 is past the 128-sample budget: never kept
    mid = export.load_local_dir(client.download_artifacts(child.info.run_id, "checkpoints/samples-64",
                                                          str(tmp_path / "dl")))
    assert mid.info["samples"] == 64 and mid.info["mlflow_run_id"] == child.info.run_id
    final_w, mid_w = loaded.model.visual.conv1.weight, mid.model.visual.conv1.weight
    assert final_w.shape == mid_w.shape and not (final_w == mid_w).all()  # 64 more samples of training apart
