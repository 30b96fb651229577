"""The per-worker training loop that Ray Train's TorchTrainer runs for one rung.

Each worker builds the open_clip model, wraps it in a DeepSpeed engine (ZeRO
0-3), streams its shards through the Ray Data pipeline and trains until the
rung's exact sample budget. The loop itself only steps; metrics, checkpoint
cadence, fault injection and divergence checks are hooks (`hooks.py`).
Checkpoints carry the engine state plus what DeepSpeed does not know: samples
seen, device-seconds so far, and each rank's data position, so a restart
continues where the last checkpoint stood.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist

from clipscale.config import EvalConfig, LRSchedule, RungConfig
from clipscale.data.mixture import MixPosition, MixtureStream, data_metrics, open_stream, position_from_dict, rank_counts
from clipscale.data.pipeline import BatchStream, DataPosition
from clipscale.data.transforms import to_model_input
from clipscale.model import build_model, forward_flops
from clipscale.train.accumulate import full_batch_step
from clipscale.train.checkpoint import KEPT_DIR, META_FILE, kept_name, write_model
from clipscale.train.ds_config import deepspeed_config, effective_zero_stage
from clipscale.train.hooks import (CheckpointHook, FaultHook, Hook, KeepHook, LoopState, MetricSink, MetricsHook,
                                   Schedule, StepState, ValidationHook, all_reduce)
from clipscale.train.job import RungStatus, WorkerJob, WorkerResult
from clipscale.train.loss import clamp_logit_scale_, flatten_scalar_params_, objective_loss
from clipscale.train.optim import param_groups, set_lr_, warmup_samples, wsd_decay_start
from clipscale.train.validation import ValidationProbe, measurement_points


@dataclass
class Worker:
    """One rank's training setup: built by `_setup`, stepped by `_run`."""

    job: WorkerJob
    sched: Schedule
    engine: object
    dtype: torch.dtype
    zero_stage: int
    stream: BatchStream | MixtureStream
    state: StepState
    sink: MetricSink
    hooks: list[Hook] = field(default_factory=list)
    since: float = field(default_factory=time.perf_counter)  # device time not yet in the state
    final_state: dict | None = None  # the consolidated model, on rank 0 after the final save
    saved_final: bool = False
    probe: ValidationProbe | None = None
    node_seconds: dict = field(default_factory=dict)  # checkpointed device-seconds by node id


def device_type() -> str:
    """`cpu`, or the GPU's short model name (`H100`, `A100`...) for device-day accounting."""
    if not torch.cuda.is_available():
        return "cpu"
    name = torch.cuda.get_device_name()
    for token in name.replace("-", " ").split():
        if any(c.isdigit() for c in token) and token[0].isalpha():
            return token
    return name


def _full_state_dict(engine, zero_stage: int) -> dict | None:
    """The whole fp32 model on rank 0 (a collective under ZeRO-3), None elsewhere."""
    if zero_stage == 3:
        state = engine._zero3_consolidated_16bit_state_dict()  # DeepSpeed's save_16bit_model path
    else:
        state = engine.module.state_dict()
    if dist.is_initialized() and dist.get_rank() != 0:
        return None
    return {k: v.detach().float().cpu().clone() for k, v in state.items()}


def train_loop_per_worker(job: WorkerJob) -> WorkerResult:
    w = _setup(job)
    _run(w)
    return _finish(w)


def _run(w: Worker) -> None:
    """The step loop: everything else is a hook."""
    s, sched = w.state, w.sched
    batches = iter(w.stream)
    while s.progress.step < sched.total_steps and s.stop_reason is None:
        for hook in w.hooks:
            hook.pre_step(s)
        set_lr_(w.engine.optimizer, sched.lr(s.progress.samples_seen + sched.batch_size))
        loss, wait = _train_step(w, batches)
        s.record(loss, sched.batch_size, wait)
        for hook in w.hooks:
            hook.post_step(s)


def _train_step(w: Worker, batches) -> tuple[torch.Tensor, float]:
    """One optimiser step; returns this rank's loss (on the device) and the seconds spent waiting
    for data. With `grad_accum` > 1 every micro-batch's loss still sees the whole global batch as
    negatives (`accumulate.full_batch_step`): accumulation changes memory, not the objective."""
    t_wait = time.perf_counter()
    micro = [next(batches) for _ in range(w.job.train.grad_accum)]
    wait = time.perf_counter() - t_wait
    device = w.engine.device
    inputs = [(to_model_input(torch.from_numpy(images).to(device)).to(w.dtype), torch.from_numpy(tokens).to(device))
              for images, tokens in micro]

    objective = objective_loss(w.job.train.objective, w.sched.rank, w.sched.world)

    def loss_fn(*outputs):
        loss = objective(*outputs)
        for hook in w.hooks:
            loss = hook.transform_loss(loss, w.state)
        return loss

    def backward(loss):
        # Each micro-batch's backward carries its own share of the one full-batch gradient: sum them.
        w.engine.backward(loss, scale_wrt_gas=False)
        w.engine.step()

    loss = full_batch_step(lambda x: w.engine(*x), inputs, loss_fn, backward)
    clamp_logit_scale_(w.engine)
    return loss, wait


def _setup(job: WorkerJob) -> Worker:
    import ray.train

    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    rung, train = job.rung, job.train
    micro = rung.batch_size // world // train.grad_accum
    if micro * world * train.grad_accum != rung.batch_size:
        raise ValueError(f"rung {rung.name}: batch_size {rung.batch_size} is not divisible by "
                         f"workers x train.grad_accum = {world} x {train.grad_accum}")
    if train.torch_threads:
        torch.set_num_threads(train.torch_threads)
    engine, zero_stage, dtype = _engine(job, rank, world, micro)
    progress, position, skipped, node_seconds = _restore(engine, rank, job)
    sched = _schedule(job, world, rank)
    stream = open_stream(job.stream, micro, rank, world, position)
    stream.skipped.reasons.update(skipped)
    sink = MetricSink(job.tracking_uri, job.run_id, rank, job.retry_seconds)
    w = Worker(job, sched, engine, dtype, zero_stage, stream, StepState(progress), sink, node_seconds=node_seconds)
    w.hooks = [FaultHook(job.faults, rank), MetricsHook(sched, train.log_every_steps, sink, lambda: _logit_scale(engine))]
    if job.val is not None:
        w.probe = ValidationProbe(job.val, rung.model, job.eval, job.val_task if job.eval else None, rank, zero_stage,
                                  objective=train.objective)
        every = measurement_points(rung.budget, job.val.every_samples)
        w.hooks.append(ValidationHook(sched, every, lambda: w.probe.measure(engine, dtype), sink,
                                      forward_flops(rung.model), progress.samples_seen))
    w.hooks.append(CheckpointHook(sched, train.checkpoint_every_samples, lambda final: _checkpoint(w, final),
                                  progress.samples_seen))
    # One retention mechanism: models kept for export and full states kept for cooldown branches. A
    # branch keeps neither: its models before the budget are its main rung's.
    keep = [] if job.start_from is not None else [*train.keep_checkpoints_at, *job.keep_state_at]
    if keep:
        w.hooks.append(KeepHook(keep, lambda samples: _keep(w, samples), progress.samples_seen))
    return w


def _schedule(job: WorkerJob, world: int, rank: int) -> Schedule:
    """The rung's learning-rate schedule. A cooldown branch (`job.start_from`) keeps its main rung's
    warm-up in samples, so that it is the main run up to its branch point and decays from there."""
    rung, train = job.rung, job.train
    warmup = warmup_samples(train.warmup_samples, train.warmup_fraction, rung.budget)
    if job.start_from is not None:
        warmup = job.start_from.warmup
    wsd = train.schedule == LRSchedule.WSD
    decay_start = wsd_decay_start(rung.budget, train.decay_fraction, rung.batch_size) if wsd else 0
    return Schedule(rung.name, rung.batch_size, rung.steps, rung.budget, train.lr if rung.lr is None else rung.lr,
                    warmup, train.min_lr, world, rank, str(train.schedule), decay_start)


def _engine(job: WorkerJob, rank: int, world: int, micro: int):
    """The DeepSpeed engine for this rung, with identical initial weights on every rank."""
    import deepspeed

    rung, train = job.rung, job.train
    requested = train.zero_stage if rung.zero_stage is None else rung.zero_stage
    zero_stage = effective_zero_stage(requested, world)
    if zero_stage != requested and rank == 0:
        print(f"[{rung.name}] 1 worker: ZeRO-{requested} has no other rank to partition across; "
              f"training at stage {zero_stage} (same memory, less overhead)", flush=True)
    torch.manual_seed(job.seed)  # identical init on every rank; DeepSpeed also broadcasts rank 0's
    model = build_model(rung.model, objective=train.objective)
    flatten_scalar_params_(model)
    if train.grad_checkpointing:
        model.set_grad_checkpointing(True)
    lr = train.lr if rung.lr is None else rung.lr
    config = deepspeed_config(zero_stage, micro, train.grad_accum, world, train.grad_clip, lr,
                              tuple(train.betas), train.eps, train.weight_decay, train.precision)
    engine, _, _, _ = deepspeed.initialize(model=model, model_parameters=param_groups(model, train.weight_decay),
                                           config=config, dist_init_required=False)
    dtype = torch.bfloat16 if config["bf16"]["enabled"] else torch.float32
    return engine, zero_stage, dtype


def _restore(engine, rank: int, job: WorkerJob) -> tuple[LoopState, DataPosition | MixPosition | None, dict, dict]:
    """Progress, this rank's data position, skip counts and device-seconds by node from Ray
    Train's latest checkpoint; for a cooldown branch's first attempt, from its main rung's kept state."""
    import ray.train

    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            return _load_state(engine, rank, d)
    if job.start_from is None:
        return LoopState(), None, {}, {}
    with _kept_state(job.start_from.checkpoint, job.stream.settings) as d:
        restored = _load_state(engine, rank, d)
    if restored[0].samples_seen != job.start_from.samples:
        raise ValueError(f"{job.start_from.checkpoint}: the kept state stands at {restored[0].samples_seen} samples, "
                         f"not at the branch point {job.start_from.samples}")
    return restored


@contextlib.contextmanager
def _kept_state(uri: str, settings):
    """A kept folder (local, or fetched from S3 into a temporary folder) holding a full training state."""
    import pyarrow.fs

    from clipscale import storage

    try:
        meta = json.loads(storage.read_bytes(storage.join(uri, META_FILE), settings))
    except storage.StorageError:
        meta = {}
    if "tag" not in meta:  # missing, or a kept model without the training state
        raise FileNotFoundError(f"no kept training state at {storage.scrub(uri)}: the main rung finished without "
                                "keeping its branch points (trained before ladder.cooldowns named them?); retrain it "
                                "to branch from it")
    fs, path = storage.resolve(uri, settings)
    if isinstance(fs, pyarrow.fs.LocalFileSystem):
        yield path
        return
    tmp = tempfile.mkdtemp(prefix="clipscale-branch-")
    try:
        pyarrow.fs.copy_files(path, tmp, source_filesystem=fs)
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _load_state(engine, rank: int, d: str) -> tuple[LoopState, DataPosition | MixPosition | None, dict, dict]:
    """The engine state (into `engine`) and the loop's own files of one checkpoint folder."""
    meta = json.loads((Path(d) / META_FILE).read_text())
    engine.load_checkpoint(d, tag=meta["tag"], load_module_strict=True)
    mine = json.loads((Path(d) / f"position-rank{rank}.json").read_text())
    state = LoopState(**meta["state"])
    # A checkpoint from before per-node accounting: its time stays counted, under no node.
    by_node = meta.get("node_seconds") or ({"unrecorded": state.device_seconds} if state.device_seconds else {})
    return state, position_from_dict(mine["position"]), mine["skipped"], by_node


def _checkpoint(w: Worker, final: bool) -> None:
    w.final_state = _save(w.engine, w.job.rung, w.state.progress, w.stream, w.sched.rank, w.since, final,
                          w.zero_stage, w.node_seconds)
    w.saved_final = final
    w.since = time.perf_counter()


def _finish(w: Worker) -> WorkerResult:
    """The worker's result; on a finished rung, rank 0 also evaluates the consolidated model."""
    w.sink.close()
    w.stream.close()  # no more decoding of shards nobody will read while the rung evaluates
    progress, rung = w.state.progress, w.job.rung
    skip_totals = all_reduce([float(w.stream.skipped.reasons.get(r, 0)) for r in _skip_keys()])
    data_totals = all_reduce(rank_counts(w.stream, progress.samples_seen // w.sched.world))
    flops_per_sample = forward_flops(rung.model)
    result = WorkerResult(
        samples_seen=progress.samples_seen, steps=progress.step, device_type=device_type(),
        device_seconds=progress.device_seconds, flops_per_sample=flops_per_sample,
        train_flops=3 * flops_per_sample * progress.samples_seen,
        skipped={f"data/skipped_{k}": v for k, v in zip(_skip_keys(), skip_totals)},
        data=data_metrics(w.job.stream, data_totals),
        loss_curve=w.state.loss_curve, sps_curve=w.state.sps_curve, torch_threads=torch.get_num_threads(),
        zero_stage=w.zero_stage, val_seconds=w.probe.seconds if w.probe else 0.0,
        worker_nodes=_gather(_where()), node_seconds=dict(w.node_seconds))
    if w.state.stop_reason is not None:
        result.status, result.reason = RungStatus.DIVERGED, w.state.stop_reason
        return result
    if w.job.eval is not None:
        if not w.saved_final:  # restored from the final checkpoint (e.g. a crash during eval)
            w.final_state = _full_state_dict(w.engine, w.zero_stage)
        if w.sched.rank == 0:
            result.eval = _evaluate(rung, w.final_state, w.job.eval, w.engine.device, w.job.stream.settings)
    return result


def _skip_keys() -> tuple[str, ...]:
    from clipscale.data.pipeline import SKIP_REASONS

    return SKIP_REASONS


def _logit_scale(engine) -> float:
    """exp(logit_scale); under ZeRO-3 the parameter is gathered first (a collective)."""
    import deepspeed

    param = engine.module.logit_scale
    with deepspeed.zero.GatheredParameters([param], enabled=hasattr(param, "ds_id")):
        return float(param.detach().float().exp().flatten()[0])


def _where() -> dict:
    """This worker's node: Ray's node id (distinct even for several nodes on one host) and IP."""
    import ray

    return {"node_id": ray.get_runtime_context().get_node_id(), "ip": ray.util.get_node_ip_address()}


def _gather(obj) -> list:
    """Every rank's `obj` in rank order (a collective); [obj] on one process."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def _save(engine, rung: RungConfig, state: LoopState, stream: BatchStream | MixtureStream, rank: int,
          since: float, final: bool, zero_stage: int, node_seconds: dict) -> dict | None:
    """Every rank writes its part; Ray Train V2 merges the ranks' folders into one checkpoint.
    The final save also consolidates the whole model, returned on rank 0 for evaluation."""
    import ray.train
    from ray.train import Checkpoint

    _account(node_seconds, state, since)
    tag = f"step{state.step:08d}"
    tmp = tempfile.mkdtemp(prefix=f"clipscale-ckpt-{rank}-")
    _save_state(tmp, engine, stream, rank, tag)
    state_dict = _full_state_dict(engine, zero_stage) if final else None
    if rank == 0:
        _write_meta(tmp, rung, state, tag=tag, final=final, node_seconds=node_seconds)
        if state_dict is not None:
            write_model(tmp, state_dict)  # consolidated (safetensors, named in the meta), for evaluation and export
    metrics = {"samples_seen": state.samples_seen, "step": state.step, "device_seconds": state.device_seconds}
    ray.train.report(metrics, checkpoint=Checkpoint.from_directory(tmp))
    shutil.rmtree(tmp, ignore_errors=True)
    return state_dict


def _account(node_seconds: dict, state: LoopState, since: float) -> None:
    """Each rank's time since the last save, kept by node (a collective): after a node is lost, its
    checkpointed share stays in the books, and the total is by construction the sum of the nodes."""
    for node, seconds in _gather((_where()["node_id"], time.perf_counter() - since)):
        node_seconds[node] = node_seconds.get(node, 0.0) + seconds
    state.device_seconds = sum(node_seconds.values())


def _save_state(folder: str, engine, stream: BatchStream | MixtureStream, rank: int, tag: str) -> None:
    """This rank's part of a full training state: DeepSpeed's files (model, optimiser) and its data position."""
    engine.save_checkpoint(folder, tag=tag)
    position = {"position": stream.position.to_dict(), "skipped": dict(stream.skipped.reasons)}
    Path(folder, f"position-rank{rank}.json").write_text(json.dumps(position))


def _write_meta(folder: str, rung: RungConfig, state: LoopState, **extra) -> None:
    meta = {"model": rung.model.to_dict(), "rung": {"name": rung.name, "samples": rung.budget,
            "batch_size": rung.batch_size}, "state": dataclasses.asdict(state), **extra}
    Path(folder, META_FILE).write_text(json.dumps(meta, indent=1))


def _keep(w: Worker, samples: int) -> None:
    """The consolidated model at `samples`, written beside Ray Train's checkpoints under
    kept/samples-<N> (Ray Train keeps only the latest checkpoint); the driver logs it on the run.
    At a cooldown branch point (`job.keep_state_at`) the full training state goes there too, as in
    a checkpoint: every rank's DeepSpeed files and data position, and the progress with its
    device time, which the branch then counts as its own. Every rank calls: gathering the model
    (ZeRO-3), saving the engine and the time accounting are collectives."""
    import pyarrow.fs
    import ray.train

    state_dict = _full_state_dict(w.engine, w.zero_stage)
    full, rank, tag = samples in w.job.keep_state_at, w.sched.rank, f"step{w.state.progress.step:08d}"
    tmp = tempfile.mkdtemp(prefix=f"clipscale-keep-{rank}-")
    if full:
        _account(w.node_seconds, w.state.progress, w.since)
        w.since = time.perf_counter()
        _save_state(tmp, w.engine, w.stream, rank, tag)
    if rank == 0:
        extra = {"tag": tag, "node_seconds": w.node_seconds} if full else {}
        _write_meta(tmp, w.job.rung, w.state.progress, final=False, kept=samples, **extra)
        write_model(tmp, state_dict)
    storage = ray.train.get_context().get_storage()
    dest = f"{storage.experiment_fs_path}/{KEPT_DIR}/{kept_name(samples)}"
    if full or rank == 0:  # each rank its own files (DeepSpeed names them by rank), as Ray merges checkpoints
        storage.storage_filesystem.create_dir(dest, recursive=True)  # a local filesystem needs the folder first
        pyarrow.fs.copy_files(tmp, dest, destination_filesystem=storage.storage_filesystem)
    shutil.rmtree(tmp, ignore_errors=True)
    if rank == 0:
        print(f"[{w.sched.name}] kept the {'training state' if full else 'model'} at {samples} samples", flush=True)


def _evaluate(rung: RungConfig, state_dict: dict, cfg: EvalConfig, device, settings) -> dict:
    from clipscale import evaluate

    model = build_model(rung.model, objective="siglip" if "logit_bias" in state_dict else "clip")
    flatten_scalar_params_(model)  # the trained state holds logit_scale with shape (1,)
    model.load_state_dict(state_dict)
    return evaluate.evaluate_model(model, rung.model, cfg.tasks, cfg.root, device=str(device),
                                   batch_size=cfg.batch_size, linear_probe=cfg.linear_probe, settings=settings,
                                   averages=True)


__all__ = ["LoopState", "RungStatus", "WorkerJob", "WorkerResult", "device_type", "train_loop_per_worker"]
