"""The seam between a rung's driver side and its workers: what a worker is given, what it
returns, and the entry point Ray Train runs.

Kept free of torch, open_clip and DeepSpeed imports on purpose. Ray Train unpickles the entry
point and the job in its controller actor and the Tune trial builds them, once per rung; neither
process trains, and importing the training stack there cost each rung ~5 s of CPU per process
(measured with `python -X importtime` on the 2-core box). The worker imports it on first call.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from clipscale.config import EvalConfig, Faults, RungConfig, TrainConfig
from clipscale.data.pipeline import StreamSpec
from clipscale.data.validation import ValSpec


class RungStatus(StrEnum):
    FINISHED = "finished"
    DIVERGED = "diverged"


@dataclass
class BranchStart:
    """Where a cooldown branch starts (clipscale.ladder.cooldown): its main rung's full training
    state kept at `samples` (engine, optimiser, data positions, progress), and that rung's warm-up."""

    checkpoint: str  # the kept folder: a local path or s3://...
    samples: int  # where the kept state stands: the branch point
    warmup: int  # the main rung's warm-up, in samples


@dataclass
class WorkerJob:
    """Everything a worker needs, as the config's own dataclasses (no secrets: credentials
    reach workers through the runtime environment, never through this object)."""

    rung: RungConfig
    train: TrainConfig
    stream: StreamSpec
    seed: int = 0
    tracking_uri: str | None = None
    run_id: str | None = None  # MLflow child run that receives step metrics
    eval: EvalConfig | None = None  # None: no evaluation in the worker
    faults: Faults = field(default_factory=lambda: Faults())
    retry_seconds: float = 120.0  # how long step metrics wait for an unreachable tracking server
    val: ValSpec | None = None  # None: no in-training validation
    val_task: str | None = None  # the zero-shot task measured beside val/loss (needs `eval`)
    # Sample counts at which the full training state is kept too (cooldown branch points), beside
    # the models kept at train.keep_checkpoints_at: one retention mechanism (loop._keep).
    keep_state_at: tuple[int, ...] = ()
    # A cooldown branch: its first attempt restores this kept state; restarts use Ray's checkpoints.
    start_from: BranchStart | None = None


@dataclass
class WorkerResult:
    """What a worker returns (rank 0's is the rung's)."""

    status: RungStatus = RungStatus.FINISHED
    samples_seen: int = 0
    steps: int = 0
    device_type: str = "cpu"
    device_seconds: float = 0.0
    flops_per_sample: int = 0
    train_flops: int = 0
    skipped: dict = field(default_factory=dict)
    data: dict = field(default_factory=dict)  # samples per source, unique samples, epochs (`mixture.data_metrics`)
    loss_curve: list = field(default_factory=list)  # this attempt's logged losses (after the last restart)
    sps_curve: list = field(default_factory=list)  # global samples/s per logging window, same attempt
    torch_threads: int = 0
    zero_stage: int = 0  # the stage trained at (ds_config.effective_zero_stage)
    reason: str = ""
    eval: dict = field(default_factory=dict)
    val_seconds: float = 0.0  # rank 0's time spent on in-training validation
    worker_nodes: list = field(default_factory=list)  # per rank, this attempt: {"node_id", "ip"}
    node_seconds: dict = field(default_factory=dict)  # node id -> device-seconds, every attempt; sums to the total


def run_worker(job: WorkerJob) -> WorkerResult:
    """What Ray Train's TorchTrainer runs on every worker."""
    from clipscale.train.loop import train_loop_per_worker

    return train_loop_per_worker(job)
