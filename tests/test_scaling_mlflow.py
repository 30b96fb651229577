"""load_runs against a real MLflow sqlite store laid out as the ladder writes it."""

import functools
import shutil
import tempfile
import warnings
from pathlib import Path

import numpy as np
import pytest

from clipscale.scaling import ScalingInputError, default_task, load_runs, task_column, tasks

RUNGS = ["r0", "r1", "r2", "r3", "r4"]


@functools.lru_cache(maxsize=1)
def _empty_store() -> Path:
    """A migrated, empty MLflow sqlite file, made once per test process.

    Creating the schema takes ~10 s on a busy 2-core box; copying the file takes ms.
    """
    from mlflow.tracking import MlflowClient

    path = Path(tempfile.mkdtemp(prefix="clipscale-mlflow-")) / "empty.db"
    MlflowClient(tracking_uri=f"sqlite:///{path}").search_experiments()
    return path


def make_ladder_store(root, experiment="tiny-ladder", seed=0, resumed=True):
    """A sqlite MLflow store: a parent run with one child per rung whose zero-shot error
    follows a noisy power law in compute, plus one FAILED child (rung r5).

    With resumed=True a second, later parent re-runs r4 with the same config hash and
    its own, different error: the loader must keep that later run. Returns (uri, truth)
    where truth maps rung -> the values a correct loader reports.
    """
    from mlflow.entities import Metric, Param
    from mlflow.tracking import MlflowClient

    shutil.copy(_empty_store(), Path(root) / "mlflow.db")
    uri = f"sqlite:///{root}/mlflow.db"
    client = MlflowClient(tracking_uri=uri)
    exp_id = client.create_experiment(experiment)
    rng = np.random.default_rng(seed)
    truth = {}

    def child(parent, rung, i, flops, error, status="FINISHED"):
        run = client.create_run(exp_id, tags={
            "mlflow.parentRunId": parent.info.run_id, "clipscale.rung": rung,
            "clipscale.config_hash": f"hash-{rung}", "mlflow.runName": rung,
        })
        rid = run.info.run_id
        # One batch per run: each separate call is a sqlite transaction, slow on a busy disk.
        metrics = [Metric("compute/flops", flops, 0, 0), Metric("compute/device_days", flops / 1e17, 0, 0),
                   Metric("zeroshot/shape_color/top1", 1 - error, 0, 0),
                   Metric("zeroshot/shape_color-shift/top1", (1 - error) * 0.8, 0, 0)]
        # Earlier evaluations at lower steps: only the last one is the rung's result.
        metrics += [Metric("zeroshot/shape_color/error", min(error * f, 0.99), 0, step)
                    for step, f in enumerate((3.0, 1.5, 1.0))]
        params = [Param("nonembedding_params", str(int(1e5 * 4**i))), Param("samples", str(int(2e4 * 2**i)))]
        client.log_batch(rid, metrics=metrics, params=params)
        client.set_terminated(rid, status=status)
        return rid

    parent = client.create_run(exp_id, tags={"mlflow.runName": "ladder"})
    for i, rung in enumerate(RUNGS):
        flops = 1e15 * 10 ** i
        error = 0.9 * (flops / 1e15) ** -0.12 * np.exp(rng.normal(0, 0.02))
        rid = child(parent, rung, i, flops, error)
        truth[rung] = {"flops": flops, "error": error, "run_id": rid}
    failed = child(parent, "r5", 5, 1e20, 0.5, status="FAILED")
    client.set_terminated(parent.info.run_id, status="FAILED")
    info = {"first_parent": parent.info.run_id, "failed_run": failed}
    if resumed:
        parent2 = client.create_run(exp_id, tags={"mlflow.runName": "ladder-resume"})
        err = truth["r4"]["error"] * 0.97
        rid = child(parent2, "r4", 4, truth["r4"]["flops"], err)
        info["superseded_run"] = truth["r4"]["run_id"]
        truth["r4"] = {"flops": truth["r4"]["flops"], "error": err, "run_id": rid}
        client.set_terminated(parent2.info.run_id)
        info["second_parent"] = parent2.info.run_id
    return uri, truth, info


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("mlflow")
    uri, truth, info = make_ladder_store(root)
    return uri, truth, info


def test_one_row_per_finished_rung_with_final_metrics(store):
    uri, truth, info = store
    with pytest.warns(UserWarning, match="r5"):
        df = load_runs("tiny-ladder", tracking_uri=uri)
    assert df["rung"].tolist() == RUNGS  # sorted by compute, FAILED r5 left out
    for c in ("rung", "flops", "device_days", "nonembedding_params", "samples", "zeroshot/shape_color/error"):
        assert c in df.columns
    for _, row in df.iterrows():
        t = truth[row["rung"]]
        assert row["flops"] == pytest.approx(t["flops"])
        assert row["zeroshot/shape_color/error"] == pytest.approx(t["error"])  # the last step's value
        assert row["run_id"] == t["run_id"]
    assert df["nonembedding_params"].dtype.kind in "fi"
    assert df.loc[df.rung == "r2", "samples"].item() == 2e4 * 4


def test_failed_and_superseded_runs_are_reported(store):
    uri, _, info = store
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        df = load_runs("tiny-ladder", tracking_uri=uri)
    excluded = {e["run_id"]: e for e in df.attrs["excluded"]}
    assert excluded[info["failed_run"]]["rung"] == "r5"
    assert "FAILED" in excluded[info["failed_run"]]["reason"]
    assert excluded[info["failed_run"]]["replaced"] is False
    # The resumed ladder re-ran r4 with the same config: the later run wins.
    assert "superseded" in excluded[info["superseded_run"]]["reason"]


def test_parent_run_restricts_to_its_children(store):
    uri, _, info = store
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        df = load_runs(parent_run_id=info["second_parent"], tracking_uri=uri)
    assert df["rung"].tolist() == ["r4"]
    with pytest.warns(UserWarning, match="r5"):
        df1 = load_runs(parent_run_id=info["first_parent"], tracking_uri=uri)
    assert len(df1) == 5  # r0..r4 of the first invocation, r5 failed


def test_tasks_and_default_task(store):
    uri, _, _ = store
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        df = load_runs("tiny-ladder", tracking_uri=uri)
    # The shift task logged only top1; its error is filled in as 1 - top1.
    assert set(tasks(df)) == {"shape_color", "shape_color-shift"}
    np.testing.assert_allclose(df["zeroshot/shape_color-shift/error"], 1 - df["zeroshot/shape_color-shift/top1"])
    assert default_task(df) == "shape_color"
    assert default_task(df.drop(columns=["zeroshot/shape_color/error"])) == "shape_color-shift"
    with pytest.raises(ScalingInputError, match="shape_color"):
        task_column(df, "cifar10")


def test_missing_experiment_names_what_exists(store):
    uri, _, _ = store
    with pytest.raises(ScalingInputError, match="no MLflow experiment 'nope'.*tiny-ladder"):
        load_runs("nope", tracking_uri=uri)


def test_missing_database_is_not_created(tmp_path):
    db = tmp_path / "absent.db"
    with pytest.raises(ScalingInputError, match="no MLflow database"):
        load_runs("x", tracking_uri=f"sqlite:///{db}")
    assert not db.exists()
