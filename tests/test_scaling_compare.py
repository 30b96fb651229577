"""`clipscale compare`: the compute multiplier between two ladders' laws, its interval, the
crossover, and the command over CSVs and MLflow ladders."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from clipscale.cli import main
from clipscale.scaling.compare import compare_fits, compute_to_reach
from clipscale.scaling.fits import fit_power, fit_saturating
from tests.test_scaling_mlflow import _empty_store

X = np.geomspace(1e12, 1e15, 8)


def law_b(x):
    return 2.0 * np.power(x, -0.1)


def law_a(x):
    """Ladder A needs twice B's compute for any error: the multiplier is 2."""
    return law_b(np.asarray(x) / 2.0)


def test_noiseless_laws_give_the_exact_multiplier_both_ways():
    a, b = fit_power(X, law_a(X)), fit_power(X, law_b(X))
    assert compare_fits(a, b).multiplier == pytest.approx(2.0, rel=1e-9)
    assert compare_fits(b, a).multiplier == pytest.approx(0.5, rel=1e-9)
    # At B's largest compute, and B's law's value there.
    c = compare_fits(a, b)
    assert c.at_compute == X.max() and c.target == pytest.approx(law_b(X.max()))
    assert c.crossovers == []  # parallel laws never meet


def test_the_interval_covers_the_true_multiplier_at_about_its_level():
    hits, estimates = 0, []
    for seed in range(20):
        rng = np.random.default_rng(seed)
        noisy = [f(X) * np.exp(rng.normal(0.0, 0.01, len(X))) for f in (law_a, law_b)]
        c = compare_fits(fit_power(X, noisy[0], n_boot=200, seed=2 * seed),
                         fit_power(X, noisy[1], n_boot=200, seed=2 * seed + 1), level=0.9)
        lo, hi = c.multiplier_ci
        hits += lo <= 2.0 <= hi
        estimates.append(c.multiplier)
        assert c.n_pairs == 200
    # 20 comparisons of 8-point ladders: a percentile bootstrap undercovers a little.
    assert hits >= 14, hits
    assert np.median(estimates) == pytest.approx(2.0, rel=0.1)


def test_crossover_is_where_the_laws_meet():
    x0 = 10 ** 13.5
    steep = law_b(X)
    shallow = 2.0 * x0 ** -0.1 / x0 ** -0.05 * np.power(X, -0.05)  # equal to law_b at x0
    c = compare_fits(fit_power(X, steep), fit_power(X, shallow))
    assert len(c.crossovers) == 1 and c.crossovers[0] == pytest.approx(x0, rel=1e-6)


def test_a_saturating_law_that_never_gets_there_needs_infinite_compute():
    params = {"a": 1.0, "b": 0.2, "E_inf": 0.3}
    assert compute_to_reach(params, 0.25) == np.inf and compute_to_reach(params, 0.3) == np.inf
    assert compute_to_reach(params, 0.3 + 1e-2) == pytest.approx(1e-2 ** (-1 / 0.2))
    y = 0.3 + np.power(X, -0.2) * 50
    sat = fit_saturating(X, y)
    assert compare_fits(sat, fit_power(X, np.full(len(X), 0.2) * np.power(X / 1e12, -0.01))).multiplier == np.inf


def _csvs(tmp_path):
    paths = []
    for name, f in (("procA", law_a), ("procB", law_b)):
        rng = np.random.default_rng(len(paths))
        rows = ["flops,error"] + [f"{x},{y}" for x, y in zip(X, f(X) * np.exp(rng.normal(0, 0.005, len(X))))]
        path = tmp_path / f"{name}.csv"
        path.write_text("\n".join(rows) + "\n")
        paths.append(path)
    return paths


def test_cli_from_csv_prints_json_and_logs_only_when_asked(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    a, b = _csvs(tmp_path)
    args = ["compare", "--csv", str(a), "--csv", str(b), "--x", "flops", "--y", "error", "--bootstrap", "200"]
    assert main([*args, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["a"] == "procA" and out["b"] == "procB"
    assert out["multiplier"] == pytest.approx(2.0, rel=0.15)
    lo, hi = out["multiplier_ci"]
    assert lo < out["multiplier"] < hi
    assert not (tmp_path / "mlflow.db").exists()  # a CSV comparison logs only with --log-to

    shutil.copy(_empty_store(), tmp_path / "store.db")
    uri = f"sqlite:///{tmp_path / 'store.db'}"
    assert main([*args, "--log-to", "comparisons", "--tracking-uri", uri, "--plot", str(tmp_path / "cmp")]) == 0
    text = capsys.readouterr().out
    assert "multiplier: procA needs" in text and (tmp_path / "cmp.png").exists()
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("comparisons").experiment_id])
    assert len(runs) == 1 and runs[0].data.metrics["compare/multiplier"] == pytest.approx(out["multiplier"])
    logged = {a.path for a in client.list_artifacts(runs[0].info.run_id, "compare")}
    assert {"compare/comparison.json", "compare/cmp.png", "compare/cmp.svg"} <= logged
    # The same pair compared again updates that run instead of adding one.
    assert main([*args, "--log-to", "comparisons", "--tracking-uri", uri]) == 0
    assert len(client.search_runs([runs[0].info.experiment_id])) == 1


def _ladder(client, name: str, value, metric: str = "zeroshot/shape_color/top1", xs=X, objective=None) -> None:
    """A finished ladder in MLflow: a parent run and one child per rung with `metric` = value(x)
    (and the rung's `train.objective` param when given)."""
    from mlflow.entities import Metric, Param

    exp = client.create_experiment(name)
    parent = client.create_run(exp, tags={"mlflow.runName": name})
    for i, x in enumerate(xs):
        run = client.create_run(exp, tags={"mlflow.parentRunId": parent.info.run_id, "clipscale.rung": f"r{i}",
                                           "clipscale.config_hash": f"{name}-{i}", "mlflow.runName": f"r{i}"})
        client.log_batch(run.info.run_id, metrics=[Metric("compute/flops", float(x), 0, 0),
                                                   Metric(metric, float(value(x)), 0, 0)],
                         params=[Param("train.objective", objective)] if objective else [])
        client.set_terminated(run.info.run_id)
    client.set_terminated(parent.info.run_id)


def test_cli_from_two_mlflow_ladders_logs_a_comparison_run(tmp_path, capsys):
    from mlflow.tracking import MlflowClient

    shutil.copy(_empty_store(), tmp_path / "mlflow.db")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    # Errors well above chance and below 1, so no rung is left out as near chance.
    _ladder(client, "clip", lambda x: 1 - 0.4 * law_a(x) / law_a(1e12))  # top-1: errors 0.4 and below
    _ladder(client, "siglip", lambda x: 1 - 0.4 * law_b(x) / law_a(1e12))
    assert main(["compare", "--experiment", "clip", "--experiment", "siglip", "--task", "shape_color",
                 "--tracking-uri", uri, "--bootstrap", "100", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["multiplier"] == pytest.approx(2.0, rel=1e-6) and out["y"] == "zeroshot/shape_color/error"
    exp = client.get_experiment_by_name("clipscale-compare")
    run = client.get_run(out["mlflow_run_id"])
    assert run.info.experiment_id == exp.experiment_id
    assert run.data.tags["clipscale.comparison"] == "clip vs siglip: zeroshot/shape_color/error"


def test_cli_refuses_one_ladder_and_names_a_missing_column(tmp_path, capsys):
    a, b = _csvs(tmp_path)
    assert main(["compare", "--csv", str(a), "--x", "flops", "--y", "error"]) == 2
    assert "exactly two ladders" in capsys.readouterr().err
    assert main(["compare", "--csv", str(a), "--csv", str(b), "--x", "flops", "--y", "loss"]) == 2
    assert "'loss'" in capsys.readouterr().err
    assert main(["compare", "--csv", str(a), "--csv", str(tmp_path / "none.csv"), "--x", "flops", "--y", "error"]) == 2
    assert "none.csv" in capsys.readouterr().err


def test_val_loss_across_objectives_is_refused_with_the_reason(tmp_path, capsys):
    from mlflow.tracking import MlflowClient

    shutil.copy(_empty_store(), tmp_path / "mlflow.db")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    for objective in ("clip", "siglip"):
        _ladder(client, objective, lambda x: law_b(x) * 10, metric="val/loss", xs=X[:4], objective=objective)
    args = ["compare", "--experiment", "clip", "--experiment", "siglip", "--tracking-uri", uri, "--bootstrap", "0"]
    assert main([*args, "--target", "val_loss"]) == 2
    err = capsys.readouterr().err
    assert "objectives" in err and "siglip" in err and "its own loss" in err and "--task" in err
