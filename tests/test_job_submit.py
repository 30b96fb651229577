"""`ray job submit` of a micro ladder against a `ray start --head` cluster, and no secret anywhere."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from tests.conftest import FAKE_KEY_ID, FAKE_SECRET
from tests.test_train import TINY_MODEL

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]


def micro_config(tmp_path: Path, s3, shards_uri: str, name: str, n_rungs: int = 2, **extra) -> Path:
    rungs = [{"name": f"j{i}", "samples": 128 * (i % 4 + 1), "batch_size": 32,
              "model": {**yaml.safe_load(TINY_MODEL), "vision_width": w, "text_width": w}}
             for i, w in enumerate((16, 32, 48, 64, 16, 32, 48, 64)[:n_rungs])]
    cfg = {
        "ladder": {"name": name, "rungs": rungs, "max_concurrent": extra.pop("max_concurrent", 1)},
        "data": {"shards": shards_uri, "storage": {"endpoint_url": s3.endpoint_url}},
        "train": {"log_every_steps": 2, "checkpoint_every_samples": 64, **extra.pop("train", {})},
        "eval": {"root": str(tmp_path / "eval"), "tasks": ["shape"], "n_per_task": 40, "linear_probe": False},
        "tracking": {"uri": f"sqlite:///{tmp_path / 'mlflow.db'}", "experiment": name},
        "cluster": {"storage_path": str(tmp_path / "runs")},
        "scaling": {"task": "shape", "bootstrap": 10},
        **extra,
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def assert_no_secret_in_tree(root: Path, secrets: tuple[str, ...] = (FAKE_SECRET,)) -> None:
    for path in root.rglob("*"):
        if path.is_file() and path.stat().st_size < 50_000_000:
            data = path.read_bytes()
            for secret in secrets:
                assert secret.encode() not in data, f"secret leaked into {path}"


def test_ray_job_submit_runs_a_micro_ladder_and_leaks_no_secret(tmp_path, s3, s3_corpus, ray_head):
    config = micro_config(tmp_path, s3, s3.uri("corpus"), "jobmicro", n_rungs=1)
    ray_bin = os.path.join(os.path.dirname(sys.executable), "ray")
    out = subprocess.run(
        [ray_bin, "job", "submit", "--address", ray_head.dashboard, "--working-dir", str(REPO), "--",
         sys.executable, "experiments/ladder.py", "--config", str(config)],
        env=ray_head.env, capture_output=True, text=True, timeout=900)
    logs = out.stdout + out.stderr
    assert out.returncode == 0, logs[-3000:]
    assert "succeeded" in logs.lower()

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("jobmicro").experiment_id])
    assert len(runs) == 2 and all(r.info.status == "FINISHED" for r in runs)  # the parent and its rung

    # The key was in the environment of the driver and the cluster; it must appear nowhere.
    assert FAKE_SECRET not in logs and FAKE_KEY_ID not in logs
    for run in runs:
        blob = repr(run.data.params) + repr(run.data.tags)
        assert FAKE_SECRET not in blob and FAKE_KEY_ID not in blob
        local = client.download_artifacts(run.info.run_id, "", str(tmp_path / "artifacts" / run.info.run_id))
        assert_no_secret_in_tree(Path(local))
    assert_no_secret_in_tree(Path(ray_head.temp_dir))  # Ray's job, worker and runtime-env logs
