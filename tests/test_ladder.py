"""A ladder end to end: Tune -> Train -> DeepSpeed -> eval -> MLflow, on moto S3 shards; the dry run; bad config."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from mlflow.tracking import MlflowClient

from clipscale.config import load_config
from clipscale.ladder import run_ladder
from tests.test_train import TINY_MODEL

pytestmark = pytest.mark.slow
REPO = __import__("pathlib").Path(__file__).resolve().parents[1]


def eight_rung_config(tmp_path, s3, shards_uri) -> list[str]:
    """Eight micro rungs (distinct compute: four widths, two budgets), all at once; rung j1 gets a
    learning rate that really diverges (not an injected NaN). Two or three steps a rung, each logged."""
    rungs = ", ".join(
        f"{{name: j{i}, samples: {256 if i == 1 else 64 if i < 4 else 96}, batch_size: 32, "
        f"{'lr: 1000000.0, ' if i == 1 else ''}"
        f"model: {TINY_MODEL.replace('vision_width: 32', f'vision_width: {w}').replace('text_width: 32', f'text_width: {w}')}}}"
        for i, w in enumerate((16, 32, 48, 64, 16, 32, 48, 64)))
    return [
        "ladder.name=micro", f"ladder.rungs=[{rungs}]", "ladder.max_concurrent=0",
        f"data.shards={shards_uri}", f"data.storage.endpoint_url={s3.endpoint_url}",
        f"cluster.storage_path={tmp_path / 'runs'}",
        f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}", "tracking.experiment=micro",
        f"eval.root={tmp_path / 'eval'}", "eval.tasks=[shape, digits_uci, retrieval]", "eval.n_per_task=40",
        "eval.linear_probe=false", "train.log_every_steps=1", "train.checkpoint_every_samples=0",
        "scaling.task=shape", "scaling.bootstrap=20",
    ]


def test_eight_rungs_at_full_concurrency_one_diverges_and_a_rerun_adds_nothing(tmp_path, s3, s3_corpus, ray_local):
    """The product flow end to end (Tune -> Train -> DeepSpeed -> eval -> MLflow -> live fit) under
    full load: every rung at once on two cores. One rung diverges; it fails with its reason, the
    ladder goes on and the fit leaves it out. One ladder serves all of these checks because each
    trial pays ~1 min of Ray Train and DeepSpeed start-up on this box."""
    cfg = load_config(None, eight_rung_config(tmp_path, s3, s3.uri("corpus")))
    result = run_ladder(cfg)
    finished = [f"j{i}" for i in range(8) if i != 1]
    assert result.failed == ["j1"] and sorted(result.trained) == finished

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = client.get_experiment_by_name("micro")
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = {r.data.tags["clipscale.rung"]: r for r in runs
                if r.data.tags.get("mlflow.parentRunId") == result.parent_id}
    assert len(parents) == 1 and parents[0].info.run_id == result.parent_id
    assert len(children) == 8 and len(runs) == 9
    assert children["j1"].info.status == "FAILED"
    assert "non-finite" in children["j1"].data.tags["clipscale.failure_reason"]
    for name in finished:
        _assert_finished_rung(client, children[name])
    parent_artifacts = {a.path for a in client.list_artifacts(result.parent_id, "config")}
    assert "config/resolved.yaml" in parent_artifacts
    # The live scaling view: fit numbers stepped by rungs fitted, and the plot as PNG + SVG.
    fit_history = client.get_metric_history(result.parent_id, "scaling/shape/b")
    assert [m.step for m in fit_history][-1] == 7
    plots = {a.path for a in client.list_artifacts(result.parent_id, "scaling")}
    assert {"scaling/shape_vs_flops.png", "scaling/shape_vs_flops.svg"} <= plots
    # The task's law leaves near-chance rungs out (all of them only when fewer than two would remain).
    fitted = [n for n in finished if n not in set(result.fit["near_chance"])]
    biggest = max(fitted if len(fitted) >= 2 else finished, key=lambda n: children[n].data.metrics["compute/flops"])
    assert result.fit["n_points"] == 7 and result.fit["holdout"][0]["rung"] == biggest
    assert "j1" in result.fit["excluded"]  # the fit left it out and says so
    assert len(result.rows) == 8

    # Rerun the finished rungs (the ladder's identity covers every rung, so it is the same parent).
    again = run_ladder(load_config(None, [*eight_rung_config(tmp_path, s3, s3.uri("corpus")),
                                         "ladder.only=[0, 2, 3, 4, 5, 6, 7]"]))
    assert again.trained == [] and sorted(again.skipped) == finished
    assert again.parent_id == result.parent_id
    assert len(client.search_runs([exp.experiment_id])) == 9


def _assert_finished_rung(client: MlflowClient, child) -> None:
    assert child.info.status == "FINISHED"
    assert {"clipscale.rung", "clipscale.config_hash", "clipscale.device_type"} <= child.data.tags.keys()
    # One worker per rung here: the requested ZeRO-2 runs as stage 0, and the tag says so.
    assert child.data.tags["clipscale.zero_stage"] == "0"
    p, m = child.data.params, child.data.metrics
    for key in ("nonembedding_params", "params", "flops_per_sample", "samples", "model.vision_width"):
        assert key in p, key
    assert m["compute/flops"] > 0 and m["compute/device_days"] > 0
    assert m["compute/samples"] == int(p["samples"])
    assert m["compute/flops"] == pytest.approx(3 * int(p["flops_per_sample"]) * int(p["samples"]))
    assert 0.0 <= m["zeroshot/shape/top1"] <= 1.0
    assert m["zeroshot/shape/error"] == pytest.approx(1 - m["zeroshot/shape/top1"])
    assert "zeroshot/digits_uci/top1" in m and "retrieval/retrieval/i2t_r1" in m
    history = client.get_metric_history(child.info.run_id, "train/loss")
    assert len(history) >= 2  # step curve, not just a final value


def test_dry_run_json_lists_every_rung():
    out = subprocess.run([sys.executable, "experiments/ladder.py", "--dry-run", "--json", "--throughput", "1000"],
                         cwd=REPO, capture_output=True, text=True, check=True)
    doc = json.loads(out.stdout)
    assert len(doc["rungs"]) == 8
    for r in doc["rungs"]:
        assert {"name", "params", "nonembedding_params", "flops_per_sample", "samples", "train_flops"} <= r.keys()
        assert r["train_flops"] == 3 * r["flops_per_sample"] * r["samples"]
        assert r["est_device_days"] > 0
    assert doc["compute_span"] >= 100


def test_bad_config_names_the_key_and_starts_nothing(tmp_path):
    out = subprocess.run([sys.executable, str(REPO / "experiments" / "ladder.py"), "train.zero_stage=4"],
                         cwd=tmp_path, capture_output=True, text=True)
    assert out.returncode == 2
    assert "train.zero_stage" in out.stderr and "4" in out.stderr
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "data").exists()


def test_oversubscribed_threads_are_warned_about():
    from clipscale.ladder import oversubscription_warning

    warning = oversubscription_warning(torch_threads=2, concurrency=2, workers=1, cpus=2)
    assert warning and "train.torch_threads=2" in warning and "2 CPUs" in warning
    assert oversubscription_warning(torch_threads=1, concurrency=2, workers=1, cpus=2) is None
    assert oversubscription_warning(torch_threads=0, concurrency=8, workers=4, cpus=2) is None  # Ray's share
