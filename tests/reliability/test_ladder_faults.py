"""Faults in real ladder runs: a killed worker.

A killed driver is checked on the default path (test_default_path.py); divergence and
full-width load on the end-to-end ladder (tests/test_ladder.py).

Each test injects a fault into a real run (local Ray or a `ray start --head`
cluster, DeepSpeed on CPU, moto S3 shards, MLflow on sqlite) and asserts what
is left afterwards: exact budgets, one MLflow run per rung, no duplicates.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time

import pytest
from mlflow.tracking import MlflowClient

from clipscale.config import load_config
from clipscale.ladder import run_ladder
from tests.test_job_submit import micro_config

pytestmark = pytest.mark.slow


def runs_of(tmp_path: Path, experiment: str) -> list:
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = client.get_experiment_by_name(experiment)
    return client.search_runs([exp.experiment_id]) if exp else []


def children(runs: list) -> dict:
    return {r.data.tags["clipscale.rung"]: r for r in runs if "clipscale.rung" in r.data.tags}


def test_worker_sigkill_resumes_from_checkpoint_with_one_run(tmp_path, s3, s3_corpus, ray_local):
    pid_dir = tmp_path / "pids"
    pid_dir.mkdir()
    config = micro_config(tmp_path, s3, s3.uri("corpus"), "killworker", n_rungs=1,
                          train={"log_every_steps": 2, "checkpoint_every_samples": 64, "max_failures": 2},
                          faults={"pid_dir": str(pid_dir)})
    cfg = load_config(config, ["ladder.rungs.0.samples=512"])
    killed = {}

    def killer():
        deadline = time.time() + 600
        while time.time() < deadline and not killed:
            try:
                info = json.loads((pid_dir / "rank0.json").read_text())
            except (OSError, ValueError):
                time.sleep(0.2)
                continue
            if info["step"] >= 7:  # past the checkpoints at steps 2, 4 and 6
                os.kill(info["pid"], signal.SIGKILL)
                killed.update(info)
            time.sleep(0.1)

    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    result = run_ladder(cfg)
    thread.join(timeout=5)
    assert killed, "the worker was never killed"
    assert result.trained == ["j0"] and not result.failed
    after = json.loads((pid_dir / "rank0.json").read_text())
    assert after["pid"] != killed["pid"]  # a new worker process finished the rung
    runs = runs_of(tmp_path, "killworker")
    assert len(runs) == 2  # the parent and one child, despite the restart
    child = children(runs)["j0"]
    assert child.info.status == "FINISHED"
    assert child.data.metrics["compute/samples"] == cfg.ladder.rungs[0].budget == 512
