"""What happens around a training step, one concern per hook.

The loop in `loop.py` only steps; metrics, checkpoint cadence, fault injection and
divergence checks live here (the shape of OLMo-core's trainer callbacks). Hooks share
one typed `StepState`. Losses stay on the device between log steps, as nanoGPT reads
its loss only at log time: a host read per step is a device sync on a GPU.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.distributed as dist

from clipscale.names import SAMPLES_SEEN
from clipscale.train.optim import schedule_lr


@dataclass
class LoopState:
    """What a checkpoint restores: progress and device time."""

    step: int = 0
    samples_seen: int = 0
    device_seconds: float = 0.0


@dataclass
class Schedule:
    """The rung's fixed numbers, shared by the loop and the hooks."""

    name: str
    batch_size: int  # global
    total_steps: int
    budget: int  # samples
    base_lr: float
    warmup: int  # samples
    min_lr: float
    world: int
    rank: int
    kind: str = "cosine"  # train.schedule
    decay_start: int = 0  # samples: where a WSD decay begins (optim.wsd_decay_start)

    def lr(self, samples_seen: int) -> float:
        return schedule_lr(self.kind, samples_seen, self.base_lr, self.warmup, self.budget, self.min_lr,
                           self.decay_start)


@dataclass
class StepState:
    """Shared by the loop and its hooks. Loss sums are device tensors until a hook reads them."""

    progress: LoopState
    window_loss: torch.Tensor | float = 0.0  # since the last log step
    window_steps: int = 0
    window_wait: float = 0.0  # seconds spent waiting on data since the last log step
    window_t0: float = field(default_factory=time.perf_counter)
    since_checkpoint_loss: torch.Tensor | float = 0.0  # non-finite once any loss since the last check was
    stop_reason: str | None = None  # set by a hook: the loop ends after this step
    loss_curve: list[float] = field(default_factory=list)
    sps_curve: list[float] = field(default_factory=list)

    def record(self, loss: torch.Tensor, samples: int, wait: float) -> None:
        loss = loss.detach()
        self.window_loss = self.window_loss + loss
        self.since_checkpoint_loss = self.since_checkpoint_loss + loss
        self.window_steps += 1
        self.window_wait += wait
        self.progress.step += 1
        self.progress.samples_seen += samples

    def reset_window(self) -> None:
        self.window_loss, self.window_steps, self.window_wait, self.window_t0 = 0.0, 0, 0.0, time.perf_counter()


def all_reduce(values: list[float], op=None) -> list[float]:
    """Sum (or `op`) over ranks; identity on one process."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return values
    t = torch.tensor(values, dtype=torch.float64)
    dist.all_reduce(t, op=op or dist.ReduceOp.SUM)
    return t.tolist()


class Hook:
    """Called by the loop on every rank. `pre_step` before the step's first micro-batch,
    `post_step` after the optimiser step, `transform_loss` on each micro-batch's loss."""

    def pre_step(self, s: StepState) -> None:
        pass

    def transform_loss(self, loss: torch.Tensor, s: StepState) -> torch.Tensor:
        return loss

    def post_step(self, s: StepState) -> None:
        pass


class FaultHook(Hook):
    """The reliability suite's injected faults (clipscale.testing.faults)."""

    def __init__(self, faults, rank: int):
        self.faults, self.rank = faults, rank

    def pre_step(self, s: StepState) -> None:
        self.faults.before_step(s.progress.step, self.rank)

    def transform_loss(self, loss: torch.Tensor, s: StepState) -> torch.Tensor:
        return self.faults.poison(loss, s.progress.step)


class MetricsHook(Hook):
    """Every `every` steps (and at the last): the mean loss over ranks and the window's
    throughput, printed on rank 0 and logged to the rung's run. A non-finite mean stops the rung."""

    def __init__(self, sched: Schedule, every: int, sink, logit_scale: Callable[[], float]):
        self.sched, self.every, self.sink, self.logit_scale = sched, every, sink, logit_scale

    def post_step(self, s: StepState) -> None:
        step, sched = s.progress.step, self.sched
        if step % self.every and step != sched.total_steps:
            return
        (mean_loss,) = all_reduce([float(s.window_loss) / s.window_steps])
        mean_loss /= sched.world
        elapsed = max(time.perf_counter() - s.window_t0, 1e-9)
        sps = s.window_steps * sched.batch_size / elapsed
        s.loss_curve.append(mean_loss)
        s.sps_curve.append(sps)
        metrics = {
            "train/loss": mean_loss, "train/lr": sched.lr(s.progress.samples_seen),
            "train/logit_scale": self.logit_scale(), "train/samples_per_sec": sps,
            "train/samples_per_sec_per_device": sps / sched.world, "train/step_time_s": elapsed / s.window_steps,
            "train/data_wait_fraction": s.window_wait / elapsed, "train/samples_seen": float(s.progress.samples_seen),
        }
        if sched.rank == 0:
            print(f"[{sched.name}] step {step}/{sched.total_steps} loss {mean_loss:.4f} "
                  f"{sps:.0f} samples/s data-wait {s.window_wait / elapsed:.0%}", flush=True)
        self.sink.log(metrics, step)
        s.reset_window()
        if not math.isfinite(mean_loss):
            s.stop_reason = f"non-finite training loss at step {step}"


class CheckpointHook(Hook):
    """Saves every `every` samples and at the last step, through `save(final)`.

    Before writing, all ranks agree that every loss since the last checkpoint was finite;
    otherwise the rung stops as diverged and nothing is written, so a rerun can never
    resume from a poisoned state.
    """

    def __init__(self, sched: Schedule, every: int, save: Callable[[bool], None], start_samples: int):
        self.sched, self.every, self.save = sched, every, save
        self.next = (start_samples // every + 1) * every if every else None

    def post_step(self, s: StepState) -> None:
        last = s.progress.step == self.sched.total_steps
        due = self.next is not None and s.progress.samples_seen >= self.next
        if s.stop_reason is not None or not (last or due):
            return
        if self.next is not None:
            self.next += self.every
        (total,) = all_reduce([float(s.since_checkpoint_loss)])
        if not math.isfinite(total):
            s.stop_reason = (f"non-finite training loss between steps {s.progress.step - 1} and "
                             f"{s.progress.step}; no checkpoint written")
            return
        s.since_checkpoint_loss = 0.0
        self.save(last)


class KeepHook(Hook):
    """Keeps the model for good at the first step at or past each of `points` (sample counts),
    through `keep(samples)`; points already behind a resumed run were kept by its first attempt."""

    def __init__(self, points: list[int], keep: Callable[[int], None], start_samples: int):
        self.points, self.keep = sorted(n for n in set(points) if n > start_samples), keep

    def post_step(self, s: StepState) -> None:
        while s.stop_reason is None and self.points and s.progress.samples_seen >= self.points[0]:
            self.keep(self.points.pop(0))


class ValidationHook(Hook):
    """`val/loss` and the fit task's zero-shot top-1 every `every` samples and at the last step,
    logged with the MLflow step = samples seen and `train/flops` beside them, so either can be
    a learning curve's x axis. Each measurement also goes to `report` (Ray Train, by default)
    with `samples_seen`, so a Tune scheduler can stop a trial on it."""

    def __init__(self, sched: Schedule, every: int, measure: Callable[[], dict], sink, flops_per_sample: int,
                 start_samples: int, report: Callable[[dict], None] | None = None):
        self.sched, self.every, self.measure, self.sink = sched, every, measure, sink
        self.flops_per_sample = flops_per_sample
        self.next = (start_samples // every + 1) * every
        self.report = report_to_train if report is None else report

    def post_step(self, s: StepState) -> None:
        samples, last = s.progress.samples_seen, s.progress.step == self.sched.total_steps
        if s.stop_reason is not None or not (last or samples >= self.next):
            return
        while self.next <= samples:
            self.next += self.every
        metrics = self.measure()
        metrics["train/flops"] = 3.0 * self.flops_per_sample * samples
        if self.sched.rank == 0:
            print(f"[{self.sched.name}] samples {samples}: val/loss {metrics['val/loss']:.4f}", flush=True)
        self.sink.log(metrics, samples)
        self.report({**metrics, SAMPLES_SEEN: samples})


def report_to_train(metrics: dict) -> None:
    """A measurement to Ray Train, whose callbacks hand it on: a learning-rate sweep's Tune scheduler
    stops trials on `val/loss` (clipscale.ladder.sweep). Every rank reports at the same step, as Ray
    Train requires (a report is a barrier over the worker group)."""
    import ray.train

    ray.train.report(metrics)


class MetricSink:
    """Step metrics to the rung's MLflow child run, from rank 0 only.

    A tracking server that is briefly away must neither stop training nor lose a metric:
    a batch that fails stays buffered and goes with the next one. Past `retry_seconds` of
    failures the rung fails, naming the server. MLflow's own HTTP retries (minutes of
    backoff) are turned off in this process, so a blip never stalls a step.
    """

    def __init__(self, tracking_uri: str | None, run_id: str | None, rank: int, retry_seconds: float):
        self.client, self.run_id, self.uri, self.retry_seconds = None, run_id, tracking_uri, retry_seconds
        self.pending: list = []
        self.failing_since: float | None = None
        if run_id and rank == 0:
            from mlflow.tracking import MlflowClient

            os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = "0"
            os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] = "10"
            self.client = MlflowClient(tracking_uri)

    def log(self, metrics: dict[str, float], step: int) -> None:
        if self.client is None:
            return
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.pending += [Metric(k, float(v), now, step) for k, v in metrics.items() if math.isfinite(float(v))]
        self.flush()

    def flush(self) -> bool:
        """Send what is buffered; True when nothing is left."""
        from clipscale.storage import scrub
        from clipscale.errors import TrackingUnavailable

        try:
            while self.pending:
                self.client.log_batch(self.run_id, metrics=self.pending[:1000])
                self.pending = self.pending[1000:]
        except Exception as e:  # noqa: BLE001 - any failure to reach the server is a blip until the deadline
            self.failing_since = self.failing_since or time.monotonic()
            away = time.monotonic() - self.failing_since
            if away > self.retry_seconds:
                raise TrackingUnavailable(
                    f"tracking server {self.uri} unreachable for {away:.0f}s (tracking.retry_seconds="
                    f"{self.retry_seconds:g}); {len(self.pending)} metric values unsent: {scrub(str(e))[:300]}") from None
            return False
        self.failing_since = None
        return True

    def close(self) -> None:
        """Wait (with backoff) until the buffer is sent, or fail past the deadline."""
        delay = 0.5
        while self.client is not None and not self.flush():
            time.sleep(delay)
            delay = min(2 * delay, 5.0)
