"""Driver side of one rung: a Ray Train TorchTrainer over `train_loop_per_worker`.

The run's name is derived from the rung's config hash, so fitting the same
rung again with the same storage path restores from its last checkpoint
(Ray Train V2 does this on its own) instead of starting over.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass

from clipscale import names, storage
from clipscale.config import ExperimentConfig, Faults, RungConfig
from clipscale.data.pipeline import Source, StreamSpec
from clipscale.data.validation import ValSpec, quotas
from clipscale.train.job import BranchStart, WorkerJob, WorkerResult, run_worker


@dataclass
class RungResult(WorkerResult):
    """Rank 0's `WorkerResult`, plus what only the driver knows."""

    rung: str = ""
    checkpoint: str | None = None  # the final checkpoint's folder (local path or bucket/key)

    @property
    def device_days(self) -> float:
        return self.device_seconds / 86400.0

    def placement(self, limit: int = 5000) -> str:
        """Where the last attempt's workers ran, for the run's tag: {node id: {ip, ranks}} as JSON.
        Node ids, not IPs, key it: several nodes can share a host. MLflow caps a tag, so past
        `limit` characters the ranks give way to a count per node, and then to totals."""
        nodes: dict[str, dict] = {}
        for rank, where in enumerate(self.worker_nodes):
            nodes.setdefault(where["node_id"], {"ip": where["ip"], "ranks": []})["ranks"].append(rank)
        for view in (lambda v: v, lambda v: {"ip": v["ip"], "workers": len(v["ranks"])}):
            text = json.dumps({n: view(v) for n, v in nodes.items()}, separators=(",", ":"))
            if len(text) <= limit:
                return text
        return json.dumps({"nodes": len(nodes), "workers": len(self.worker_nodes)})

    def node_metrics(self) -> dict[str, float]:
        """Device-seconds per node over every attempt; they sum to `device_seconds`."""
        return {names.node_device_seconds(node): s for node, s in self.node_seconds.items()}


def stream_spec(cfg: ExperimentConfig, rung: RungConfig, shards: tuple[str, ...], seed: int | None = None,
                sources: tuple[Source, ...] = ()) -> StreamSpec:
    """The training stream; a replicate's `seed` (else `data.seed`) sets its data order (and its
    mixing draws, for a mixture of `sources`)."""
    return StreamSpec(shards=tuple(shards), image_size=rung.model.image_size,
                      context_length=rung.model.context_length, train=True, shuffle=cfg.data.shuffle,
                      seed=cfg.data.seed if seed is None else seed, settings=cfg.data.storage,
                      max_bad_fraction=cfg.data.max_bad_fraction, sources=tuple(sources))


def run_name(cfg: ExperimentConfig, rung: RungConfig) -> str:
    return f"{cfg.ladder.name}-{rung.name}-{cfg.rung_hash(rung)}"


def run_storage(cfg: ExperimentConfig) -> tuple[str, object | None]:
    """(storage_path, storage_filesystem) for a Train/Tune RunConfig from `cluster.storage_path`:
    S3 wants a pyarrow filesystem and a bucket/prefix path without the scheme."""
    fs, inner = storage.resolve(cfg.cluster.storage_path, cfg.data.storage)
    return inner, (fs if storage.is_s3(cfg.cluster.storage_path) else None)


def val_spec(cfg: ExperimentConfig, val_shards: tuple[str, ...], val_sources: tuple[Source, ...] = ()) -> ValSpec | None:
    """The validation set; for a mixture, each source's split gives its share by weight."""
    if not val_shards:
        return None
    return ValSpec(shards=tuple(val_shards), samples=cfg.eval.val_samples, batch_size=cfg.eval.val_batch_size,
                   every_samples=cfg.eval.every_samples, settings=cfg.data.storage,
                   parts=quotas(val_sources, cfg.eval.val_samples))


def fit_rung(cfg: ExperimentConfig, rung: RungConfig, shards: tuple[str, ...], *, tracking_uri: str | None = None,
             run_id: str | None = None, evaluate: bool = True, faults: Faults | None = None,
             callbacks: list | None = None, name: str | None = None, val_shards: tuple[str, ...] = (),
             seed: int | None = None, sources: tuple[Source, ...] = (),
             val_sources: tuple[Source, ...] = (), keep_state_at: tuple[int, ...] = (),
             start_from: BranchStart | None = None) -> RungResult:
    """Train one rung (or, with `start_from`, a cooldown branch of one: clipscale.ladder.cooldown);
    `keep_state_at` names the sample counts where the full training state is kept for branches."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    job = WorkerJob(
        rung=rung, train=cfg.train, stream=stream_spec(cfg, rung, shards, seed, sources),
        seed=cfg.data.seed if seed is None else seed,
        tracking_uri=tracking_uri, run_id=run_id, eval=cfg.eval if evaluate else None,
        faults=faults if faults is not None else (cfg.faults if cfg.faults.rung in (None, rung.name) else Faults()),
        retry_seconds=cfg.tracking.retry_seconds, val=val_spec(cfg, val_shards, val_sources), val_task=cfg.scaling.task,
        keep_state_at=tuple(keep_state_at), start_from=start_from,
    )
    use_gpu = cfg.cluster.gpus_per_worker > 0
    resources = {"CPU": cfg.cluster.cpus_per_worker}
    if use_gpu:
        resources["GPU"] = cfg.cluster.gpus_per_worker
    storage_path, storage_fs = run_storage(cfg)
    trainer = TorchTrainer(
        run_worker,
        train_loop_config=job,
        scaling_config=ScalingConfig(num_workers=rung.workers, use_gpu=use_gpu, resources_per_worker=resources,
                                     placement_strategy=str(cfg.cluster.placement_strategy)),
        run_config=RunConfig(
            name=name or run_name(cfg, rung),
            storage_path=storage_path,
            storage_filesystem=storage_fs,
            failure_config=FailureConfig(max_failures=cfg.train.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=2),
            callbacks=callbacks or [],
        ),
    )
    result = trainer.fit()
    if result.error is not None:
        raise result.error
    out: WorkerResult = result.return_value
    checkpoint = result.checkpoint.path if result.checkpoint is not None else None
    return RungResult(**{f.name: getattr(out, f.name) for f in dataclasses.fields(WorkerResult)},
                      rung=rung.name, checkpoint=checkpoint)
