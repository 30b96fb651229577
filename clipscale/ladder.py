"""The compute ladder: rungs -> Ray Tune trials -> TorchTrainers -> MLflow.

`run_ladder(cfg)` is the whole product flow for one config:
1. data: the configured shards, or the synthetic corpus generated on first use;
2. tracking: the experiment, the parent run and one child run per rung are
   found or created here, in the driver, before anything logs from a worker;
3. rungs whose child run is FINISHED are skipped; the rest run as Tune trials,
   each a function trainable that fits a TorchTrainer (which resumes from its
   last checkpoint by run name) and then logs zero-shot results;
4. after every rung the parent's scaling fit and plot are refreshed.
"""

from __future__ import annotations

import math
import os
import sys
from dataclasses import dataclass, field

from clipscale import export, storage
from clipscale.config import ExperimentConfig, RungConfig, dump_config, to_dict
from clipscale.model import forward_flops, param_counts
from clipscale.report import summary_rows
from clipscale.tracking import Tracker, is_finished, tracking_uri
from clipscale.tracking_auth import check_tracking
from clipscale.train.trainer import run_storage


@dataclass
class RungPlan:
    index: int
    rung: RungConfig
    config_hash: str
    params: int
    nonembedding_params: int
    flops_per_sample: int

    @property
    def train_flops(self) -> int:
        return 3 * self.flops_per_sample * self.rung.budget

    def to_dict(self, samples_per_sec_per_device: float | None = None) -> dict:
        out = {"name": self.rung.name, "params": self.params, "nonembedding_params": self.nonembedding_params,
               "flops_per_sample": self.flops_per_sample, "samples": self.rung.budget,
               "train_flops": self.train_flops, "batch_size": self.rung.batch_size, "workers": self.rung.workers,
               "config_hash": self.config_hash}
        if samples_per_sec_per_device:
            out["est_device_days"] = self.rung.budget / samples_per_sec_per_device / 86400.0
        return out


def plan(cfg: ExperimentConfig) -> list[RungPlan]:
    out = []
    for i, rung in enumerate(cfg.ladder.rungs):
        if cfg.ladder.only and i not in cfg.ladder.only:
            continue
        counts = param_counts(rung.model)
        out.append(RungPlan(i, rung, cfg.rung_hash(rung), counts["total"], counts["nonembedding"],
                            forward_flops(rung.model)))
    return out


def ladder_hash(cfg: ExperimentConfig) -> str:
    import hashlib
    import json

    hashes = sorted(cfg.rung_hash(r) for r in cfg.ladder.rungs)
    return hashlib.sha256(json.dumps([cfg.ladder.name, hashes]).encode()).hexdigest()[:16]


# ---- data ---------------------------------------------------------------------------------


def ensure_data(cfg: ExperimentConfig) -> tuple[str, ...]:
    """Shard URIs for the run; the synthetic corpus is generated once when no shards are configured."""
    from clipscale.data.pipeline import resolve_shards

    if cfg.data.shards:
        storage.check_reachable(cfg.data.shards if isinstance(cfg.data.shards, str) else cfg.data.shards[0],
                                cfg.data.storage)
        return resolve_shards(cfg.data.shards, cfg.data.storage)
    syn = cfg.data.synthetic
    root = syn.out if storage.is_s3(syn.out) else os.path.abspath(syn.out)
    import json

    from clipscale.data import shards as shard_io
    from clipscale.data import synthetic

    wanted = {"seed": syn.seed, "image_size": syn.image_size, "kind_weights": syn.kind_weights or synthetic.KIND_WEIGHTS}
    try:
        sizes = shard_io.read_manifest(root, cfg.data.storage)
        have = json.loads(storage.read_bytes(storage.join(root, "corpus.json"), cfg.data.storage))
    except storage.StorageError:
        sizes, have = {}, None
    if have is not None:
        differ = {k: (have.get(k), v) for k, v in wanted.items() if have.get(k) != v}
        if differ:
            raise storage.StorageError(
                f"data.synthetic.out: {root} holds a corpus made with other settings {differ} (have, want); "
                "delete it or point data.synthetic.out elsewhere")
        if sum(sizes.values()) >= syn.samples:
            return resolve_shards(root, cfg.data.storage)
    print(f"clipscale: generating the synthetic corpus ({syn.samples} samples) in {root}", flush=True)
    synthetic.write_corpus(root, syn.samples, syn.shard_size, syn.seed, syn.image_size, settings=cfg.data.storage,
                           kind_weights=syn.kind_weights)
    return resolve_shards(root, cfg.data.storage)
    return resolve_shards(root, cfg.data.storage)


def ensure_eval(cfg: ExperimentConfig) -> str:
    from clipscale.data import evalsets

    root = cfg.eval.root if storage.is_s3(cfg.eval.root) else os.path.abspath(cfg.eval.root)
    # Tasks clipscale can make are made on first use; any other name is a set the user
    # put there in CLIP_benchmark's layout (ImageNet, CIFAR...), which must already exist.
    own = [t for t in cfg.eval.tasks if t in evalsets.ALL_TASKS]
    for task in cfg.eval.tasks:
        if task not in own and not storage.exists(storage.join(root, task, evalsets.CLASSNAMES), cfg.data.storage) \
                and not storage.exists(storage.join(root, task, "test"), cfg.data.storage):
            raise storage.StorageError(
                f"eval.tasks: {task!r} is not a task clipscale generates ({', '.join(evalsets.ALL_TASKS)}) and "
                f"{storage.join(root, task)} holds no CLIP_benchmark-layout set")
    written = evalsets.ensure_eval_sets(root, seed=cfg.eval.seed, n_per_task=cfg.eval.n_per_task,
                                        image_size=cfg.data.synthetic.image_size, tasks=own,
                                        n_retrieval=cfg.eval.n_per_task, settings=cfg.data.storage) if own else []
    if written:
        print(f"clipscale: wrote eval sets {', '.join(written)} under {root}", flush=True)
    return root


# ---- Ray ----------------------------------------------------------------------------------


def init_ray(cfg: ExperimentConfig) -> None:
    import ray

    if ray.is_initialized():
        return
    # Only non-secret settings travel in the runtime env: Ray records runtime envs in its
    # own logs and job metadata. Credentials come from where the workers run (an instance
    # profile, a Kubernetes secret, or the environment `ray start` / the local driver had).
    env = storage.public_env()
    env["MLFLOW_TRACKING_URI"] = tracking_uri(cfg.tracking.uri)
    address = cfg.cluster.address or os.environ.get("RAY_ADDRESS")
    ray.init(address=address, runtime_env={"env_vars": env}, log_to_driver=True, include_dashboard=False,
             configure_logging=False)


def max_concurrent_trials(cfg: ExperimentConfig, plans: list[RungPlan]) -> int:
    """As many trials as the cluster can really run, with CPU left over for Ray Data."""
    if cfg.ladder.max_concurrent:
        return cfg.ladder.max_concurrent
    import ray

    res = ray.cluster_resources()
    cpus = res.get("CPU", 1.0)
    reserve = max(1.0, 0.25 * cpus)  # Ray Data decode tasks
    widest = max(p.rung.workers for p in plans)
    per_trial_cpu = widest * cfg.cluster.cpus_per_worker
    by_cpu = max(1, math.floor((cpus - reserve) / per_trial_cpu))
    if cfg.cluster.gpus_per_worker > 0:
        by_gpu = max(1, math.floor(res.get("GPU", 0.0) / (widest * cfg.cluster.gpus_per_worker)))
        return min(by_cpu, by_gpu)
    return by_cpu


def oversubscription_warning(torch_threads: int, concurrency: int, workers: int, cpus: float) -> str | None:
    """A warning when concurrent trials ask for more intra-op threads than there are CPUs.

    OpenMP threads spin while they wait for each other, so oversubscribed cores do not share
    but thrash: on 2 cores, two trials at 2 threads each ran 5x slower than at 1 thread each.
    """
    if torch_threads and concurrency * workers * torch_threads > cpus:
        return (f"clipscale: warning: train.torch_threads={torch_threads} x {concurrency} concurrent trial(s) x "
                f"{workers} worker(s) is more threads than the cluster's {cpus:g} CPUs; they will thrash. "
                "Lower train.torch_threads, or 0 for each worker's CPU share")
    return None


# ---- the trial ----------------------------------------------------------------------------


@dataclass
class LadderContext:
    """What every trial needs; plain data so Tune can ship it to the trial actor."""

    cfg: dict
    shards: tuple[str, ...]
    uri: str
    experiment_id: str
    parent_id: str
    runs: dict  # rung name -> child run id
    experiment: str


def _trial(config: dict, ctx: LadderContext) -> dict:
    from ray.tune.integration.ray_train import TuneReportCallback

    from clipscale.config import ExperimentConfig, from_dict
    from clipscale.train.trainer import fit_rung

    cfg = from_dict(ExperimentConfig, ctx.cfg)
    rung = next(r for r in cfg.ladder.rungs if r.name == config["rung"])
    run_id = ctx.runs[rung.name]
    tracker = Tracker.open(ctx.uri, ctx.experiment)
    tracker.client.update_run(run_id, status="RUNNING")
    monitor = _system_monitor(run_id, ctx.uri)
    try:
        result = fit_rung(cfg, rung, ctx.shards, tracking_uri=ctx.uri, run_id=run_id,
                          callbacks=[TuneReportCallback()])
    except Exception as e:  # noqa: BLE001 - recorded on the run, then re-raised for Tune
        tracker.finish(run_id, "FAILED", f"{type(e).__name__}: {e}")
        raise
    finally:
        if monitor is not None:
            monitor.finish()
    final = {
        "compute/flops": result.train_flops, "compute/device_days": result.device_days,
        "compute/device_seconds": result.device_seconds, "compute/samples": result.samples_seen,
        **result.eval, **result.skipped,
    }
    tracker.log_metrics(run_id, final)
    tracker.set_tags(run_id, {"clipscale.device_type": result.device_type, "clipscale.status": result.status,
                              "clipscale.zero_stage": result.zero_stage})
    export.log_rung_model(tracker, run_id, cfg, result)  # before FINISHED: a finished rung is never revisited
    if result.status != "finished":
        tracker.finish(run_id, "FAILED", result.reason)
    else:
        tracker.finish(run_id, "FINISHED")
    refresh_scaling(cfg, tracker, ctx.parent_id)
    return {"status": result.status, **final}


def _system_monitor(run_id: str, uri: str):
    """CPU/memory/GPU samples of this node onto the rung's run while it trains."""
    try:
        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

        monitor = SystemMetricsMonitor(run_id, sampling_interval=5, samples_before_logging=1, tracking_uri=uri)
        monitor.start()
        return monitor
    except Exception:  # noqa: BLE001 - system metrics are a nicety, never a reason to fail a rung
        return None


def refresh_scaling(cfg: ExperimentConfig, tracker: Tracker, parent_id: str) -> dict | None:
    """Fit and plot error against compute over the finished rungs; log onto the parent run."""
    from clipscale.report import refresh_scaling as refresh

    try:
        return refresh(tracker, parent_id, cfg.scaling.task, cfg.scaling.x, cfg.scaling.holdout, cfg.scaling.bootstrap)
    except Exception as e:  # noqa: BLE001 - a failed refresh must not fail a finished rung
        print(f"clipscale: scaling refresh skipped: {e}", file=sys.stderr, flush=True)
        return None


# ---- the ladder ---------------------------------------------------------------------------


@dataclass
class LadderResult:
    parent_id: str
    experiment: str
    uri: str
    rows: list[dict] = field(default_factory=list)
    trained: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    fit: dict | None = None


def run_ladder(cfg: ExperimentConfig) -> LadderResult:
    import ray
    from ray import tune

    plans = plan(cfg)
    uri = tracking_uri(cfg.tracking.uri)
    check_tracking(uri)  # a refused MLflow login stops the ladder before anything starts
    experiment = cfg.tracking.experiment or cfg.ladder.name
    init_ray(cfg)
    shards = ensure_data(cfg)
    if cfg.eval.tasks:
        cfg.eval.root = ensure_eval(cfg)
    tracker = Tracker.open(uri, experiment)
    parent_id = tracker.parent_run(cfg.ladder.name, ladder_hash(cfg), dump_config(cfg),
                                   {"ladder": cfg.ladder.name, "rungs": len(plans), "data.shards": shards[0] + " ..."})
    print(f"clipscale: ladder {cfg.ladder.name!r}: {len(plans)} rungs; MLflow {uri} experiment {experiment!r} "
          f"parent run {parent_id}", flush=True)
    runs, pending, result = {}, [], LadderResult(parent_id, experiment, uri)
    for p in plans:
        run_id, status = tracker.rung_run(parent_id, cfg.ladder.name, p.rung.name, p.config_hash)
        runs[p.rung.name] = run_id
        if is_finished(status):
            result.skipped.append(p.rung.name)
            continue
        tracker.log_params(run_id, {**{f"rung.{k}": v for k, v in to_dict(p.rung).items() if k != "model"},
                                    **{f"model.{k}": v for k, v in p.rung.model.to_dict().items()},
                                    "params": p.params, "nonembedding_params": p.nonembedding_params,
                                    "flops_per_sample": p.flops_per_sample, "samples": p.rung.budget,
                                    "train_flops_planned": p.train_flops, "train": to_dict(cfg.train)})
        tracker.client.update_run(run_id, status="SCHEDULED")  # RUNNING once its trial starts
        pending.append(p)
    if result.skipped:
        print(f"clipscale: already finished, skipped: {', '.join(result.skipped)}", flush=True)
    if pending:
        ctx = LadderContext(to_dict(cfg), shards, uri, tracker.experiment_id, parent_id, runs, experiment)
        concurrency = max_concurrent_trials(cfg, pending)
        print(f"clipscale: training {len(pending)} rung(s), {concurrency} at a time", flush=True)
        warning = oversubscription_warning(cfg.train.torch_threads, concurrency,
                                           max(p.rung.workers for p in pending), ray.cluster_resources().get("CPU", 1.0))
        if warning:
            print(warning, flush=True)
        storage_path, storage_fs = run_storage(cfg)
        trainable = tune.with_resources(tune.with_parameters(_trial, ctx=ctx), {"cpu": 0, "memory": 1})
        tuner = tune.Tuner(
            trainable,
            # Longest first: the biggest rung overlaps the stream of small ones instead of trailing alone.
            param_space={"rung": tune.grid_search([p.rung.name for p in sorted(pending, key=lambda p: -p.train_flops)])},
            tune_config=tune.TuneConfig(max_concurrent_trials=concurrency),
            run_config=tune.RunConfig(name=f"{cfg.ladder.name}-{ladder_hash(cfg)}-tune", storage_path=storage_path,
                                      storage_filesystem=storage_fs, verbose=1),
        )
        grid = tuner.fit()
        for r in grid:
            name = r.config["rung"]
            ok = r.error is None and (r.metrics or {}).get("status") == "finished"
            (result.trained if ok else result.failed).append(name)
    result.rows = summary_rows(tracker, plans, runs)
    result.fit = refresh_scaling(cfg, tracker, parent_id)
    # A ladder with failed rungs still finished: the other rungs and the fit are real results.
    tracker.set_tags(parent_id, {"clipscale.failed_rungs": ",".join(result.failed) or "none"})
    tracker.finish(parent_id, "FINISHED")
    return result
