"""`run_ladder`: provision, find or create the runs, train what is not finished, fit."""

from __future__ import annotations

from dataclasses import dataclass, field

from clipscale.config import ExperimentConfig, dump_config, to_dict
from clipscale.ladder import cooldown
from clipscale.ladder.plan import RungPlan, ladder_hash, plan
from clipscale.ladder.provision import (Corpus, check_corpus_size, check_shared_storage, cluster_nodes, ensure_data,
                                        ensure_eval, init_ray, max_concurrent_trials, oversubscription_warning,
                                        resolve_paths)
from clipscale.ladder.trial import LadderContext, Replica, refresh_scaling, trial
from clipscale.names import COOLDOWN_FLOPS
from clipscale.tracking import Tracker, is_finished
from clipscale.tracking_auth import check_tracking
from clipscale.train.trainer import run_storage


@dataclass
class LadderResult:
    parent_id: str
    experiment: str
    uri: str
    rows: list[dict] = field(default_factory=list)
    trained: list[str] = field(default_factory=list)  # plan keys: the rung's name (with -s<seed> if replicated)
    skipped: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    fit: dict | None = None


def run_ladder(cfg: ExperimentConfig) -> LadderResult:
    """The whole flow for one config; see the package docstring."""
    from clipscale.lock import LadderLock

    cfg = resolve_paths(cfg)
    check_tracking(cfg.tracking.uri)  # a refused MLflow login stops the ladder before anything starts
    check_shared_storage(cfg, cluster_nodes(cfg))  # before a file is written on the driver's disk
    plans = plan(cfg)
    experiment = cfg.tracking.experiment or cfg.ladder.name
    corpus = ensure_data(cfg)
    check_corpus_size(cfg, corpus.train, plans)
    if cfg.eval.tasks:
        ensure_eval(cfg)
    tracker = Tracker.open(cfg.tracking.uri, experiment)
    parent_id = tracker.parent_run(cfg.ladder.name, ladder_hash(cfg), dump_config(cfg),
                                   {"ladder": cfg.ladder.name, "rungs": len(plans),
                                    "data.shards": corpus.train[0] + " ...",
                                    "data.val_shards": (corpus.val[0] + " ...") if corpus.val else "none"})
    lock = LadderLock(tracker, parent_id)
    lock.acquire()
    try:
        init_ray(cfg)
        print(f"clipscale: ladder {cfg.ladder.name!r}: {len(plans)} runs; MLflow {cfg.tracking.uri} experiment "
              f"{experiment!r} parent run {parent_id}", flush=True)
        result = LadderResult(parent_id, experiment, cfg.tracking.uri)
        runs, pending = _prepare_rungs(cfg, tracker, parent_id, plans, result)
        if pending:
            _run_trials(cfg, tracker, parent_id, runs, pending, corpus, result)
        branches, branch_runs = _run_branches(cfg, tracker, parent_id, plans, corpus, result)
        result.rows = summary_rows(tracker, plans + branches, {**runs, **branch_runs})
        result.fit = refresh_scaling(cfg, tracker, parent_id)
        # A ladder with failed rungs still finished: the other rungs and the fit are real results.
        tracker.set_tags(parent_id, {"clipscale.failed_rungs": ",".join(result.failed) or "none"})
        tracker.finish(parent_id, "FINISHED")
    finally:
        lock.release()
    return result


def _prepare_rungs(cfg: ExperimentConfig, tracker: Tracker, parent_id: str, plans: list[RungPlan],
                   result: LadderResult) -> tuple[dict[str, str], list[RungPlan]]:
    """Find or create each replicate's child run (plan key -> run id); finished ones are skipped."""
    runs, pending = {}, []
    for p in plans:
        run_id, status = tracker.rung_run(parent_id, cfg.ladder.name, p.rung.name, p.config_hash, seed=p.seed,
                                          run_name=p.key)
        runs[p.key] = run_id
        if is_finished(status):
            result.skipped.append(p.key)
            continue
        tracker.log_params(run_id, {**{f"rung.{k}": v for k, v in to_dict(p.rung).items() if k != "model"},
                                    **{f"model.{k}": v for k, v in p.rung.model.to_dict().items()},
                                    "seed": p.seed, "params": p.params, "nonembedding_params": p.nonembedding_params,
                                    "flops_per_sample": p.flops_per_sample, "samples": p.rung.budget,
                                    "train_flops_planned": p.train_flops, "train": to_dict(cfg.train)})
        tracker.set_status(run_id, "SCHEDULED")  # RUNNING once its trial starts
        pending.append(p)
    if result.skipped:
        print(f"clipscale: already finished, skipped: {', '.join(result.skipped)}", flush=True)
    return runs, pending


def _run_branches(cfg: ExperimentConfig, tracker: Tracker, parent_id: str, plans: list[RungPlan], corpus: Corpus,
                  result: LadderResult) -> tuple[list[RungPlan], dict[str, str]]:
    """The cooldown branches (ladder/cooldown.py), after the main rungs whose kept states they start
    from; a branch of a failed rung fails without a trial. Their own compute goes on the parent."""
    branches = cooldown.branch_plans(cfg, plans)
    if not branches:
        return [], {}
    runs, pending = _prepare_rungs(cfg, tracker, parent_id, branches, result)
    for p in branches:
        tracker.set_tags(runs[p.key], cooldown.branch_tags(p))
    tracker.log_metrics(parent_id, {COOLDOWN_FLOPS: sum(p.cooldown_flops for p in branches)})
    orphans = [p for p in pending if cooldown.main_key(p) in result.failed]
    for p in orphans:
        tracker.finish(runs[p.key], "FAILED", f"its main rung {cooldown.main_key(p)} failed")
        result.failed.append(p.key)
    pending = [p for p in pending if p not in orphans]
    if pending:
        _run_trials(cfg, tracker, parent_id, runs, pending, corpus, result, "cooldowns")
    return branches, runs


def _run_trials(cfg: ExperimentConfig, tracker: Tracker, parent_id: str, runs: dict[str, str],
                pending: list[RungPlan], corpus: Corpus, result: LadderResult, stage: str = "tune") -> None:
    """One Tune trial per pending replicate (or branch), as many at a time as the cluster can run;
    `stage` names the Tune run, one per stage of the ladder."""
    import ray
    from ray import tune

    from clipscale.ladder.reaper import PlacementGroupReaper

    replicas = {p.key: Replica(p.rung.name, p.seed, runs[p.key], p.cooldown) for p in pending}
    ctx = LadderContext(to_dict(cfg), corpus, cfg.tracking.uri, cfg.tracking.experiment or cfg.ladder.name,
                        parent_id, replicas)
    concurrency = max_concurrent_trials(cfg, pending)
    print(f"clipscale: training {len(pending)} run(s), {concurrency} at a time", flush=True)
    warning = oversubscription_warning(cfg.train.torch_threads, concurrency,
                                       max(p.rung.workers for p in pending), ray.cluster_resources().get("CPU", 1.0))
    if warning:
        print(warning, flush=True)
    storage_path, storage_fs = run_storage(cfg)
    trainable = tune.with_resources(tune.with_parameters(trial, ctx=ctx), _on_driver_node())
    tuner = tune.Tuner(
        trainable,
        # Longest first: the biggest rung overlaps the stream of small ones instead of trailing alone.
        param_space={"rung": tune.grid_search([p.key for p in sorted(pending, key=lambda p: -p.train_flops)])},
        tune_config=tune.TuneConfig(max_concurrent_trials=concurrency),
        run_config=tune.RunConfig(name=f"{cfg.ladder.name}-{ladder_hash(cfg)}-{stage}", storage_path=storage_path,
                                  storage_filesystem=storage_fs, verbose=1,
                                  callbacks=[PlacementGroupReaper()]),  # a dead trial's workers' CPUs back
    )
    for r in tuner.fit():
        ok = r.error is None and (r.metrics or {}).get("status") == "finished"
        (result.trained if ok else result.failed).append(r.config["rung"])


def _on_driver_node():
    """A trial's resources: ~0 CPU (Tune cannot see its TorchTrainer's workers, which hold the
    rung's share), pinned to the driver's node. The trial hosts its rung's Train controller, so on
    a worker node a lost node would take the whole rung with it instead of only the workers Ray
    Train restarts; the driver's node going down ends the ladder anyway."""
    import ray
    from ray import tune

    here = {"ray.io/node-id": ray.get_runtime_context().get_node_id()}
    return tune.PlacementGroupFactory([{"memory": 1}], bundle_label_selector=[here])


def summary_rows(tracker: Tracker, plans: list[RungPlan], runs: dict[str, str]) -> list[dict]:
    """One row per replicate for the closing table: status, size, compute, val loss, zero-shot errors."""
    rows = []
    for p in plans:
        run = tracker.run(runs[p.key])
        m = run.data.metrics
        row = {"rung": p.key, "status": run.info.status, "nonembedding_params": p.nonembedding_params,
               "flops": m.get("compute/flops", float("nan")), "val_loss": m.get("val/loss", float("nan"))}
        row.update({k.split("/")[1]: v for k, v in sorted(m.items())
                    if k.startswith("zeroshot/") and k.endswith("/error")})
        rows.append(row)
    return rows
