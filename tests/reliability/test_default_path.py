"""The default path as a new user meets it: relative paths, a killed driver and a rerun, a second
invocation of the same ladder, a poisoned step, an empty corpus, a tracking server that blinks.

Each test runs the real thing (a `ray start --head` cluster or a local Ray, DeepSpeed on CPU,
moto S3 shards, MLflow on sqlite or a real `mlflow server`) and checks what is left afterwards.
"""

from __future__ import annotations

import collections
import json
import os
import signal
import subprocess
import sys
import tarfile
import threading
import time
import urllib.request
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from clipscale.config import load_config
from clipscale.ladder import run_ladder
from clipscale.storage import StorageError
from tests.conftest import free_port
from tests.test_job_submit import micro_config
from tests.test_train import TINY_MODEL

REPO = Path(__file__).resolve().parents[2]


def _children(client: MlflowClient, experiment: str) -> dict:
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id]) if exp else []
    return {r.data.tags["clipscale.rung"]: r for r in runs if "clipscale.rung" in r.data.tags}


def _relative_config(project: Path, s3, name: str) -> Path:
    """A two-rung micro ladder whose every local path is relative, as tiny.yaml's are. j1 (wide,
    short) trains first and finishes; j0 (narrow, long, slowed) is the rung the driver dies in."""
    config = micro_config(project, s3, s3.uri("corpus"), name, n_rungs=2,
                          faults={"rung": "j0", "pid_dir": str(project / "pids"), "sleep_per_step": 0.5})
    data = yaml.safe_load(config.read_text())
    data["eval"]["root"] = "data/eval"
    data["tracking"]["uri"] = "sqlite:///mlflow.db"
    data["cluster"]["storage_path"] = "runs"
    # 40 steps, checkpoints every 2: the killed driver's workers must not finish the rung before
    # Ray notices the driver is gone and ends them.
    data["ladder"]["rungs"][0]["samples"] = 1280
    # 16x the FLOPs per sample of j0, so the ladder (largest first) runs it first.
    data["ladder"]["rungs"][1]["model"].update(vision_width=64, text_width=64)
    config.write_text(yaml.safe_dump(data))
    return config


def _wait_for_step(pid_file: Path, step: int, driver: subprocess.Popen, log: Path) -> None:
    deadline = time.time() + 600
    while time.time() < deadline:
        if pid_file.exists() and json.loads(pid_file.read_text())["step"] >= step:
            return
        assert driver.poll() is None, log.read_text()[-3000:]
        time.sleep(0.3)
    raise AssertionError(f"the rung never reached step {step}")


@pytest.mark.slow
def test_relative_paths_killed_driver_second_invocation_and_rerun(tmp_path, s3, s3_corpus, ray_head):
    """Started from its own folder with relative paths, the driver is killed while the second rung
    trains (the first has finished); a second invocation meanwhile is refused; the rerun skips the
    finished rung and resumes the other from its checkpoint, with no duplicate run or metric."""
    project = tmp_path / "project"
    (project / "pids").mkdir(parents=True)
    config = _relative_config(project, s3, "relpaths")
    cmd = [sys.executable, str(REPO / "experiments" / "ladder.py"), "--config", config.name]
    env = {**ray_head.env, "RAY_ADDRESS": ray_head.address, "PYTHONUNBUFFERED": "1"}
    log = project / "first.log"
    driver = subprocess.Popen(cmd, cwd=project, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT)
    client = MlflowClient(f"sqlite:///{project / 'mlflow.db'}")
    try:
        _wait_for_step(project / "pids" / "rank0.json", 7, driver, log)  # past the checkpoints at steps 2, 4, 6
        finished = _children(client, "relpaths")["j1"]
        assert finished.info.status == "FINISHED"
        # The same ladder started again while the first driver lives: refused, naming the parent run.
        second = subprocess.run(cmd, cwd=project, env=env, capture_output=True, text=True, timeout=300)
        assert second.returncode == 1, second.stdout[-2000:] + second.stderr[-2000:]
        parent = next(r for r in client.search_runs([client.get_experiment_by_name("relpaths").experiment_id])
                      if "clipscale.rung" not in r.data.tags)
        assert "already running" in second.stderr and parent.info.run_id in second.stderr
        driver.send_signal(signal.SIGKILL)
        driver.wait(timeout=30)
    finally:
        if driver.poll() is None:
            driver.kill()

    # Right after the kill: the lock names a dead pid, so the rerun proceeds at once.
    rerun = subprocess.run(cmd, cwd=project, env=env, capture_output=True, text=True, timeout=900)
    out = rerun.stdout + rerun.stderr
    assert rerun.returncode == 0, out[-3000:]
    assert "already finished, skipped: j1" in out
    steps = [int(line.split("step ")[1].split("/")[0]) for line in out.splitlines() if "[j0] step " in line]
    assert steps, out[-3000:]
    resumed_at = (steps[0] - 2) * 32  # the first logged step of the rerun is two past its checkpoint
    assert resumed_at >= 128, steps  # continued from a checkpoint, not from step 0

    kids = _children(client, "relpaths")
    runs = client.search_runs([client.get_experiment_by_name("relpaths").experiment_id])
    assert len(runs) == 3 and set(kids) == {"j0", "j1"}  # no duplicate or orphaned runs
    assert kids["j1"].info.run_id == finished.info.run_id
    assert all(r.info.status == "FINISHED" for r in runs)
    child = kids["j0"]
    assert child.data.metrics["compute/samples"] == 1280
    seen = collections.Counter(m.value for m in client.get_metric_history(child.info.run_id, "train/samples_seen"))
    assert all(n == 1 for value, n in seen.items() if value <= resumed_at), seen

    metas = list((project / "runs").rglob("clipscale.json"))
    assert metas, "no checkpoint under <cwd>/runs"
    sessions = list(Path(ray_head.temp_dir).glob("session_*"))
    leaked = [p for s in sessions for p in s.rglob("clipscale.json")] + \
             [p for s in sessions for p in s.rglob("position-rank*.json")]
    assert not leaked, leaked[:5]
    (tmp_path / "art").mkdir()
    local = client.download_artifacts(parent.info.run_id, "config/resolved.yaml", str(tmp_path / "art"))
    resolved = yaml.safe_load(Path(local).read_text())
    assert resolved["cluster"]["storage_path"] == str(project / "runs")


@pytest.mark.slow
def test_poisoned_step_between_log_steps_writes_no_checkpoint(tmp_path, s3, s3_corpus, ray_local):
    config = micro_config(tmp_path, s3, s3.uri("corpus"), "poison", n_rungs=1,
                          train={"log_every_steps": 8, "checkpoint_every_samples": 64},
                          faults={"nan_at_step": 4, "nan_steps": 1})  # the 5th step only; logs at 8, 16
    cfg = load_config(config, ["ladder.rungs.0.samples=512"])
    result = run_ladder(cfg)
    assert result.failed == ["j0"]
    child = _children(MlflowClient(cfg.tracking.uri), "poison")["j0"]
    assert child.info.status == "FAILED"
    assert "no checkpoint written" in child.data.tags["clipscale.failure_reason"]
    steps = [json.loads(p.read_text())["state"]["step"] for p in (tmp_path / "runs").rglob("clipscale.json")]
    assert steps and max(steps) == 4, steps  # the checkpoint at step 6 would have held the poisoned state


def _img2dataset_folder(root: Path, successes: int) -> Path:
    """What img2dataset leaves when every download failed: tars without samples, stats saying so."""
    root.mkdir(parents=True)
    for i in range(2):
        with tarfile.open(root / f"{i:05d}.tar", "w"):
            pass
        (root / f"{i:05d}_stats.json").write_text(json.dumps({"count": 10, "successes": successes,
                                                              "failed_to_download": 10 - successes}))
    return root


def test_empty_corpus_fails_before_anything_starts(tmp_path, monkeypatch):
    shards = _img2dataset_folder(tmp_path / "laion", successes=0)
    config = tmp_path / "empty.yaml"
    config.write_text(yaml.safe_dump({
        "ladder": {"name": "empty", "rungs": [{"name": "r0", "samples": 64, "batch_size": 32,
                                               "model": yaml.safe_load(TINY_MODEL)}]},
        "data": {"shards": "laion"}, "eval": {"tasks": []}}))
    monkeypatch.chdir(tmp_path)
    t0 = time.time()
    with pytest.raises(StorageError) as err:
        run_ladder(load_config(config))
    message = str(err.value)
    assert str(shards) in message and "0 usable samples" in message and "2 shard(s)" in message
    assert time.time() - t0 < 30
    assert not (tmp_path / "mlflow.db").exists()  # failed before tracking, trials or Ray


def _start_mlflow(port: int, store: Path) -> subprocess.Popen:
    mlflow_bin = Path(sys.executable).parent / "mlflow"
    proc = subprocess.Popen(
        [str(mlflow_bin), "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
         "--backend-store-uri", f"sqlite:///{store / 'mlflow.db'}", "--artifacts-destination", str(store / "art")],
        stdout=(store / "server.log").open("a"), stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.time() + 600  # minutes to answer on a busy box (4 min measured at load 6)
    while time.time() < deadline:
        try:  # a plain request: MLflow's client would retry for minutes inside one call
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as response:
                if response.status == 200:
                    return proc
        except OSError:  # not up yet
            pass
        time.sleep(0.5)
    raise RuntimeError((store / "server.log").read_text()[-2000:])


@pytest.mark.slow
def test_tracking_server_blip_loses_no_step_metric(tmp_path, s3, s3_corpus, ray_local):
    store, port = tmp_path / "server", free_port()
    store.mkdir()
    server = {"proc": _start_mlflow(port, store)}
    uri = f"http://127.0.0.1:{port}"
    config = micro_config(tmp_path, s3, s3.uri("corpus"), "blip", n_rungs=1,
                          faults={"pid_dir": str(tmp_path), "sleep_per_step": 1.0})
    cfg = load_config(config, ["ladder.rungs.0.samples=1280", f"tracking.uri={uri}",  # 40 steps, ~45 s
                               "tracking.retry_seconds=300"])  # a busy box restarts the server slowly

    def blip():
        deadline = time.time() + 300
        while time.time() < deadline:
            pid = tmp_path / "rank0.json"
            if pid.exists() and json.loads(pid.read_text())["step"] >= 5:
                break
            time.sleep(0.2)
        os.killpg(server["proc"].pid, signal.SIGKILL)
        server["proc"].wait()
        time.sleep(20)
        server["proc"] = _start_mlflow(port, store)

    thread = threading.Thread(target=blip, daemon=True)
    thread.start()
    try:
        result = run_ladder(cfg)
        thread.join(timeout=400)
        assert not thread.is_alive(), "the server was never taken down and brought back"
        assert result.trained == ["j0"], result
        child = _children(MlflowClient(uri), "blip")["j0"]
        assert child.info.status == "FINISHED"
        logged = sorted(m.step for m in MlflowClient(uri).get_metric_history(child.info.run_id, "train/loss"))
        assert logged == list(range(2, 41, 2)), logged  # every log step, the blip's included
    finally:
        os.killpg(server["proc"].pid, signal.SIGKILL)
