"""The per-worker training loop that Ray Train's TorchTrainer runs for one rung.

Each worker builds the open_clip model, wraps it in a DeepSpeed engine (ZeRO
0-3), streams its shards through the Ray Data pipeline and trains until the
rung's exact sample budget. Checkpoints carry the engine state plus what
DeepSpeed does not know: samples seen, device-seconds so far, and each rank's
data position, so a restart continues where the last checkpoint stood.
"""

from __future__ import annotations

import json
import math
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist

from clipscale.config import Faults, RungConfig, TrainConfig, from_dict
from clipscale.data.pipeline import BatchStream, DataPosition, StreamSpec
from clipscale.data.transforms import to_model_input
from clipscale.model import build_model, forward_flops
from clipscale.train.checkpoint import write_model
from clipscale.train.ds_config import deepspeed_config, effective_zero_stage
from clipscale.train.loss import clamp_logit_scale_, clip_loss, flatten_scalar_params_
from clipscale.train.optim import lr_at, param_groups, set_lr_

META_FILE = "clipscale.json"
MODEL_FILE = "model.pt"


@dataclass
class WorkerJob:
    """Everything a worker needs, as plain picklable data (no secrets: credentials reach
    workers through the runtime environment, never through this object)."""

    rung: dict
    train: dict
    stream: StreamSpec
    seed: int = 0
    tracking_uri: str | None = None
    run_id: str | None = None  # MLflow child run that receives step metrics
    eval: dict | None = None  # EvalConfig as a dict; None: no evaluation in the worker
    faults: Faults = field(default_factory=lambda: Faults())


@dataclass
class LoopState:
    step: int = 0
    samples_seen: int = 0
    device_seconds: float = 0.0

    def to_dict(self) -> dict:
        return dict(step=self.step, samples_seen=self.samples_seen, device_seconds=self.device_seconds)


def device_type() -> str:
    """`cpu`, or the GPU's short model name (`H100`, `A100`...) for device-day accounting."""
    if not torch.cuda.is_available():
        return "cpu"
    name = torch.cuda.get_device_name()
    for token in name.replace("-", " ").split():
        if any(c.isdigit() for c in token) and token[0].isalpha():
            return token
    return name


def _all_reduce(values: list[float], op=None) -> list[float]:
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return values
    t = torch.tensor(values, dtype=torch.float64)
    dist.all_reduce(t, op=op or dist.ReduceOp.SUM)
    return t.tolist()


def _full_state_dict(engine, zero_stage: int) -> dict | None:
    """The whole fp32 model on rank 0 (a collective under ZeRO-3), None elsewhere."""
    if zero_stage == 3:
        state = engine._zero3_consolidated_16bit_state_dict()  # DeepSpeed's save_16bit_model path
    else:
        state = engine.module.state_dict()
    if dist.is_initialized() and dist.get_rank() != 0:
        return None
    return {k: v.detach().float().cpu().clone() for k, v in state.items()}


class _Tracker:
    """Step metrics to the rung's MLflow child run, from rank 0 only."""

    def __init__(self, tracking_uri: str | None, run_id: str | None, rank: int):
        self.client = None
        if run_id and rank == 0:
            from mlflow.tracking import MlflowClient

            self.client, self.run_id = MlflowClient(tracking_uri), run_id

    def log(self, metrics: dict[str, float], step: int) -> None:
        if self.client is None:
            return
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [Metric(k, float(v), now, step) for k, v in metrics.items() if math.isfinite(float(v))]
        self.client.log_batch(self.run_id, metrics=batch)


def train_loop_per_worker(job: WorkerJob) -> dict:
    import deepspeed
    import ray.train

    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    rung: RungConfig = from_dict(RungConfig, job.rung, "rung")
    train: TrainConfig = from_dict(TrainConfig, job.train, "train")
    requested_stage = train.zero_stage if rung.zero_stage is None else rung.zero_stage
    zero_stage = effective_zero_stage(requested_stage, world)
    if zero_stage != requested_stage and rank == 0:
        print(f"[{rung.name}] 1 worker: ZeRO-{requested_stage} has no other rank to partition across; "
              f"training at stage {zero_stage} (same memory, less overhead)", flush=True)
    base_lr = train.lr if rung.lr is None else rung.lr
    micro = rung.batch_size // world // train.grad_accum
    if micro * world * train.grad_accum != rung.batch_size:
        raise ValueError(f"rung {rung.name}: batch_size {rung.batch_size} is not divisible by "
                         f"workers x train.grad_accum = {world} x {train.grad_accum}")

    if train.torch_threads:
        torch.set_num_threads(train.torch_threads)
    torch.manual_seed(job.seed)  # identical init on every rank; DeepSpeed also broadcasts rank 0's
    model = build_model(rung.model)
    flatten_scalar_params_(model)
    if train.grad_checkpointing:
        model.set_grad_checkpointing(True)
    config = deepspeed_config(zero_stage, micro, train.grad_accum, world, train.grad_clip, base_lr,
                              tuple(train.betas), train.eps, train.weight_decay, train.precision)
    engine, _, _, _ = deepspeed.initialize(model=model, model_parameters=param_groups(model, train.weight_decay),
                                           config=config, dist_init_required=False)
    device = engine.device
    dtype = torch.bfloat16 if config["bf16"]["enabled"] else torch.float32

    state, position, skipped = LoopState(), DataPosition(), {}
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            meta = json.loads((Path(d) / META_FILE).read_text())
            engine.load_checkpoint(d, tag=meta["tag"], load_module_strict=True)
            state = LoopState(**meta["state"])
            mine = json.loads((Path(d) / f"position-rank{rank}.json").read_text())
            position, skipped = DataPosition(**mine["position"]), mine["skipped"]

    stream = BatchStream(job.stream, micro, rank, world, position)
    stream.skipped.reasons.update(skipped)
    tracker = _Tracker(job.tracking_uri, job.run_id, rank)
    flops_per_sample = forward_flops(rung.model)
    budget, total_steps = rung.budget, rung.steps
    warmup = train.warmup_samples or int(train.warmup_fraction * budget)
    ckpt_every = train.checkpoint_every_samples

    batches = iter(stream)
    loop_start = time.perf_counter()
    window = {"t0": time.perf_counter(), "wait": 0.0, "steps": 0, "loss": 0.0}
    diverged, loss_curve, sps_curve = False, [], []
    final_state, saved_final = None, False  # the flag is the same on every rank; the state only on rank 0
    next_ckpt = (state.samples_seen // ckpt_every + 1) * ckpt_every if ckpt_every else None

    while state.step < total_steps:
        job.faults.before_step(state.step, rank)
        set_lr_(engine.optimizer, lr_at(state.samples_seen + rung.batch_size, base_lr, warmup, budget, train.min_lr))
        loss_sum = 0.0
        for _ in range(train.grad_accum):
            t_wait = time.perf_counter()
            images, tokens = next(batches)
            window["wait"] += time.perf_counter() - t_wait
            images = to_model_input(torch.from_numpy(images).to(device)).to(dtype)
            tokens = torch.from_numpy(tokens).to(device)
            image_features, text_features, logit_scale = engine(images, tokens)[:3]
            loss = job.faults.poison(clip_loss(image_features, text_features, logit_scale, rank, world), state.step)
            engine.backward(loss)
            engine.step()
            loss_sum += float(loss.detach())
        clamp_logit_scale_(engine)
        state.step += 1
        state.samples_seen += rung.batch_size
        window["steps"] += 1
        window["loss"] += loss_sum / train.grad_accum

        at_log = state.step % train.log_every_steps == 0 or state.step == total_steps
        if at_log:
            (mean_loss,) = _all_reduce([window["loss"] / window["steps"]])
            mean_loss /= world
            loss_curve.append(mean_loss)
            if not math.isfinite(mean_loss):
                diverged = True
            elapsed = time.perf_counter() - window["t0"]
            wait_frac = window["wait"] / max(elapsed, 1e-9)
            sps = window["steps"] * rung.batch_size / max(elapsed, 1e-9)
            sps_curve.append(sps)
            metrics = {
                "train/loss": mean_loss,
                "train/lr": lr_at(state.samples_seen, base_lr, warmup, budget, train.min_lr),
                "train/logit_scale": _logit_scale(engine),
                "train/samples_per_sec": sps,
                "train/samples_per_sec_per_device": sps / world,
                "train/step_time_s": elapsed / window["steps"],
                "train/data_wait_fraction": wait_frac,
                "train/samples_seen": float(state.samples_seen),
            }
            if rank == 0:
                print(f"[{rung.name}] step {state.step}/{total_steps} loss {mean_loss:.4f} "
                      f"{sps:.0f} samples/s data-wait {wait_frac:.0%}", flush=True)
            tracker.log(metrics, state.step)
            window = {"t0": time.perf_counter(), "wait": 0.0, "steps": 0, "loss": 0.0}
            if diverged:
                break
        last = state.step == total_steps
        if last or (next_ckpt is not None and state.samples_seen >= next_ckpt):
            if next_ckpt is not None:
                next_ckpt += ckpt_every
            final_state = _save(engine, rung, state, stream, rank, loop_start, last, zero_stage)
            saved_final = last
            loop_start = time.perf_counter()

    skip_totals = _all_reduce([float(stream.skipped.reasons.get(r, 0)) for r in _skip_keys()])
    result = {
        "status": "diverged" if diverged else "finished",
        "samples_seen": state.samples_seen,
        "steps": state.step,
        "device_type": device_type(),
        "device_seconds": state.device_seconds,
        "flops_per_sample": flops_per_sample,
        "train_flops": 3 * flops_per_sample * state.samples_seen,
        "skipped": {f"data/skipped_{k}": v for k, v in zip(_skip_keys(), skip_totals)},
        "loss_curve": loss_curve,  # this attempt's logged losses (after the last restart)
        "sps_curve": sps_curve,  # global samples/s per logging window, same attempt
        "torch_threads": torch.get_num_threads(),
        "zero_stage": zero_stage,
    }
    if diverged:
        result["reason"] = f"non-finite training loss at step {state.step}"
        return result
    if job.eval is not None:
        if not saved_final:  # restored from the final checkpoint (e.g. a crash during eval)
            final_state = _full_state_dict(engine, zero_stage)
        if rank == 0:
            result["eval"] = _evaluate(rung, final_state, job.eval, device, job.stream.settings)
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


def _save(engine, rung: RungConfig, state: LoopState, stream: BatchStream, rank: int,
          since: float, final: bool, zero_stage: int) -> dict | None:
    """Every rank writes its part; Ray Train V2 merges the ranks' folders into one checkpoint.
    The final save also consolidates the whole model, returned on rank 0 for evaluation."""
    import ray.train
    from ray.train import Checkpoint

    (state.device_seconds,) = [state.device_seconds + s for s in _all_reduce([time.perf_counter() - since])]
    tag = f"step{state.step:08d}"
    tmp = tempfile.mkdtemp(prefix=f"clipscale-ckpt-{rank}-")
    engine.save_checkpoint(tmp, tag=tag)
    position = {"position": stream.position.to_dict(), "skipped": dict(stream.skipped.reasons)}
    Path(tmp, f"position-rank{rank}.json").write_text(json.dumps(position))
    state_dict = _full_state_dict(engine, zero_stage) if final else None
    if rank == 0:
        meta = {"tag": tag, "model": rung.model.to_dict(), "rung": {"name": rung.name, "samples": rung.budget,
                "batch_size": rung.batch_size}, "state": state.to_dict(), "final": final}
        Path(tmp, META_FILE).write_text(json.dumps(meta, indent=1))
        if state_dict is not None:
            write_model(tmp, state_dict)  # consolidated (safetensors, named in the meta), for evaluation and export
    metrics = {"samples_seen": state.samples_seen, "step": state.step, "device_seconds": state.device_seconds}
    ray.train.report(metrics, checkpoint=Checkpoint.from_directory(tmp))
    shutil.rmtree(tmp, ignore_errors=True)
    return state_dict


def _evaluate(rung: RungConfig, state_dict: dict, eval_cfg: dict, device, settings) -> dict:
    from clipscale import evaluate
    from clipscale.config import EvalConfig

    cfg = from_dict(EvalConfig, eval_cfg, "eval")
    model = build_model(rung.model)
    flatten_scalar_params_(model)  # the trained state holds logit_scale with shape (1,)
    model.load_state_dict(state_dict)
    return evaluate.evaluate_model(model, rung.model, cfg.tasks, cfg.root, device=str(device),
                                   batch_size=cfg.batch_size, linear_probe=cfg.linear_probe, settings=settings)


__all__ = ["LoopState", "WorkerJob", "device_type", "train_loop_per_worker"]
