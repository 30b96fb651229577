"""`run_sweep`: provision, find or create the sweep's runs, tune each rung, fit the rule, write it.

The steps are `sweep.py`'s docstring; the Ray side is `sweep_tune.py`.
"""

from __future__ import annotations

import json
import math
import tempfile
from pathlib import Path

from clipscale import names
from clipscale.config import ExperimentConfig, to_dict
from clipscale.ladder.provision import (Corpus, check_corpus_size, check_shared_storage, cluster_nodes, ensure_data,
                                        init_ray, max_concurrent_trials, oversubscription_warning, resolve_paths)
from clipscale.ladder.sweep import (SweepError, SweepPlan, SweepResult, SweepSettings, TrialRecord,
                                    default_fragment_path, experiment_name, fragment, plan_sweep, sweep_id,
                                    write_fragment)
from clipscale.tracking import Tracker


def run_sweep(cfg: ExperimentConfig, settings: SweepSettings, config_path: str, out: str | None = None) -> SweepResult:
    """The whole sweep for one config; see `clipscale.ladder.sweep`."""
    from clipscale.lock import LadderLock
    from clipscale.tracking_auth import check_tracking

    cfg = resolve_paths(cfg)
    cfg.train.keep_checkpoints_at = []  # a sweep keeps no models; not part of a trial's hash either
    plan = plan_sweep(cfg, settings)  # a bad flag stops the sweep before anything is touched
    check_tracking(cfg.tracking.uri)
    check_shared_storage(cfg, cluster_nodes(cfg))
    corpus = ensure_data(cfg)
    if not corpus.val:
        raise SweepError("data.val_shards / data.val_fraction: a learning-rate sweep is judged on val/loss and "
                         "needs a validation split (the synthetic corpus has one)")
    check_corpus_size(cfg, corpus.train, plan.trials)
    ident = sweep_id(cfg, plan)
    tracker = Tracker.open(cfg.tracking.uri, experiment_name(cfg))
    parent_id = _parent_run(tracker, cfg, plan, ident, config_path)
    lock = LadderLock(tracker, parent_id)
    lock.acquire()
    try:
        s = settings
        print(f"clipscale: lr sweep {cfg.ladder.name!r}: {len(plan.rungs)} rungs x {s.trials} trials at "
              f"{s.samples:,} samples, LR {s.lr_range[0]:g}..{s.lr_range[1]:g} (seed {s.seed}); MLflow "
              f"{cfg.tracking.uri} experiment {experiment_name(cfg)!r} parent run {parent_id}", flush=True)
        runs = _child_runs(tracker, cfg, plan, ident, parent_id)
        _tune_rungs(cfg, tracker, parent_id, plan, runs, corpus, ident)
        result = _conclude(cfg, tracker, parent_id, plan, runs, config_path,
                           out or str(default_fragment_path(config_path, cfg.ladder.name)))
    except BaseException as e:  # an interrupted sweep shows as KILLED, a failed one with its reason
        tracker.finish(parent_id, "FAILED" if isinstance(e, Exception) else "KILLED", f"{type(e).__name__}: {e}")
        raise
    finally:
        lock.release()
    return result


def _parent_run(tracker: Tracker, cfg: ExperimentConfig, plan: SweepPlan, ident: str, config_path: str) -> str:
    """The sweep's parent run, found again by its id; RUNNING while the sweep runs."""
    from clipscale.config import dump_config

    parent_id = tracker.run_by_tag(names.TAG_SWEEP, ident, run_name=f"{cfg.ladder.name}-lr-sweep")
    tracker.set_status(parent_id, "RUNNING")
    # A rerun after a failure starts clean: the reason of the last attempt no longer holds.
    tracker.set_tags(parent_id, {names.TAG_LADDER: cfg.ladder.name, names.TAG_STATUS_REASON: ""})
    s = plan.settings
    tracker.log_params(parent_id, {"config": config_path, "ladder": cfg.ladder.name, "rungs": ",".join(plan.rungs),
                                   "trials_per_rung": s.trials, "samples": s.samples, "seed": s.seed,
                                   "lr_range": list(s.lr_range), "metric": names.VAL_LOSS,
                                   "asha": {r: a.to_dict() for r, a in plan.asha.items()}})
    if not tracker.client.list_artifacts(parent_id, "config"):
        tracker.client.log_text(parent_id, dump_config(cfg), "config/resolved.yaml")
    return parent_id


def _child_runs(tracker: Tracker, cfg: ExperimentConfig, plan: SweepPlan, ident: str, parent_id: str) -> dict[str, str]:
    """Trial key -> child run id, created here in the driver before any worker logs (MLflow on
    sqlite). A run left without an outcome (a killed driver) is SCHEDULED again."""
    runs = {}
    for t in plan.trials:
        run_id = tracker.run_by_tag(names.TAG_SWEEP_TRIAL, f"{ident}/{t.key}", run_name=t.key)
        runs[t.key] = run_id
        if names.TAG_SWEEP_OUTCOME in tracker.tags(run_id):
            continue
        tracker.set_tags(run_id, {names.TAG_PARENT: parent_id, names.TAG_LADDER: cfg.ladder.name,
                                  names.TAG_RUNG: t.rung.name})
        tracker.log_params(run_id, {"lr": t.lr, "rung": t.rung.name, "samples": t.samples,
                                    "batch_size": t.rung.batch_size, "nonembedding_params": t.nonembedding_params,
                                    "model": t.rung.model.to_dict(), "train": to_dict(cfg.train)})
        tracker.set_status(run_id, "SCHEDULED")
    return runs


def _pending(tracker: Tracker, plan: SweepPlan, runs: dict[str, str], rung: str) -> list:
    return [t for t in plan.of_rung(rung) if names.TAG_SWEEP_OUTCOME not in tracker.tags(runs[t.key])]


def _tune_rungs(cfg: ExperimentConfig, tracker: Tracker, parent_id: str, plan: SweepPlan, runs: dict[str, str],
                corpus: Corpus, ident: str) -> None:
    """One Tune search per rung, smallest first; a rung whose trials all ended is skipped."""
    import ray

    from clipscale.ladder.sweep_tune import SweepContext, TrialRef, tune_rung
    from clipscale.train.trainer import run_storage

    for rung in plan.rungs:
        pending = _pending(tracker, plan, runs, rung)
        if not pending:
            print(f"clipscale: sweep {rung}: every trial already ended, skipped", flush=True)
            continue
        init_ray(cfg)  # here, not earlier: a rerun of a finished sweep only refits and starts no Ray
        refs = {t.lr: TrialRef(t.key, to_dict(t.rung), runs[t.key],
                               f"{cfg.ladder.name}-lrsweep-{t.key}-{cfg.rung_hash(t.rung)}", t.samples)
                for t in pending}
        ctx = SweepContext(to_dict(cfg), corpus, cfg.tracking.uri, experiment_name(cfg), refs)
        concurrency = min(len(pending), max_concurrent_trials(cfg, pending))
        warning = oversubscription_warning(cfg.train.torch_threads, concurrency, pending[0].rung.workers,
                                           ray.cluster_resources().get("CPU", 1.0))
        if warning:
            print(warning, flush=True)
        asha = plan.asha[rung]
        print(f"clipscale: sweep {rung}: {len(pending)} trial(s), {concurrency} at a time; ASHA on "
              f"{asha.metric} from {asha.grace_period:,} samples, keeping 1/{asha.reduction_factor:g} at each "
              f"milestone", flush=True)
        name = tune_rung(rung, ctx, asha, concurrency, run_storage(cfg), f"{cfg.ladder.name}-lr-sweep-{ident}-{rung}")
        tracker.set_tags(parent_id, {names.TAG_SWEEP_SCHEDULER: name})


def collect_records(tracker: Tracker, plan: SweepPlan, runs: dict[str, str]) -> list[TrialRecord]:
    """Every trial as its child run recorded it (a trial without an outcome counts as failed)."""
    out = []
    for t in plan.trials:
        run = tracker.run(runs[t.key])
        outcome = run.data.tags.get(names.TAG_SWEEP_OUTCOME, "failed")
        loss = math.inf if outcome == "diverged" else run.data.metrics.get(names.SWEEP_FINAL_LOSS, math.nan)
        out.append(TrialRecord(t.key, t.rung.name, t.nonembedding_params, t.lr, outcome, loss,
                               int(run.data.metrics.get(names.SWEEP_SAMPLES, 0))))
    return out


def fit_records(records: list[TrialRecord], settings: SweepSettings):
    """The rule over the trials that measured something (failed ones carry no loss)."""
    from clipscale.scaling.lr_rule import fit_lr_rule

    usable = [r for r in records if r.outcome != "failed" and not math.isnan(r.loss)]
    try:
        return fit_lr_rule([r.n for r in usable], [r.lr for r in usable], [r.loss for r in usable],
                           n_boot=settings.n_boot, seed=settings.seed)
    except ValueError as e:
        failed = [r.key for r in records if r not in usable]
        raise SweepError(f"no learning-rate rule: {e}" + (f" (failed trials: {', '.join(failed)})" if failed else ""))


def _conclude(cfg: ExperimentConfig, tracker: Tracker, parent_id: str, plan: SweepPlan, runs: dict[str, str],
              config_path: str, out: str) -> SweepResult:
    """Fit, log the rule and its plot on the parent run, write the fragment, finish the parent."""
    records = collect_records(tracker, plan, runs)
    fit = fit_records(records, plan.settings)
    _log_fit(tracker, parent_id, fit, records)
    path = write_fragment(Path(out), fragment(fit, plan, parent_id, config_path, records))
    tracker.client.log_artifact(parent_id, str(path), "lr_sweep")
    tracker.finish(parent_id, "FINISHED")
    lo, hi = fit.ci["gamma"]
    print(f"clipscale: lr_opt(N) = {fit.c:.4g} * N^{-fit.gamma:.3f} (gamma {fit.level:.0%} CI {lo:.3f}..{hi:.3f}, "
          f"{len(fit.optima)} sizes); wrote {path}", flush=True)
    for o in fit.optima:
        edge = "; warning: the best trial is at the edge of the swept LRs, widen --lr-range" if o.at_edge else ""
        print(f"clipscale:   N={o.n:,.0f}: lr_opt {o.lr_opt:.3g} ({o.method}; best trial {o.best_lr:.3g} at "
              f"val/loss {o.best_loss:.4f}{edge})", flush=True)
    return SweepResult(parent_id, experiment_name(cfg), cfg.tracking.uri, records, fit, path)


def _log_fit(tracker: Tracker, parent_id: str, fit, records: list[TrialRecord]) -> None:
    """c, gamma and their intervals as metrics, each size's optimum, the fit as JSON and the plot."""
    from clipscale.scaling.plots import plot_lr_sweep

    metrics = {names.lr_rule("c"): fit.c, names.lr_rule("gamma"): fit.gamma, names.lr_rule("r2"): fit.r2,
               names.lr_rule("c_lo"): fit.ci["c"][0], names.lr_rule("c_hi"): fit.ci["c"][1],
               names.lr_rule("gamma_lo"): fit.ci["gamma"][0], names.lr_rule("gamma_hi"): fit.ci["gamma"][1]}
    rung_of = {r.n: r.rung for r in records}
    metrics.update({names.lr_optimum(rung_of[int(o.n)]): o.lr_opt for o in fit.optima})
    tracker.log_metrics(parent_id, metrics)
    shown = [r for r in records if r.outcome != "failed" and math.isfinite(r.loss)]
    with tempfile.TemporaryDirectory() as d:
        plot_lr_sweep([r.rung for r in shown], [r.n for r in shown], [r.lr for r in shown], [r.loss for r in shown],
                      [r.outcome == "stopped_early" for r in shown], fit, Path(d) / "loss_vs_lr")
        (Path(d) / "fit.json").write_text(json.dumps(fit.to_dict(), indent=1))
        tracker.log_artifacts(parent_id, d, "lr_sweep")
