"""A multi-node Ray cluster on one box, with nothing shared through a local disk.

`ray.cluster_utils.Cluster` starts a head with no CPUs plus two worker nodes of 2 CPUs, as Ray
tests itself. Everything crosses nodes as in production: shards, checkpoints
(`cluster.storage_path`) and eval sets on the moto S3 server, MLflow through a real
`mlflow server` over HTTP. The ladder runs as a subprocess driver with RAY_ADDRESS set: the
session's local Ray (`ray_local`) may already be initialised in this process, and a driver joins
one cluster only.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from clipscale import names
from clipscale.config import PlacementStrategy, load_config
from clipscale.errors import ConfigError
from clipscale.ladder.provision import check_shared_storage, cluster_nodes
from clipscale.storage import StorageError
from tests.conftest import _kill_ray_processes_under
from tests.helpers import free_port
from tests.reliability.test_default_path import _start_mlflow
from tests.test_job_submit import micro_config

REPO = Path(__file__).resolve().parents[2]
WORKER_CPUS = 2  # per worker node: one rung's two 0.5-CPU workers still fit on the node left after a loss


@dataclass
class MultiNode:
    cluster: object  # ray.cluster_utils.Cluster
    address: str  # the head's GCS address, for RAY_ADDRESS
    workers: dict  # node id -> ray._private.node.Node, the worker nodes
    mlflow_uri: str


def _address_file():
    from ray._common.utils import get_ray_address_file

    return Path(get_ray_address_file(None))


def _put_back(path: Path, saved: str | None) -> None:
    """Cluster writes, and on shutdown deletes, the machine-wide "current cluster" file that
    `ray.init("auto")` reads; put back what the box's other Ray had there."""
    if saved is None:
        path.unlink(missing_ok=True)
    else:
        path.write_text(saved)


def _agent_ports() -> dict:
    """Every per-node agent on a free port: the defaults (e.g. 52365) belong to the box's other Ray."""
    return {key: free_port() for key in ("dashboard_agent_listen_port", "metrics_agent_port", "metrics_export_port",
                                         "runtime_env_agent_port")}


def _patient(get_node, seconds: float = 180):
    """`Node()` gives a new raylet a hard-coded 30 s to register; under load on this 2-core box the
    head's took longer (its agents start beside the GCS and the monitors)."""
    def get_node_patiently(*args, **kwargs):
        deadline = time.monotonic() + seconds
        while True:
            try:
                return get_node(*args, **kwargs)
            except RuntimeError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
    return get_node_patiently


def _start_cluster(temp_dir: str):
    import ray._private.services
    from ray.cluster_utils import Cluster

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(ray._private.services, "get_node", _patient(ray._private.services.get_node))
        cluster = Cluster(initialize_head=True, head_node_args={
            "num_cpus": 0, "temp_dir": temp_dir, "include_dashboard": False, **_agent_ports()})
        workers = {}
        for _ in range(2):
            node = cluster.add_node(num_cpus=WORKER_CPUS, object_store_memory=200 << 20, **_agent_ports())
            workers[node.node_id] = node
    return cluster, workers


@pytest.fixture(scope="module")
def multinode(tmp_path_factory, s3, s3_corpus):
    store, port = tmp_path_factory.mktemp("mlflow"), free_port()
    temp_dir = tempfile.mkdtemp(prefix="mn", dir="/tmp")  # short: Ray's socket paths have a length limit
    address_file = _address_file()
    saved = address_file.read_text() if address_file.exists() else None
    cluster, server = None, None
    try:
        # One after the other: a raylet waits a hard-coded 30 s for its dashboard agent, whose start
        # on a loaded 2-core box beside an MLflow server's took longer.
        try:
            cluster, workers = _start_cluster(temp_dir)
        finally:
            _put_back(address_file, saved)
        server = _start_mlflow(port, store)
        yield MultiNode(cluster, cluster.address, workers, f"http://127.0.0.1:{port}")
    finally:
        if cluster is not None:
            cluster.shutdown()
        _put_back(address_file, saved)
        _kill_ray_processes_under(temp_dir)  # anything the shutdown missed, and only this cluster's
        if server is not None:
            os.killpg(server.pid, signal.SIGKILL)


def _config(tmp_path: Path, s3, mn: MultiNode, name: str, samples: int, faults: dict | None = None) -> Path:
    """A one-rung micro ladder of two SPREAD workers with nothing on a local disk."""
    config = micro_config(tmp_path, s3, s3.uri("corpus"), name, n_rungs=1, faults=faults or {})
    data = yaml.safe_load(config.read_text())
    data["ladder"]["rungs"][0].update(samples=samples, workers=2)
    data["eval"]["root"] = s3.uri("multinode", name, "eval")
    data["tracking"]["uri"] = mn.mlflow_uri
    data["cluster"] = {"storage_path": s3.uri("multinode", name, "runs"), "placement_strategy": "SPREAD"}
    config.write_text(yaml.safe_dump(data))
    return config


def _driver(config: Path, mn: MultiNode, log: Path) -> subprocess.Popen:
    env = {**os.environ, "RAY_ADDRESS": mn.address, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, str(REPO / "experiments" / "ladder.py"), "--config", str(config)],
                            cwd=config.parent, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT)


def _finish(driver: subprocess.Popen, log: Path, timeout: float) -> str:
    try:
        driver.wait(timeout=timeout)
    finally:
        if driver.poll() is None:
            driver.kill()
    out = log.read_text()
    assert driver.returncode == 0, out[-4000:]
    return out


def _rung_runs(uri: str, experiment: str, rung: str = "j0") -> list:
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    return [r for r in client.search_runs([exp.experiment_id]) if r.data.tags.get(names.TAG_RUNG) == rung]


def _assert_node_seconds_add_up(run) -> dict[str, float]:
    """Per-node device-seconds are all there, positive, and sum to compute/device_seconds and _days."""
    m = run.data.metrics
    prefix, suffix = names.node_device_seconds("<id>").split("<id>")
    per_node = {k[len(prefix):-len(suffix)]: v for k, v in m.items() if k.startswith(prefix) and k.endswith(suffix)}
    assert per_node and all(v > 0 for v in per_node.values()), m
    assert sum(per_node.values()) == pytest.approx(m["compute/device_seconds"], rel=1e-9)
    assert sum(per_node.values()) / 86400 == pytest.approx(m["compute/device_days"], rel=1e-9)
    return per_node


@pytest.mark.slow
def test_driver_refuses_node_local_paths_on_a_multi_node_cluster(tmp_path, s3, multinode):
    # micro_config's own paths: checkpoints, eval sets and a sqlite file, all under tmp_path.
    config = micro_config(tmp_path, s3, s3.uri("corpus"), "mnlocal", n_rungs=1)
    t0 = time.time()
    out = subprocess.run([sys.executable, str(REPO / "experiments" / "ladder.py"), "--config", str(config)],
                         cwd=tmp_path, env={**os.environ, "RAY_ADDRESS": multinode.address},
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 1, out.stdout[-2000:] + out.stderr[-2000:]
    message = out.stderr
    assert "3 nodes" in message
    for key in ("cluster.storage_path", "eval.root", "tracking.uri"):
        assert key in message, message
    assert "s3://bucket/prefix" in message and "tracking.uri=http://" in message  # what to use instead
    assert "data.shards" not in message  # the S3 shards are fine
    # Refused before anything was written: no sqlite file, no eval sets, no checkpoints.
    assert not any((tmp_path / p).exists() for p in ("mlflow.db", "eval", "runs")), list(tmp_path.iterdir())
    print(f"refused in {time.time() - t0:.1f}s (driver start and cluster join included)")


@pytest.mark.slow
def test_spread_rung_runs_on_two_nodes_and_device_seconds_add_up(tmp_path, s3, multinode):
    config = _config(tmp_path, s3, multinode, "mnplace", samples=256)
    t0 = time.time()
    _finish(_driver(config, multinode, tmp_path / "driver.log"), tmp_path / "driver.log", timeout=600)
    (run,) = _rung_runs(multinode.mlflow_uri, "mnplace")
    assert run.info.status == "FINISHED" and run.data.metrics["compute/samples"] == 256
    placed = json.loads(run.data.tags[names.TAG_WORKER_NODES])
    assert set(placed) == set(multinode.workers), placed  # one worker on each worker node, none on the head
    assert sorted(rank for node in placed.values() for rank in node["ranks"]) == [0, 1]
    assert set(_assert_node_seconds_add_up(run)) == set(multinode.workers)
    print(f"placement rung done in {time.time() - t0:.0f}s: {placed}")


def _rank0_if(pid_dir: Path, wanted) -> dict | None:
    """Rank 0's last {pid, step} (FaultHook's pid file) when `wanted` holds for it."""
    try:
        r = json.loads((pid_dir / "rank0.json").read_text())
    except (OSError, ValueError):  # not written yet, or caught mid-write
        return None
    return r if wanted(r) else None


def _node_of(pid: int, workers: dict) -> str:
    """The worker node whose raylet started process `pid` (its ancestor)."""
    from ray._private import ray_constants

    raylets = {n.all_processes[ray_constants.PROCESS_TYPE_RAYLET][0].process.pid: node_id
               for node_id, n in workers.items()}
    while pid > 1:
        if pid in raylets:
            return raylets[pid]
        status = Path(f"/proc/{pid}/status").read_text()
        pid = int(next(line.split()[1] for line in status.splitlines() if line.startswith("PPid:")))
    raise AssertionError("rank 0 runs on no worker node")


def _wait(predicate, driver: subprocess.Popen, log: Path, what: str, timeout: float = 600):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        assert driver.poll() is None, f"driver ended while waiting for {what}: {log.read_text()[-3000:]}"
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


# Last in the file: it takes one of the module cluster's worker nodes away for good.
@pytest.mark.slow
def test_node_lost_mid_rung_resumes_from_s3_with_exact_budget_and_one_run(tmp_path, s3, multinode):
    pid_dir, log = tmp_path / "pids", tmp_path / "driver.log"
    pid_dir.mkdir()
    # 20 steps of 32, a checkpoint every 2 steps, slowed so the kill lands mid-rung.
    config = _config(tmp_path, s3, multinode, "mnloss", samples=640,
                     faults={"pid_dir": str(pid_dir), "sleep_per_step": 0.5})
    driver = _driver(config, multinode, log)
    try:
        # Past the checkpoints at steps 2, 4 and 6: Ray Train registers a checkpoint a moment after
        # the workers wrote it, and a node lost in between restarts from the one before.
        first = _wait(lambda: _rank0_if(pid_dir, lambda r: r["step"] >= 7), driver, log, "step 7")
        victim = _node_of(first["pid"], multinode.workers)  # rank 0's node
        killed_at = time.time()
        multinode.cluster.remove_node(multinode.workers[victim], allow_graceful=False)
        resumed = _wait(lambda: _rank0_if(pid_dir, lambda r: r["pid"] != first["pid"]), driver, log,
                        "a new rank 0 after the node loss")
        recovery = time.time() - killed_at
        print(f"node lost at step {first['step']}: training resumed at step {resumed['step']} "
              f"{recovery:.1f}s after the kill")
        out = _finish(driver, log, timeout=600)
    finally:
        if driver.poll() is None:
            driver.kill()
    assert resumed["step"] >= 2, resumed  # from an S3 checkpoint, not from scratch
    runs = _rung_runs(multinode.mlflow_uri, "mnloss")
    assert len(runs) == 1, [r.info.run_id for r in runs]  # one child run, continued
    (run,) = runs
    assert run.info.status == "FINISHED" and run.data.metrics["compute/samples"] == 640, out[-3000:]
    placed = json.loads(run.data.tags[names.TAG_WORKER_NODES])
    survivor = set(multinode.workers) - {victim}
    assert set(placed) == survivor, placed  # the restarted group ran on the node left
    per_node = _assert_node_seconds_add_up(run)
    assert victim in per_node and survivor <= set(per_node)  # the lost node's checkpointed time still counts


# ---- fast: no Ray, no training -------------------------------------------------------------


def _local_cfg(tmp_path: Path, *overrides: str):
    rung = "{name: r0, model: {embed_dim: 32, image_size: 16, patch_size: 4}, samples: 64, batch_size: 32}"
    return load_config(None, [f"ladder.rungs=[{rung}]", f"cluster.storage_path={tmp_path / 'runs'}",
                              f"eval.root={tmp_path / 'eval'}", f"tracking.uri=sqlite:///{tmp_path / 'm.db'}",
                              "data.shards=s3://bucket/shards/", *overrides])


def test_expect_nodes_refuses_node_local_paths_before_ray_starts(tmp_path, monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    cfg = _local_cfg(tmp_path, "cluster.expect_nodes=4")
    assert cluster_nodes(cfg) >= 1  # a local Ray still to start is one node; nothing was started
    with pytest.raises(StorageError) as err:
        check_shared_storage(cfg, cluster_nodes(cfg))
    message = str(err.value)
    assert "cluster.expect_nodes=4" in message
    assert all(key in message for key in ("cluster.storage_path", "eval.root", "tracking.uri"))
    check_shared_storage(_local_cfg(tmp_path), 1)  # one node: local paths are fine
    shared = _local_cfg(tmp_path, "cluster.expect_nodes=4", "cluster.storage_path=s3://b/runs",
                        "eval.root=s3://b/eval", "tracking.uri=http://mlflow.internal:5000")
    check_shared_storage(shared, 4)


def test_placement_strategy_and_expect_nodes_are_validated(tmp_path):
    assert _local_cfg(tmp_path, "cluster.placement_strategy=spread").cluster.placement_strategy == \
        PlacementStrategy.SPREAD
    assert _local_cfg(tmp_path).cluster.placement_strategy == PlacementStrategy.PACK
    with pytest.raises(ConfigError, match="cluster.placement_strategy.*PACK, SPREAD"):
        _local_cfg(tmp_path, "cluster.placement_strategy=DIAGONAL")
    with pytest.raises(ConfigError, match="cluster.expect_nodes"):
        _local_cfg(tmp_path, "cluster.expect_nodes=0")
