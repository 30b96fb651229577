"""Faults in real ladder runs: killed workers and drivers, divergence, full-width load.

Each test injects a fault into a real run (local Ray or a `ray start --head`
cluster, DeepSpeed on CPU, moto S3 shards, MLflow on sqlite) and asserts what
is left afterwards: exact budgets, one MLflow run per rung, no duplicates.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from clipscale.config import load_config
from clipscale.ladder import plan, run_ladder
from tests.test_job_submit import micro_config

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]


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


def test_driver_killed_mid_ladder_then_rerun_skips_and_resumes(tmp_path, s3, s3_corpus, ray_head):
    pid_dir = tmp_path / "pids"
    pid_dir.mkdir()
    overrides = ["ladder.rungs.0.samples=1024", "ladder.rungs.1.samples=1024"]
    probe = load_config(micro_config(tmp_path, s3, s3.uri("corpus"), "killdriver", n_rungs=2), overrides)
    # The ladder runs the largest rung first: kill the driver while the second one trains.
    first, second = (p.rung.name for p in sorted(plan(probe), key=lambda p: -p.train_flops))
    config = micro_config(tmp_path, s3, s3.uri("corpus"), "killdriver", n_rungs=2,
                          faults={"rung": second, "pid_dir": str(pid_dir)})
    cmd = [sys.executable, str(REPO / "experiments" / "ladder.py"), "--config", str(config), *overrides]
    env = {**ray_head.env, "RAY_ADDRESS": ray_head.address, "PYTHONUNBUFFERED": "1"}

    def status(rung: str) -> str | None:
        run = children(runs_of(tmp_path, "killdriver")).get(rung)
        return run.info.status if run is not None else None

    log1 = open(tmp_path / "first.log", "w")
    driver = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=log1, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 600
        while time.time() < deadline:  # first done, second past its checkpoint at step 2
            pid_file = pid_dir / "rank0.json"
            step = json.loads(pid_file.read_text())["step"] if pid_file.exists() else 0
            if step >= 5 and status(first) == "FINISHED":
                break
            assert driver.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
            time.sleep(0.5)
        driver.send_signal(signal.SIGKILL)
        driver.wait(timeout=30)
    finally:
        if driver.poll() is None:
            driver.kill()
    first_run = children(runs_of(tmp_path, "killdriver"))[first].info.run_id
    assert status(second) != "FINISHED"

    rerun = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    out = rerun.stdout + rerun.stderr
    assert rerun.returncode == 0, out[-3000:]
    assert f"already finished, skipped: {first}" in out
    steps = [int(line.split("step ")[1].split("/")[0]) for line in out.splitlines() if f"[{second}] step " in line]
    assert steps and steps[0] > 2, steps  # continued from a checkpoint, not from step 0
    runs = runs_of(tmp_path, "killdriver")
    kids = children(runs)
    assert len(runs) == 3 and set(kids) == {"j0", "j1"}  # no duplicate or orphaned runs
    assert kids[first].info.run_id == first_run
    assert all(r.info.status == "FINISHED" for r in runs)
    assert kids[second].data.metrics["compute/samples"] == 1024


def test_divergent_rung_fails_with_reason_and_the_ladder_goes_on(tmp_path, s3, s3_corpus, ray_local):
    config = micro_config(tmp_path, s3, s3.uri("corpus"), "diverge", n_rungs=3, max_concurrent=2)
    cfg = load_config(config, ["ladder.rungs.1.lr=1.0e6"])  # a real divergence, not an injected NaN
    result = run_ladder(cfg)
    assert result.failed == ["j1"] and sorted(result.trained) == ["j0", "j2"]
    kids = children(runs_of(tmp_path, "diverge"))
    assert kids["j1"].info.status == "FAILED"
    assert "non-finite" in kids["j1"].data.tags["clipscale.failure_reason"]
    assert kids["j0"].info.status == kids["j2"].info.status == "FINISHED"
    assert result.fit is not None and result.fit["n_points"] == 2
    assert "j1" in result.fit["excluded"]  # the fit left it out and says so


def test_all_eight_rungs_at_full_concurrency(tmp_path, s3, s3_corpus, ray_local):
    config = micro_config(tmp_path, s3, s3.uri("corpus"), "load", n_rungs=8, max_concurrent=0,
                          train={"log_every_steps": 2, "checkpoint_every_samples": 0})
    cfg = load_config(config, [f"ladder.rungs.{i}.samples=64" for i in range(8)])
    result = run_ladder(cfg)
    assert sorted(result.trained) == [f"j{i}" for i in range(8)] and not result.failed
    kids = children(runs_of(tmp_path, "load"))
    assert len(kids) == 8
    for name, run in kids.items():
        m = run.data.metrics
        assert m["compute/flops"] > 0 and "zeroshot/shape/top1" in m, name
