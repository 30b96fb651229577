"""Learning-rate sweeps: the plan the dry run prints (shape, determinism, default rungs), the
fit of lr_opt(N) = c * N^-gamma on synthetic sweeps with a known answer, the fragment a ladder
reads, and one two-size micro sweep through Tune + Train on moto S3 (slow)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from clipscale.config import load_config
from clipscale.ladder.sweep import (DEFAULT_LR_RANGE, SweepPlan, SweepSettings, TrialRecord, default_rungs, draw_lrs,
                                    fragment, plan_sweep, write_fragment)
from clipscale.scaling.lr_rule import fit_lr_rule, size_optimum

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "experiments" / "configs" / "tiny.yaml"
# The keys `ladder.generate.lr_rule` reads, with their types.
FRAGMENT_KEYS = {"c": float, "gamma": float, "c_ci": list, "gamma_ci": list, "param_count": str,
                 "sweep_run_id": str, "date": str, "config": str}


# ---- the plan -------------------------------------------------------------------------------


def test_dry_run_json_is_one_object_with_every_trials_rung_lr_and_samples():
    out = subprocess.run([sys.executable, "experiments/sweep_lr.py", "--config", "experiments/configs/tiny.yaml",
                          "--dry-run", "--json"], cwd=REPO, capture_output=True, text=True, check=True)
    doc = json.loads(out.stdout)
    assert len(doc["trials"]) == 16  # the four smallest rungs x 4 trials
    for t in doc["trials"]:
        assert {"rung", "lr", "samples"} <= t.keys()
        assert DEFAULT_LR_RANGE[0] <= t["lr"] <= DEFAULT_LR_RANGE[1] and t["samples"] == 4096
    assert doc["rungs"] == ["w16-l1", "w24-l1", "w32-l1", "w32-l2"]
    assert doc["scheduler"]["name"] == "ASHAScheduler"
    assert doc["fragment"] == "experiments/configs/tiny.lr.yaml"


def test_planned_lrs_are_fixed_by_the_seed_one_per_slice_of_the_log_range():
    cfg = load_config(TINY)
    first, again = plan_sweep(cfg, SweepSettings()), plan_sweep(cfg, SweepSettings())
    other = plan_sweep(cfg, SweepSettings(seed=1))
    assert [t.lr for t in first.trials] == [t.lr for t in again.trials]
    assert [t.lr for t in first.trials] != [t.lr for t in other.trials]
    lo, hi = DEFAULT_LR_RANGE
    edges = np.geomspace(lo, hi, 5)
    for rung in first.rungs:
        lrs = [t.lr for t in first.of_rung(rung)]
        assert all(a <= x <= b * 1.0001 for x, a, b in zip(lrs, edges[:-1], edges[1:]))  # one per slice
    # A rung's LRs depend on (seed, rung), not on which other rungs are swept.
    alone = plan_sweep(cfg, SweepSettings(rungs=(2,)))
    assert [t.lr for t in alone.trials] == [t.lr for t in first.of_rung("w32-l1")]
    assert draw_lrs(0, 2, 4, DEFAULT_LR_RANGE) == [t.lr for t in alone.trials]


def test_default_rungs_are_the_four_smallest_by_nonembedding_parameters():
    cfg = load_config(TINY)
    cfg.ladder.rungs = list(reversed(cfg.ladder.rungs))  # the order in the file must not matter
    plan = plan_sweep(cfg, SweepSettings(trials=1))
    assert plan.rungs == ["w16-l1", "w24-l1", "w32-l1", "w32-l2"]
    sizes = [t.nonembedding_params for t in plan.trials]
    assert sizes == sorted(sizes)
    assert default_rungs({0: 30, 1: 10, 2: 20, 3: 10, 4: 50}) == (1, 3, 2, 0)
    assert default_rungs({0: 5, 1: 3}) == (1, 0)  # fewer rungs than four: all of them


def test_asha_waits_for_the_first_validation_point_and_stops_nothing_past_the_budget():
    plan = plan_sweep(load_config(TINY, ["eval.every_samples=1024"]), SweepSettings(rungs=(0,), samples=4000))
    asha = plan.asha["w16-l1"]
    assert asha.max_t == 3968 and asha.grace_period == 1024  # 31 whole batches of 128
    assert (asha.metric, asha.mode, asha.time_attr) == ("val/loss", "min", "samples_seen")


@pytest.mark.parametrize("argv, flag", [
    (["--rungs", "9"], "--rungs"), (["--samples", "100"], "--samples"), (["--trials", "0"], "--trials"),
    (["--rungs", "1,1"], "--rungs"), (["ladder.rungs.0.batch_size=-1"], "ladder.rungs.0.batch_size"),
])
def test_a_bad_flag_or_field_is_named_and_nothing_runs(argv, flag, capsys):
    from clipscale.sweep_cli import main

    assert main(["--config", str(TINY), "--dry-run", *argv]) == 2
    assert flag in capsys.readouterr().err


def test_argument_errors_name_the_flag(capsys):
    from clipscale.sweep_cli import main

    with pytest.raises(SystemExit):
        main(["--config", str(TINY), "--dry-run", "--lr-range", "1e-2,1e-3"])
    assert "--lr-range" in capsys.readouterr().err
    assert main(["--config", str(TINY), "--json"]) == 2
    assert "--dry-run" in capsys.readouterr().err


# ---- the fit ---------------------------------------------------------------------------------

C_TRUE, GAMMA_TRUE = 0.3, 0.3
SIZES = (1e4, 4e4, 1.6e5, 6.4e5)


def synthetic_sweep(noise=0.0, trials=7, seed=0, sizes=SIZES):
    """Per size, trials at LRs from 1/8x to 8x its optimum c N^-gamma; loss a parabola in log LR."""
    rng = np.random.default_rng(seed)
    rows = []
    for n in sizes:
        opt = C_TRUE * n**-GAMMA_TRUE
        for lr in opt * np.geomspace(1 / 8, 8, trials) * np.exp(rng.uniform(-0.2, 0.2, trials)):
            rows.append((n, lr, 3.0 - 0.1 * math.log(n) + 0.05 * math.log(lr / opt) ** 2 + rng.normal(0, noise)))
    return np.array(rows).T


def test_fit_recovers_a_known_rule_exactly_without_noise():
    n, lr, loss = synthetic_sweep()
    fit = fit_lr_rule(n, lr, loss, n_boot=200)
    assert fit.c == pytest.approx(C_TRUE, rel=1e-6) and fit.gamma == pytest.approx(GAMMA_TRUE, abs=1e-6)
    assert all(o.method == "parabola" for o in fit.optima) and len(fit.optima) == 4
    assert fit.predict([1e5])[0] == pytest.approx(C_TRUE * 1e5**-GAMMA_TRUE, rel=1e-6)


def test_interval_covers_the_truth_under_noise_and_is_reproducible():
    n, lr, loss = synthetic_sweep(noise=0.005, seed=3)  # a tenth of the loss step between neighbouring LRs
    fit = fit_lr_rule(n, lr, loss, n_boot=300, seed=0)
    lo, hi = fit.ci["gamma"]
    assert lo < GAMMA_TRUE < hi and hi - lo < 0.4  # 4 sizes: the line's t interval has 2 degrees of freedom
    assert fit.ci["c"][0] < C_TRUE < fit.ci["c"][1]
    assert fit.gamma == pytest.approx(GAMMA_TRUE, abs=0.06)
    assert fit_lr_rule(n, lr, loss, n_boot=300, seed=0).ci == fit.ci
    assert "widened" in fit.ci_method  # 4 sizes: the line's own scatter counts too


def test_two_sizes_get_an_interval_from_the_trials_alone():
    n, lr, loss = synthetic_sweep(noise=0.01, sizes=SIZES[:2], trials=4)
    fit = fit_lr_rule(n, lr, loss, n_boot=200)
    lo, hi = fit.ci["gamma"]
    assert math.isfinite(lo) and lo < hi and fit.ci_method == "bootstrap over trials within each size"


def test_each_sizes_optimum_falls_back_to_the_best_trial_when_no_minimum_is_bracketed():
    assert size_optimum([1e-3, 1e-2, 1e-1], [2.0, 1.0, 2.0]) == (pytest.approx(1e-2), "parabola")
    assert size_optimum([1e-3, 1e-2, 1e-1], [3.0, 2.0, 1.0]) == (1e-1, "best")  # still falling: no vertex
    assert size_optimum([1e-3, 1e-2], [2.0, 1.0]) == (1e-2, "best")  # two trials: no parabola
    # A diverged trial is worse than every finite one and never on the parabola.
    assert size_optimum([1e-3, 1e-2, 1e-1, 1.0], [2.0, 1.0, 2.0, math.inf])[1] == "parabola"
    with pytest.raises(ValueError, match="finite loss"):
        size_optimum([1e-3, 1e-2], [math.inf, math.nan])


def test_a_rule_needs_two_sizes_with_a_finite_loss():
    with pytest.raises(ValueError, match="2 or more sizes"):
        fit_lr_rule([1e4, 1e4, 4e4], [1e-3, 1e-2, 1e-3], [1.0, 2.0, math.inf], n_boot=0)


def test_the_best_trial_at_the_edge_of_the_swept_lrs_is_flagged():
    fit = fit_lr_rule([1e4] * 3 + [4e4] * 3, [1e-3, 1e-2, 1e-1] * 2, [3.0, 2.0, 1.0, 2.0, 1.0, 2.0], n_boot=0)
    assert [o.at_edge for o in fit.optima] == [True, False]


# ---- the fragment and the plot -----------------------------------------------------------------


def _records(plan: SweepPlan, n, lr, loss) -> list[TrialRecord]:
    return [TrialRecord(f"r{i}", f"rung{int(ni)}", int(ni), float(li), "completed", float(v), 128)
            for i, (ni, li, v) in enumerate(zip(n, lr, loss))]


def test_fragment_holds_exactly_what_the_ladder_reads(tmp_path):
    n, lr, loss = synthetic_sweep(noise=0.01)
    fit = fit_lr_rule(n, lr, loss, n_boot=100)
    plan = SweepPlan("tiny", SweepSettings(), [], {})
    path = write_fragment(tmp_path / "tiny.lr.yaml",
                          fragment(fit, plan, "abc123", "experiments/configs/tiny.yaml", _records(plan, n, lr, loss)))
    doc = yaml.safe_load(path.read_text())
    for key, tp in FRAGMENT_KEYS.items():
        assert isinstance(doc[key], tp), key
    assert doc["param_count"] == "nonembedding" and doc["sweep_run_id"] == "abc123"
    assert len(doc["c_ci"]) == 2 and len(doc["gamma_ci"]) == 2 and doc["c_ci"][0] < doc["c"] < doc["c_ci"][1]
    __import__("datetime").date.fromisoformat(doc["date"])
    assert [s["nonembedding_params"] for s in doc["per_size"]] == [int(s) for s in SIZES]
    assert path.read_text().startswith("# Learning-rate rule")


def test_plot_marks_optima_and_stopped_trials(tmp_path):
    from clipscale.scaling.plots import plot_lr_sweep

    n, lr, loss = synthetic_sweep(noise=0.01, trials=4)
    fit = fit_lr_rule(n, lr, loss, n_boot=50)
    paths = plot_lr_sweep([f"s{int(v)}" for v in n], n, lr, loss, np.arange(len(n)) % 3 == 0, fit,
                          tmp_path / "loss_vs_lr")
    assert [p.name for p in paths] == ["loss_vs_lr.png", "loss_vs_lr.svg"]
    assert paths[0].read_bytes()[:4] == b"\x89PNG"


def test_validation_measurements_are_reported_with_samples_seen():
    """The worker's half of the sweep: every validation point also goes to Ray Train, whose
    Tune callback hands it to ASHA (here a list stands in for ray.train.report)."""
    from clipscale.train.hooks import LoopState, Schedule, StepState, ValidationHook

    class Sink:
        def log(self, metrics, step):
            pass

    reports = []
    sched = Schedule("r", batch_size=32, total_steps=4, budget=128, base_lr=1e-3, warmup=0, min_lr=0.0, world=1,
                     rank=0)
    hook = ValidationHook(sched, 64, lambda: {"val/loss": 2.5}, Sink(), flops_per_sample=10, start_samples=0,
                          report=reports.append)
    state = StepState(LoopState())
    for _ in range(4):
        state.record(__import__("torch").tensor(1.0), 32, 0.0)
        hook.post_step(state)
    assert [(r["samples_seen"], r["val/loss"]) for r in reports] == [(64, 2.5), (128, 2.5)]


# ---- end to end (slow) ---------------------------------------------------------------------------

MICRO_MODEL = ("{{embed_dim: 32, image_size: 16, patch_size: 4, vision_width: {w}, vision_layers: 1, "
               "vision_head_width: 16, context_length: 16, text_width: {w}, text_heads: 2, text_layers: 1}}")


@pytest.mark.slow
def test_two_size_micro_sweep_through_tune_and_train_on_moto_s3(tmp_path, s3, s3_corpus, ray_local, capsys):
    """Two tiny rungs x 2 learning rates, 192 samples each, shards on moto S3: Tune runs each rung's
    grid under ASHA on val/loss, MLflow gets a parent and 4 children, the fragment is written."""
    from mlflow.tracking import MlflowClient

    from clipscale import names
    from clipscale.sweep_cli import main

    rungs = ", ".join(f"{{name: m{w}, samples: 192, batch_size: 32, model: {MICRO_MODEL.format(w=w)}}}" for w in (16, 32))
    config = tmp_path / "micro.yaml"
    config.write_text(yaml.safe_dump({
        "ladder": {"name": "micro", "rungs": yaml.safe_load(f"[{rungs}]")},
        "data": {"shards": s3.uri("corpus"), "val_shards": [s3_corpus[-1]], "storage": {"endpoint_url": s3.endpoint_url}},
        "train": {"log_every_steps": 2, "torch_threads": 1},
        "eval": {"tasks": [], "val_samples": 32, "val_batch_size": 16},
        "tracking": {"uri": f"sqlite:///{tmp_path / 'mlflow.db'}", "experiment": "micro"},
        "cluster": {"storage_path": str(tmp_path / "runs")},
    }))
    assert main(["--config", str(config), "--trials", "2", "--samples", "192", "--lr-range", "1e-3,3e-2"]) == 0
    out = capsys.readouterr().out
    assert out.count("clipscale: sweep m16 [") == 2 and "lr_opt(N) =" in out  # progress as trials end

    doc = yaml.safe_load((tmp_path / "micro.lr.yaml").read_text())
    for key, tp in FRAGMENT_KEYS.items():
        assert isinstance(doc[key], tp), key
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("micro-lr-sweep").experiment_id])
    parents = [r for r in runs if names.TAG_PARENT not in r.data.tags]
    assert len(parents) == 1 and parents[0].info.run_id == doc["sweep_run_id"] and len(runs) == 5
    parent = parents[0]
    assert parent.info.status == "FINISHED" and parent.data.tags[names.TAG_SWEEP_SCHEDULER] == "ASHAScheduler"
    assert parent.data.metrics[names.lr_rule("c")] == pytest.approx(doc["c"])
    assert parent.data.metrics[names.lr_rule("gamma")] == pytest.approx(doc["gamma"])
    assert "lr_sweep/loss_vs_lr.png" in {a.path for a in client.list_artifacts(parent.info.run_id, "lr_sweep")}
    children = [r for r in runs if r.data.tags.get(names.TAG_PARENT) == parent.info.run_id]
    assert sorted(c.data.params["rung"] for c in children) == ["m16", "m16", "m32", "m32"]
    for child in children:
        assert {"lr", "rung", "samples"} <= child.data.params.keys()
        assert child.data.tags[names.TAG_SWEEP_OUTCOME] in ("completed", "stopped_early")
        assert client.get_metric_history(child.info.run_id, "val/loss")  # its learning curve, stepped by samples
    assert any(c.data.tags[names.TAG_SWEEP_OUTCOME] == "completed" for c in children)

    # The same sweep again trains nothing: every trial has its outcome; it refits and rewrites the fragment.
    assert main(["--config", str(config), "--trials", "2", "--samples", "192", "--lr-range", "1e-3,3e-2"]) == 0
    assert "every trial already ended" in capsys.readouterr().out
    assert len(client.search_runs([parent.info.experiment_id])) == 5


@pytest.mark.slow  # sweep_tune imports Ray at module level; nothing starts
def test_a_sweep_trial_hands_fit_rung_a_mixtures_sources(tmp_path, monkeypatch):
    """A sweep's trial gives fit_rung the corpus as a ladder's trial does, each source of a mixture
    with its weight. An earlier copy of the corpus's fields dropped `sources`, and a sweep of a
    `data.sources` config trained on the unweighted union of the shards."""
    from clipscale.config import to_dict
    from clipscale.data.pipeline import Source
    from clipscale.ladder import sweep_tune
    from clipscale.ladder.provision import Corpus
    from clipscale.tracking import Tracker
    from clipscale.train import trainer
    from clipscale.train.job import WorkerResult

    cfg = load_config(REPO / "experiments" / "configs" / "tiny.yaml")
    corpus = Corpus(train=("s3://b/a/0.tar", "s3://b/b/0.tar"), val=("s3://b/a/val.tar",),
                    sources=(Source("a", ("s3://b/a/0.tar",), 3.0), Source("b", ("s3://b/b/0.tar",), 1.0)),
                    val_sources=(Source("a", ("s3://b/a/val.tar",), 3.0),))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = Tracker.open(uri, "sweep-mixture")
    run_id = tracker.run_by_tag("t", "trial", "trial")
    seen = {}

    def fit_rung(cfg_, rung, shards, **kw):  # stands in for the Ray Train fit: the wiring is what is tested
        seen.update(shards=shards, **kw)
        tracker.log_metrics(run_id, {"val/loss": 4.25}, step=rung.samples)
        return WorkerResult(samples_seen=rung.samples)

    monkeypatch.setattr(trainer, "fit_rung", fit_rung)
    monkeypatch.setattr(sweep_tune, "ValidationReport", object)  # Tune's callback needs a Tune session
    rung = cfg.ladder.rungs[0]
    ref = sweep_tune.TrialRef("w16-l1-t0", to_dict(rung), run_id, "train-name", rung.samples)
    ctx = sweep_tune.SweepContext(to_dict(cfg), corpus, uri, "sweep-mixture", {rung.lr: ref})
    out = sweep_tune.sweep_trial({"lr": rung.lr}, ctx)
    assert out["outcome"] == "completed" and out["val/loss"] == 4.25
    assert seen["sources"] == corpus.sources and seen["val_sources"] == corpus.val_sources
    assert seen["shards"] == corpus.train and seen["val_shards"] == corpus.val


@pytest.mark.slow  # sweep_tune imports Ray at module level; nothing starts
@pytest.mark.parametrize("complete_first", [False, True])
def test_a_trial_asha_stops_is_stopped_early_whichever_side_ends_first(tmp_path, monkeypatch, complete_first):
    """When ASHA stops a trial, Tune aborts its Ray Train run and fit_rung raises inside the trial
    (TrainController died, exit INTENDED). The trial used to record that as "failed", and whichever
    of it and the driver's on_trial_complete ran last won: the slow tier once saw a stopped trial
    tagged failed. The outcome is now the driver's to record, so both orders give stopped_early."""
    from types import SimpleNamespace

    from clipscale import names
    from clipscale.config import to_dict
    from clipscale.ladder import sweep_tune
    from clipscale.ladder.provision import Corpus
    from clipscale.tracking import Tracker
    from clipscale.train import trainer

    cfg = load_config(REPO / "experiments" / "configs" / "tiny.yaml")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = Tracker.open(uri, "sweep-stop")
    run_id = tracker.run_by_tag("t", "trial", "trial")
    rung = cfg.ladder.rungs[0]
    ref = sweep_tune.TrialRef("w16-l1-t0", to_dict(rung), run_id, "train-name", rung.samples)
    ctx = sweep_tune.SweepContext(to_dict(cfg), Corpus(train=("s3://b/0.tar",), val=("s3://b/val.tar",)),
                                  uri, "sweep-stop", {rung.lr: ref})
    progress = sweep_tune.SweepProgress(rung.name, {rung.lr: ref}, uri, "sweep-stop")
    trial = SimpleNamespace(config={"lr": rung.lr},
                            last_result={names.VAL_LOSS: 4.5, names.SAMPLES_SEEN: 2048})

    def aborted(*a, **kw):
        tracker.log_metrics(run_id, {names.VAL_LOSS: 4.5}, step=2048)
        if complete_first:
            progress.on_trial_complete(0, [], trial)
        raise RuntimeError("The actor died unexpectedly before finishing this task. Worker exit type: INTENDED")

    monkeypatch.setattr(trainer, "fit_rung", aborted)
    monkeypatch.setattr(sweep_tune, "ValidationReport", object)  # Tune's callback needs a Tune session
    with pytest.raises(RuntimeError, match="actor died"):
        sweep_tune.sweep_trial({"lr": rung.lr}, ctx)
    if not complete_first:
        assert tracker.status(run_id) == "RUNNING"  # nothing recorded by the aborted trial itself
        progress.on_trial_complete(0, [], trial)
    assert tracker.tags(run_id)[names.TAG_SWEEP_OUTCOME] == "stopped_early"
    assert tracker.status(run_id) == "FINISHED"


@pytest.mark.slow  # sweep_tune imports Ray at module level; nothing starts
def test_a_trial_that_fails_is_recorded_by_the_driver_with_the_trials_own_error(tmp_path):
    from types import SimpleNamespace

    from clipscale import names
    from clipscale.ladder import sweep_tune
    from clipscale.tracking import Tracker

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = Tracker.open(uri, "sweep-fail")
    run_id = tracker.run_by_tag("t", "trial", "trial")
    tracker.set_status(run_id, "RUNNING")
    ref = sweep_tune.TrialRef("m16-t0", {}, run_id, "train-name", 192)
    progress = sweep_tune.SweepProgress("m16", {1e-3: ref}, uri, "sweep-fail")
    wrapper = RuntimeError("Traceback (most recent call last): ... ray.exceptions.RayTaskError")
    wrapper.cause = ValueError("data.shards: no usable sample")
    progress.on_trial_error(0, [], SimpleNamespace(config={"lr": 1e-3}, get_error=lambda: wrapper))
    assert tracker.tags(run_id)[names.TAG_SWEEP_OUTCOME] == "failed"
    assert tracker.status(run_id) == "FAILED"
    assert tracker.tags(run_id)[names.TAG_STATUS_REASON] == "ValueError: data.shards: no usable sample"
