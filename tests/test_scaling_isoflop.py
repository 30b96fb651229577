"""Compute-optimal allocation: Chinchilla's Approach 2 (IsoFLOP parabolas) against Approach 3
(the joint fit), on IsoFLOP points generated from Hoffmann et al.'s published fit, and the
`clipscale optimal` command over a CSV and an MLflow ladder."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from clipscale.cli import main
from clipscale.scaling.isoflop import budgets, fit_isoflop, parabola_minimum
from tests.test_scaling_mlflow import _empty_store

# Hoffmann et al. (2022), Approach 3's published fit; C = 6 N D. The optimum then grows as
# N_opt ∝ C^(beta / (alpha + beta)) = C^0.452.
E, A, B, ALPHA, BETA = 1.69, 406.4, 410.7, 0.34, 0.28
A_TRUE = BETA / (ALPHA + BETA)


def isoflop_points(budget_list=(1e18, 1e19, 1e20, 1e21), sizes=7, noise=0.0, seed=0, jitter=0.0):
    """Per budget, `sizes` models from 1/8 to 8x the optimum, each trained on D = C / (6 N); jitter
    spreads each point's compute as rounding sample counts to whole batches does."""
    rng = np.random.default_rng(seed)
    g = (ALPHA * A / (BETA * B)) ** (1 / (ALPHA + BETA))
    rows = []
    for c in budget_list:
        for f in np.geomspace(1 / 8, 8, sizes):
            n = g * (c / 6) ** A_TRUE * f
            d = c / (6 * n) * (1 + rng.uniform(-jitter, jitter))
            loss = (E + A / n**ALPHA + B / d**BETA) * np.exp(rng.normal(0, noise))
            rows.append((n, d, loss, 6 * n * d))
    return np.array(rows).T


def test_both_approaches_recover_the_published_exponent():
    n, d, loss, _ = isoflop_points()
    fit = fit_isoflop(n, d, loss)
    assert fit.a == pytest.approx(A_TRUE, abs=0.005) and fit.a + fit.b == pytest.approx(1.0, abs=1e-9)
    assert len(fit.compute) == 4 and np.all(np.diff(fit.n_opt) > 0)


def test_budgets_group_points_whose_compute_agrees_within_ten_percent():
    assert list(budgets([1e18, 1.05e18, 0.97e18, 1e19, 1.04e19])) == [0, 0, 0, 1, 1]
    assert parabola_minimum([1, 2], [3.0, 2.0]) is None  # two sizes: no parabola
    assert parabola_minimum([1, 10, 100], [1.0, 2.0, 1.0]) is None  # a maximum, not a minimum
    assert parabola_minimum([1, 10, 100], [2.0, 1.0, 2.0]) == pytest.approx(10.0)


def test_noisy_profiles_give_intervals_that_cover_the_truth():
    covered = 0
    for seed in range(8):
        n, d, loss, c = isoflop_points(noise=0.003, seed=seed, jitter=0.04)
        fit = fit_isoflop(n, d, loss, c, n_boot=100, seed=seed)
        lo, hi = fit.ci["a"]
        covered += lo <= A_TRUE <= hi
        assert fit.n_boot == 100 - fit.n_boot_failed
    assert covered >= 6, covered


def test_cli_csv_json_nests_both_approaches_within_003_of_the_published_a(tmp_path, capsys):
    n, d, loss, _ = isoflop_points()
    path = tmp_path / "isoflop.csv"
    path.write_text("N,D,L\n" + "\n".join(f"{a},{b},{c}" for a, b, c in zip(n, d, loss)) + "\n")
    assert main(["optimal", "--csv", str(path), "--n", "N", "--d", "D", "--y", "L", "--bootstrap", "20", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    for approach in ("approach2", "approach3"):
        r = out[approach]
        assert abs(r["a"] - 0.452) < 0.03 and abs(r["b"] - 0.548) < 0.03, (approach, r["a"], r["b"])
        assert isinstance(r["a"], float) and len(r["a_ci"]) == 2 and len(r["b_ci"]) == 2
    assert main(["optimal", "--csv", str(path), "--n", "N", "--d", "D", "--y", "L", "--bootstrap", "0"]) == 0
    assert "Approach 2 (IsoFLOP parabolas)" in capsys.readouterr().out


def test_cli_names_missing_columns_and_too_few_budgets(tmp_path, capsys):
    n, d, loss, _ = isoflop_points(budget_list=(1e19,))
    path = tmp_path / "one.csv"
    path.write_text("N,D,L\n" + "\n".join(f"{a},{b},{c}" for a, b, c in zip(n, d, loss)) + "\n")
    assert main(["optimal", "--csv", str(path), "--n", "N", "--d", "tokens", "--y", "L"]) == 2
    assert "'tokens'" in capsys.readouterr().err
    assert main(["optimal", "--csv", str(path), "--n", "N", "--d", "D", "--y", "L", "--bootstrap", "0"]) == 1
    assert "at least 2 budgets" in capsys.readouterr().err


# The first design of isoflop_tiny.yaml (widths 16-48 at 6e10/2e11/6e11 FLOPs, batch 128), measured
# on a 2-core box (2026-12-02): (N, samples, val/loss, FLOPs). In every budget the smallest size was
# best, so no profile has a minimum: the no-minimum path, on real numbers.
TINY_ISOFLOP_RUN = [
    (8465, 19328, 4.4003, 5.9854e10), (17305, 9984, 4.8490, 5.9765e10), (29217, 6144, 4.8310, 6.0023e10),
    (54625, 3200, 5.1603, 6.0597e10), (17305, 33408, 3.2948, 1.9998e11), (29217, 20480, 3.4887, 2.0008e11),
    (54625, 10624, 4.7786, 2.0118e11), (120337, 5120, 4.7980, 2.0040e11), (29217, 61440, 3.0105, 6.0023e11),
    (54625, 31744, 3.2887, 6.0112e11), (120337, 15360, 3.3622, 6.0121e11), (211649, 8960, 3.8632, 5.9588e11),
]


def test_cli_answers_with_approach3_when_the_profiles_have_no_minima(tmp_path, capsys):
    """Profiles whose loss rises with N in nearly every budget (the real tiny run's) are a result,
    not a bad input: Approach 2 is reported unavailable with its reason and Approach 3 still answers."""
    path = tmp_path / "tiny.csv"
    path.write_text("N,D,L,C\n" + "\n".join(",".join(map(str, row)) for row in TINY_ISOFLOP_RUN) + "\n")
    argv = ["optimal", "--csv", str(path), "--n", "N", "--d", "D", "--y", "L", "--flops", "C", "--bootstrap", "0"]
    assert main([*argv, "--json"]) == 0
    captured = capsys.readouterr()
    out = json.loads(captured.out)
    assert out["approach2"]["a"] is None and "1 with a minimum" in out["approach2"]["error"]
    assert 0 < out["approach3"]["a"] < 1 and out["approach3"]["a"] + out["approach3"]["b"] == pytest.approx(1.0)
    assert "Approach 2 unavailable" in captured.err
    assert main(argv) == 0
    assert "unavailable" in capsys.readouterr().out


def test_cli_on_an_mlflow_isoflop_ladder_logs_the_plot_on_its_parent(tmp_path, capsys):
    from mlflow.entities import Metric, Param
    from mlflow.tracking import MlflowClient

    shutil.copy(_empty_store(), tmp_path / "mlflow.db")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp = client.create_experiment("isoflop")
    parent = client.create_run(exp, tags={"clipscale.ladder": "isoflop", "clipscale.ladder_hash": "h"})
    for i, (n, d, loss, c) in enumerate(zip(*isoflop_points(budget_list=(1e18, 1e19, 1e20)))):
        run = client.create_run(exp, tags={"mlflow.parentRunId": parent.info.run_id, "clipscale.rung": f"r{i}",
                                           "clipscale.config_hash": f"h{i}"})
        client.log_batch(run.info.run_id, metrics=[Metric("compute/flops", c, 0, 0), Metric("val/loss", loss, 0, 0)],
                         params=[Param("nonembedding_params", str(n)), Param("samples", str(d))])
        client.set_terminated(run.info.run_id)
    assert main(["optimal", "--experiment", "isoflop", "--tracking-uri", uri, "--bootstrap", "10", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["y"] == "val/loss" and out["mlflow_run_id"] == parent.info.run_id
    assert abs(out["approach2"]["a"] - A_TRUE) < 0.01
    metrics = client.get_run(parent.info.run_id).data.metrics
    assert metrics["scaling/optimal/approach2/a"] == pytest.approx(out["approach2"]["a"])
    assert "scaling/optimal/approach3/a" in metrics
    logged = {a.path for a in client.list_artifacts(parent.info.run_id, "scaling")}
    assert {"scaling/isoflop.png", "scaling/isoflop.svg", "scaling/optimal.json"} <= logged


def test_shipped_isoflop_config_has_three_budgets_of_four_sizes_at_equal_compute():
    import contextlib
    import io
    from pathlib import Path

    from clipscale import ladder_cli
    from clipscale.scaling.isoflop import BUDGET_TOLERANCE

    config = Path(__file__).resolve().parents[1] / "experiments" / "configs" / "isoflop_tiny.yaml"
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert ladder_cli.main(["--config", str(config), "--dry-run", "--json", "--throughput", "1000"]) == 0
    rungs = json.loads(out.getvalue())["rungs"]
    flops = np.array([r["train_flops"] for r in rungs], dtype=float)
    labels = budgets(flops)
    assert sorted(np.bincount(labels)) == [4, 4, 4]
    for b in range(3):
        within = flops[labels == b]
        assert within.max() / within.min() <= BUDGET_TOLERANCE
        sizes = {r["nonembedding_params"] for r, lab in zip(rungs, labels) if lab == b}
        assert len(sizes) == 4  # four different models share each budget
