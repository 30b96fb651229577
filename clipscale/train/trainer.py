"""Driver side of one rung: a Ray Train TorchTrainer over `train_loop_per_worker`.

The run's name is derived from the rung's config hash, so fitting the same
rung again with the same storage path restores from its last checkpoint
(Ray Train V2 does this on its own) instead of starting over.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from clipscale import storage
from clipscale.config import ExperimentConfig, RungConfig, to_dict
from clipscale.data.pipeline import StreamSpec
from clipscale.config import Faults
from clipscale.train.loop import WorkerJob, train_loop_per_worker


@dataclass
class RungResult:
    rung: str
    status: str  # finished | diverged
    samples_seen: int
    device_type: str
    device_seconds: float
    flops_per_sample: int
    train_flops: int
    checkpoint: str | None
    eval: dict = field(default_factory=dict)
    skipped: dict = field(default_factory=dict)
    reason: str = ""
    loss_curve: list = field(default_factory=list)
    sps_curve: list = field(default_factory=list)
    torch_threads: int = 0
    zero_stage: int = 0  # the stage trained at (clipscale.train.ds_config.effective_zero_stage)

    @property
    def device_days(self) -> float:
        return self.device_seconds / 86400.0


def stream_spec(cfg: ExperimentConfig, rung: RungConfig, shards: tuple[str, ...]) -> StreamSpec:
    return StreamSpec(shards=tuple(shards), image_size=rung.model.image_size,
                      context_length=rung.model.context_length, train=True, shuffle=cfg.data.shuffle,
                      seed=cfg.data.seed, settings=cfg.data.storage, max_bad_fraction=cfg.data.max_bad_fraction)


def run_name(cfg: ExperimentConfig, rung: RungConfig) -> str:
    return f"{cfg.ladder.name}-{rung.name}-{cfg.rung_hash(rung)}"


def run_storage(cfg: ExperimentConfig) -> tuple[str, object | None]:
    """(storage_path, storage_filesystem) for a Train/Tune RunConfig from `cluster.storage_path`:
    S3 wants a pyarrow filesystem and a bucket/prefix path without the scheme."""
    fs, inner = storage.resolve(cfg.cluster.storage_path, cfg.data.storage)
    return inner, (fs if storage.is_s3(cfg.cluster.storage_path) else None)


def fit_rung(cfg: ExperimentConfig, rung: RungConfig, shards: tuple[str, ...], *, tracking_uri: str | None = None,
             run_id: str | None = None, evaluate: bool = True, faults: Faults | None = None,
             callbacks: list | None = None, name: str | None = None) -> RungResult:
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    job = WorkerJob(
        rung=to_dict(rung), train=to_dict(cfg.train), stream=stream_spec(cfg, rung, shards), seed=cfg.data.seed,
        tracking_uri=tracking_uri, run_id=run_id, eval=to_dict(cfg.eval) if evaluate else None,
        faults=faults if faults is not None else (cfg.faults if cfg.faults.rung in (None, rung.name) else Faults()),
    )
    use_gpu = cfg.cluster.gpus_per_worker > 0
    resources = {"CPU": cfg.cluster.cpus_per_worker}
    if use_gpu:
        resources["GPU"] = cfg.cluster.gpus_per_worker
    storage_path, storage_fs = run_storage(cfg)
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config=job,
        scaling_config=ScalingConfig(num_workers=rung.workers, use_gpu=use_gpu, resources_per_worker=resources),
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
    out = result.return_value or {}
    checkpoint = result.checkpoint.path if result.checkpoint is not None else None
    return RungResult(
        rung=rung.name, status=out.get("status", "finished"), samples_seen=int(out.get("samples_seen", 0)),
        device_type=out.get("device_type", "cpu"), device_seconds=float(out.get("device_seconds", 0.0)),
        flops_per_sample=int(out.get("flops_per_sample", 0)), train_flops=int(out.get("train_flops", 0)),
        checkpoint=checkpoint, eval=out.get("eval", {}), skipped=out.get("skipped", {}), reason=out.get("reason", ""),
        loss_curve=out.get("loss_curve", []), sps_curve=out.get("sps_curve", []),
        torch_threads=int(out.get("torch_threads", 0)), zero_stage=int(out.get("zero_stage", 0)),
    )
