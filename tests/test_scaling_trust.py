"""Laws a researcher can trust (issue 15, the fit side): replicate seeds, the val-loss law,
two-step error prediction, near-chance rungs and prediction intervals.

A real MLflow sqlite store laid out as the ladder writes it (parent run, child runs tagged
with rung and seed, step histories of val/loss, train/flops and in-training zero-shot),
from a known truth: val loss L = 2 + 3 (C/C0)^-0.3 and error a sigmoid of L.
"""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest

from clipscale import scaling
from clipscale.scaling.fits import fit_power, holdout
from tests.test_scaling_mlflow import _empty_store

C0 = 1e12
FLOPS = C0 * np.geomspace(1, 300, 8)
RUNGS = [f"r{i}" for i in range(8)]
SEEDS = {"r0": 3, "r1": 3, "r2": 3}  # the other rungs are trained once
TASK, K, N_EVAL = "shape_color", 16, 500
CHANCE_ERR = 1 - 1 / K
E_TRUE, A_TRUE, B_TRUE = 2.0, 3.0, 0.3
SIG = dict(floor=0.2, ceiling=CHANCE_ERR, k=3.0, l0=3.5)


def loss_law(c):
    return E_TRUE + A_TRUE * (np.asarray(c) / C0) ** -B_TRUE


def error_of_loss(loss):
    return SIG["floor"] + (SIG["ceiling"] - SIG["floor"]) / (1 + np.exp(-SIG["k"] * (np.asarray(loss) - SIG["l0"])))


def make_seed_store(root, experiment="trust", noise=0.004, seed=0):
    """(uri, parent_id, truth): truth[rung][seed] = (val loss, error) of each FINISHED run."""
    from mlflow.entities import Metric, Param
    from mlflow.tracking import MlflowClient

    shutil.copy(_empty_store(), Path(root) / "mlflow.db")
    uri = f"sqlite:///{root}/mlflow.db"
    client = MlflowClient(tracking_uri=uri)
    exp_id = client.create_experiment(experiment)
    rng = np.random.default_rng(seed)
    parent = client.create_run(exp_id, tags={"mlflow.runName": "ladder", "clipscale.ladder_hash": "h"}).info.run_id
    truth: dict = {}
    for i, (rung, c) in enumerate(zip(RUNGS, FLOPS)):
        for s in range(SEEDS.get(rung, 1)):
            loss = loss_law(c) * np.exp(rng.normal(0, noise))
            err = float(np.clip(error_of_loss(loss) + rng.normal(0, 0.004), 0, 1))
            # r7 is an old run from before replicates: no seed tag, which means seed 0.
            tags = {"mlflow.parentRunId": parent, "clipscale.rung": rung, "clipscale.config_hash": f"{rung}-{s}"}
            if rung != "r7":
                tags["clipscale.seed"] = str(s)
            rid = client.create_run(exp_id, tags=tags).info.run_id
            steps = [int(2e4 * 2**i * j / 5) for j in range(1, 6)]
            # The learning curve: loss falls towards the rung's final value as samples grow.
            curve = [loss * (1 + 0.3 * (5 / j - 1) / 4) for j in range(1, 6)]
            metrics = [Metric("compute/flops", c, 0, 0), Metric("compute/device_days", c / 1e17, 0, 0),
                       Metric(f"zeroshot/{TASK}/top1", 1 - err, 0, 0), Metric(f"zeroshot/{TASK}/error", err, 0, 0),
                       Metric(f"zeroshot/{TASK}/chance", 1 / K, 0, 0)]
            for st, lv, j in zip(steps, curve, range(1, 6)):
                metrics += [Metric("val/loss", lv, 0, st), Metric("train/flops", c * j / 5, 0, st),
                            Metric(f"val/zeroshot/{TASK}/top1", 1 - float(error_of_loss(lv)), 0, st)]
            client.log_batch(rid, metrics=metrics,
                             params=[Param("nonembedding_params", str(int(1e5 * 2**i))),
                                     Param("samples", str(int(2e4 * 2**i)))])
            client.set_terminated(rid, status="FINISHED")
            truth.setdefault(rung, {})[str(s)] = (loss, err, rid)
    failed = client.create_run(exp_id, tags={"mlflow.parentRunId": parent, "clipscale.rung": "r8",
                                             "clipscale.seed": "0", "clipscale.failure_reason": "diverged"})
    client.set_terminated(failed.info.run_id, status="FAILED")
    return uri, parent, truth


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return make_seed_store(tmp_path_factory.mktemp("trust"))


def _load(uri, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return scaling.load_runs("trust", tracking_uri=uri, **kw)


# ------------------------------------------------------------------ loading and weighting


def test_runs_are_grouped_by_rung_over_seeds(store):
    uri, _, truth = store
    df = _load(uri)
    assert df["rung"].tolist() == RUNGS  # the FAILED r8 is left out
    assert df["n_seeds"].tolist() == [3, 3, 3, 1, 1, 1, 1, 1]
    for _, row in df.iterrows():
        losses = np.array([v[0] for v in truth[row["rung"]].values()])
        assert row["val/loss"] == pytest.approx(losses.mean())  # the last logged value, averaged
        if len(losses) > 1:
            assert row["val/loss:sd"] == pytest.approx(losses.std(ddof=1))
            assert row["val/loss:se"] == pytest.approx(losses.std(ddof=1) / np.sqrt(len(losses)))
            assert row["seeds"] == "0,1,2" and row["run_id"].count(",") == 2
        else:
            assert np.isnan(row["val/loss:sd"]) and row["seeds"] == "0"  # r7 had no tag: seed 0
    per_seed = _load(uri, per_seed=True)
    assert len(per_seed) == 3 * 3 + 5 and set(per_seed["seed"]) == {"0", "1", "2"}
    assert any(e["rung"] == "r8" and e["status"] == "FAILED" for e in df.attrs["excluded"])


def test_single_seed_rungs_take_the_pooled_log_variance(store):
    df = _load(store[0])
    noise = scaling.log_noise(df["val/loss"], df["val/loss:sd"], df["n_seeds"])
    cv2 = (df["val/loss:sd"] / df["val/loss"]).to_numpy()[:3] ** 2
    pooled = np.sqrt(np.mean(cv2))  # three rungs of 3 seeds: equal degrees of freedom
    assert noise.pooled_sd_log == pytest.approx(pooled)
    np.testing.assert_allclose(noise.se_log[3:], pooled)  # one seed: the pooled spread itself
    np.testing.assert_allclose(noise.se_log[:3], noise.sd_log[:3] / np.sqrt(3))
    # No replicated rung: no weights, the fits stay as for a single-seed ladder.
    assert scaling.log_noise([1.0, 2.0], [np.nan, np.nan], [1, 1]) is None


def test_weighted_fit_trusts_the_precise_rungs():
    x = FLOPS[:5]
    y = 0.9 * (x / C0) ** -0.1
    y_bad = y.copy()
    y_bad[0] *= 1.3  # a noisy rung far off the law
    sigma = np.array([1.0, 0.01, 0.01, 0.01, 0.01])
    assert fit_power(x, y_bad, sigma=sigma).params["b"] == pytest.approx(0.1, abs=1e-3)
    assert abs(fit_power(x, y_bad).params["b"] - 0.1) > 0.02


# ------------------------------------------------------------------ the loss law


def test_saturating_loss_law_recovers_known_parameters():
    rng = np.random.default_rng(3)
    y = loss_law(FLOPS) * np.exp(rng.normal(0, 0.002, len(FLOPS)))
    law = scaling.fit_loss_law(FLOPS, y)
    assert law.chosen == "saturating", law.reason
    assert law.E == pytest.approx(E_TRUE, abs=0.15)
    assert law.fit.params["b"] == pytest.approx(B_TRUE, abs=0.06)
    assert law.fit.r2 > 0.999 and law.power.r2 < law.fit.r2


def test_plain_power_data_choose_the_power_law():
    rng = np.random.default_rng(4)
    y = 5.0 * (FLOPS / C0) ** -0.08 * np.exp(rng.normal(0, 0.01, len(FLOPS)))
    law = scaling.fit_loss_law(FLOPS, y)
    assert law.chosen == "power", law.reason
    assert law.E == 0.0 and law.fit.params["b"] == pytest.approx(0.08, abs=0.02)


# ------------------------------------------------------------------ two steps, chance


def test_two_step_sigmoid_recovers_the_error_of_loss():
    rng = np.random.default_rng(5)
    loss = rng.uniform(2.2, 5.0, 60)
    err = error_of_loss(loss) + rng.normal(0, 0.005, 60)
    sig = scaling.fit_error_vs_loss(loss, err, CHANCE_ERR)
    assert sig.floor == pytest.approx(SIG["floor"], abs=0.03)
    assert sig.k == pytest.approx(SIG["k"], rel=0.15) and sig.L0 == pytest.approx(SIG["l0"], abs=0.1)
    assert abs(sig.predict(2.3) - error_of_loss(2.3)) < 0.01


def test_a_ladder_far_from_its_floor_extrapolates_with_the_given_floor():
    """The smaller rungs of a ladder sit at errors 0.78-0.95 of a task a perfect model solves
    (floor 0). Fitted, the floor settles near their lowest error and the curve stops falling
    where the data stop; given (scaling.error_floor = 0), the sigmoid reaches the rung below."""
    rng = np.random.default_rng(7)
    truth = dict(floor=0.0, ceiling=CHANCE_ERR, k=1.4, l0=1.95)

    def err(loss):
        return truth["floor"] + (truth["ceiling"] - truth["floor"]) / (1 + np.exp(-truth["k"] * (np.asarray(loss) - truth["l0"])))

    loss = rng.uniform(3.0, 5.5, 60)
    observed = err(loss) + rng.normal(0, 0.01, 60)
    given = scaling.fit_error_vs_loss(loss, observed, CHANCE_ERR, floor_error=0.0)
    fitted = scaling.fit_error_vs_loss(loss, observed, CHANCE_ERR)
    assert given.floor_fixed and given.floor == 0.0 and not fitted.floor_fixed
    target = err(2.6)  # the held-out rung, below every observed loss
    assert abs(given.predict(2.6) - target) < 0.03
    assert abs(fitted.predict(2.6) - target) > 2 * abs(given.predict(2.6) - target)


def test_the_floor_must_lie_below_chance():
    with pytest.raises(ValueError, match="floor"):
        scaling.fit_error_vs_loss(np.linspace(3, 5, 20), np.full(20, 0.9), 0.5, floor_error=0.6)


def test_near_chance_rungs_are_flagged_and_left_out(store):
    df = _load(store[0])
    check = scaling.near_chance(df, TASK, n_eval=N_EVAL)
    assert check.rungs == ["r0"]  # error 0.93 of chance 0.9375: within 2 binomial SEs
    fit = scaling.fit_task_error(df, TASK, holdout_k=1, n_eval=N_EVAL)
    assert "r0" not in fit.labels and fit.skipped == ["r0 (near chance)"]


# ------------------------------------------------------------------ intervals


def _coverage(make_y, n, form="power", rng=None, **kw):
    hits = 0
    for _ in range(n):
        y, sigma = make_y(rng)
        hits += holdout(FLOPS, y, 1, form, sigma=sigma, **kw).points[0].covered
    return hits / n


def test_prediction_interval_covers_held_out_rungs_about_95_percent():
    rng = np.random.default_rng(6)

    def plain(r):  # one seed per rung: the residual scatter is all the interval has
        return 0.9 * (FLOPS / C0) ** -0.1 * np.exp(r.normal(0, 0.03, 8)), None

    n_seeds = np.array([3, 3, 3, 1, 1, 1, 1, 3])

    def seeded(law):  # three replicated rungs: means weighted by their standard errors
        def make(r):
            runs = [law(c) * np.exp(r.normal(0, 0.01, k)) for c, k in zip(FLOPS, n_seeds)]
            m = np.array([v.mean() for v in runs])
            sd = np.array([v.std(ddof=1) if len(v) > 1 else np.nan for v in runs])
            return m, scaling.log_noise(m, sd, n_seeds).se_log
        return make

    assert 0.90 <= _coverage(plain, 300, rng=rng) <= 0.99
    assert 0.90 <= _coverage(seeded(lambda c: 0.9 * (c / C0) ** -0.1), 200, rng=rng) <= 0.99
    # The saturating law, linearised: fewer ladders (each fit is a multi-start optimisation).
    assert 0.85 <= _coverage(seeded(loss_law), 40, "saturating", rng=rng, n_starts=4) <= 1.0


def test_interval_holds_residual_scatter_not_only_parameter_uncertainty():
    rng = np.random.default_rng(7)
    y = 0.9 * (FLOPS / C0) ** -0.1 * np.exp(rng.normal(0, 0.05, 8))
    fit = fit_power(FLOPS[:7], y[:7], n_boot=300)
    boot_lo, boot_hi = fit.predict_interval(FLOPS[7:])
    _, lo, hi = scaling.prediction_interval(fit, FLOPS[7:])
    assert (hi - lo)[0] > 1.5 * (boot_hi - boot_lo)[0]


# ------------------------------------------------------------------ the live report


def test_refresh_scaling_logs_laws_intervals_two_step_and_plots(store, tmp_path):
    from mlflow.tracking import MlflowClient

    from clipscale.report import refresh_scaling
    from clipscale.tracking import Tracker

    uri, parent, _ = store
    tracker = Tracker.open(uri, "trust")
    # The call the ladder makes today (positional), plus the new keywords.
    # This store's task has an error floor (0.2) that its rungs reach: fitted, not the default 0.
    out = refresh_scaling(tracker, parent, TASK, "flops", 1, 20, target="val_loss", n_eval=N_EVAL, error_floor=None)
    run = MlflowClient(uri).get_run(parent)
    m, tags = run.data.metrics, run.data.tags
    for k in ("a", "b", "E", "r2", "holdout_actual", "holdout_pred", "holdout_rel_error", "holdout_pi_lo",
              "holdout_pi_hi"):
        assert f"scaling/val_loss/{k}" in m, k
    assert tags["clipscale.scaling.val_loss.law"] == "saturating"
    assert m["scaling/val_loss/E"] == pytest.approx(E_TRUE, abs=0.3)
    assert m["scaling/val_loss/r2"] > 0.97 and m["scaling/val_loss/holdout_rel_error"] < 0.03
    assert m["scaling/val_loss/holdout_pi_lo"] <= m["scaling/val_loss/holdout_actual"] <= m["scaling/val_loss/holdout_pi_hi"]
    assert {f"scaling/val_loss/seed_sd/r{i}" for i in range(3)} <= m.keys()
    assert "scaling/val_loss/seed_sd/r3" not in m  # one seed: no spread to report
    assert {f"scaling/{TASK}/seed_sd/r{i}" for i in range(3)} <= m.keys()
    assert tags[f"clipscale.scaling.near_chance.{TASK}"] == "r0"
    assert m[f"scaling/{TASK}/n_points"] == 7 and f"scaling/{TASK}/b" in m  # the zero-shot family as before
    assert m[f"scaling/{TASK}/twostep_abs_error"] < 0.05
    arts = {a.path for a in MlflowClient(uri).list_artifacts(parent, "scaling")}
    assert {"scaling/val_loss_vs_flops.png", "scaling/val_loss_curves.png", f"scaling/{TASK}_vs_flops.png"} <= arts
    assert out["headline"] == "val_loss" and out["holdout"][0]["rung"] == "r7"
    summary = out["summary"]
    assert summary.startswith("scaling: val loss") and "95% PI" in summary and "two-step" in summary
    assert "error floor 0.2" in summary and "(fitted)" in summary
    assert "near chance" in summary and "r0" in summary
    # scaling.target: zeroshot puts the task's law on top (the same fits, so no second refresh).
    from clipscale.report import _result, summary_line

    df = _load(uri)
    loss, err = scaling.fit_val_loss(df), scaling.fit_task_error(df, TASK, n_eval=N_EVAL)
    again = {**out, **_result("zeroshot", TASK, loss, err, None, ["r0"])}
    assert again["headline"] == TASK and again["holdout"][0]["actual"] == pytest.approx(df[f"zeroshot/{TASK}/error"].iloc[-1])
    assert summary_line(again).startswith(f"scaling: {TASK} error")


def test_curves_plot_draws_every_run_and_the_frontier(store, tmp_path):
    df = _load(store[0])
    h = scaling.load_histories(df, ["val/loss", "train/flops"], store[0])
    assert len(h) == 5 * (3 * 3 + 5) and h.groupby("run_id").size().min() == 5
    front = scaling.fit_frontier(h["train/flops"], h["val/loss"])
    paths = scaling.plot_loss_curves(h, tmp_path / "curves", frontier=front)
    assert all(p.stat().st_size > 5000 for p in paths)


@pytest.mark.slow  # starts a Jupyter kernel
def test_notebook_reports_the_loss_law_seeds_and_two_step(store, tmp_path, monkeypatch):
    import json
    import sys

    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    spec = tmp_path / "jupyter" / "kernels" / "python3"
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "clipscale venv", "language": "python"}))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    for var, value in {"MLFLOW_TRACKING_URI": store[0], "CLIPSCALE_EXPERIMENT": "trust", "CLIPSCALE_TASK": TASK,
                       "CLIPSCALE_PLOT_DIR": str(tmp_path / "plots"), "CLIPSCALE_BOOTSTRAP": "20",
                       "CLIPSCALE_ERROR_FLOOR": "fit"}.items():  # this store's task has a floor (0.2) its rungs reach
        monkeypatch.setenv(var, value)
    nb = nbformat.read(Path(__file__).resolve().parents[1] / "analysis" / "scaling_laws.ipynb", as_version=4)
    nbclient.NotebookClient(nb, kernel_name="python3", timeout=180,
                            resources={"metadata": {"path": str(tmp_path)}}).execute()
    text = "\n".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    result = json.loads(next(ln for ln in text.splitlines() if ln.startswith("RESULT "))[len("RESULT "):])
    assert result["val_loss"]["law"] == "saturating" and result["val_loss"]["r2"] > 0.97
    assert result["near_chance"] == ["r0"] and result["twostep_abs_error"] < 0.05
    assert (tmp_path / "plots" / "trust_val_loss_curves.png").stat().st_size > 5000


def test_reference_models_are_drawn_and_compared_with_the_law_but_never_fitted(tmp_path, capsys):
    from mlflow.tracking import MlflowClient

    from clipscale.evaluate_cli import log_reference
    from clipscale.report import refresh_scaling
    from clipscale.tracking import Tracker

    uri, parent, _ = make_seed_store(tmp_path)
    c_ref = FLOPS[-1] * 4
    scores = {f"zeroshot/{TASK}/top1": 0.9, f"zeroshot/{TASK}/error": 0.1}
    log_reference("trust", "local-dir:/models/big", None, scores, c_ref, tracking_uri=uri)
    log_reference("trust", "local-dir:/models/unstated", None, scores, None, tracking_uri=uri)  # no compute: not placed

    out = refresh_scaling(Tracker.open(uri, "trust"), parent, TASK, "flops", 1, 0, target="val_loss", n_eval=N_EVAL)
    assert [r["model"] for r in out["references"]] == ["local-dir:/models/big"]
    ref = out["references"][0]
    err = scaling.fit_task_error(_load(uri), TASK, n_eval=N_EVAL)
    assert ref["x"] == pytest.approx(c_ref) and ref["actual"] == pytest.approx(0.1)
    assert ref["predicted"] == pytest.approx(float(err.law.predict(np.array([c_ref]))[0]), rel=1e-6)
    assert MlflowClient(uri).get_run(parent).data.metrics[f"scaling/{TASK}/n_points"] == 7  # as without it
    assert f"reference local-dir:/models/big (not fitted): {TASK} error 0.100" in out["summary"]
    assert "unstated" not in out["summary"]

    # `clipscale fit` reads them the same way, and draws them.
    from tests.test_scaling_cli import run

    code, stdout, _ = run(["fit", "--experiment", "trust", "--tracking-uri", uri, "--task", TASK, "--json",
                           "--plot", str(tmp_path / "fit")], capsys)
    doc = json.loads(stdout)
    assert code == 0 and [r["model"] for r in doc["references"]] == ["local-dir:/models/big"]
    assert doc["references"][0]["actual"] == pytest.approx(0.1) and (tmp_path / "fit.png").is_file()
