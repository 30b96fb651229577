"""One Tune trial: one (rung, seed) replicate, trained by a TorchTrainer and logged to its child run."""

from __future__ import annotations

import sys
from dataclasses import dataclass

from clipscale import export, names
from clipscale.config import ExperimentConfig
from clipscale.ladder import cooldown
from clipscale.ladder.provision import Corpus
from clipscale.tracking import Tracker


@dataclass
class Replica:
    rung: str
    seed: int
    run_id: str
    cooldown: float | None = None  # a cooldown branch of the rung at this fraction (clipscale.ladder.cooldown)


@dataclass
class LadderContext:
    """What every trial needs; plain data so Tune can ship it to the trial actor."""

    cfg: dict
    corpus: Corpus  # training shards, validation split, a mixture's sources
    uri: str
    experiment: str
    parent_id: str
    replicas: dict[str, Replica]  # plan key -> its rung, seed and child run


def trial(config: dict, ctx: LadderContext) -> dict:
    from ray.tune.integration.ray_train import TuneReportCallback

    from clipscale.config import from_dict
    from clipscale.train.job import RungStatus
    from clipscale.train.trainer import fit_rung

    cfg = from_dict(ExperimentConfig, ctx.cfg)
    replica = ctx.replicas[config["rung"]]
    rung = next(r for r in cfg.ladder.rungs if r.name == replica.rung)
    start, config_hash, keep = None, cfg.rung_hash(rung, replica.seed), cooldown.branch_points(cfg, rung)
    if replica.cooldown is not None:  # the (N, D_b) branch: from its main rung's kept state, keeping none
        (rung, start, config_hash), keep = cooldown.branch_start(cfg, rung, replica.seed, replica.cooldown), ()
    run_id = replica.run_id
    tracker = Tracker.open(ctx.uri, ctx.experiment)
    tracker.set_status(run_id, "RUNNING")
    monitor = _system_monitor(run_id, ctx.uri)
    try:
        result = fit_rung(cfg, rung, ctx.corpus.train, tracking_uri=ctx.uri, run_id=run_id, **ctx.corpus.fit_args(),
                          seed=cfg.data.seed + replica.seed, callbacks=[TuneReportCallback()],
                          keep_state_at=keep, start_from=start,
                          name=cooldown.trial_name(cfg, config["rung"], config_hash))
    except Exception as e:  # noqa: BLE001 - recorded on the run, then re-raised for Tune
        tracker.finish(run_id, "FAILED", f"{type(e).__name__}: {e}")
        raise
    finally:
        if monitor is not None:
            monitor.finish()
    final = {
        "compute/flops": result.train_flops, "compute/device_days": result.device_days,
        "compute/device_seconds": result.device_seconds, "compute/samples": result.samples_seen,
        **result.node_metrics(), **result.eval, **result.skipped, **result.data,
    }
    if result.val_seconds > 0:  # what in-training validation cost, against the rung's device time
        final["val/seconds"] = result.val_seconds
        final["val/time_fraction"] = result.val_seconds / max(result.device_seconds, 1e-9)
    tracker.log_metrics(run_id, final)
    tracker.set_tags(run_id, {"clipscale.device_type": result.device_type, "clipscale.status": result.status,
                              "clipscale.zero_stage": result.zero_stage,
                              names.TAG_WORKER_NODES: result.placement()})
    export.log_rung_model(tracker, run_id, cfg, result)  # before FINISHED: a finished rung is never revisited
    export.log_kept_models(tracker, run_id, cfg, result)
    if result.status != RungStatus.FINISHED:
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
    """Fit and plot the finished rungs; log onto the parent run."""
    from clipscale.report import refresh_scaling as refresh

    try:
        return refresh(tracker, parent_id, cfg.scaling.task, cfg.scaling.x, cfg.scaling.holdout, cfg.scaling.bootstrap,
                       target=cfg.scaling.target, n_eval=cfg.eval.n_per_task, error_floor=cfg.scaling.error_floor)
    except Exception as e:  # noqa: BLE001 - a failed refresh must not fail a finished rung
        print(f"clipscale: scaling refresh skipped: {e}", file=sys.stderr, flush=True)
        return None
