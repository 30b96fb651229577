"""In-training measurements on the live model: `val/loss` and the fit task's zero-shot top-1.

The validation loss is the rung's own objective (CLIP's symmetric contrastive loss, or
SigLIP's sigmoid loss) over fixed batches of
`eval.val_batch_size` held-out samples, always the same ones in the same order. The
contrastive loss grows with the number of in-batch negatives, so only a fixed batch
size makes the number comparable across rungs whose training batches differ; a last
partial batch is dropped for the same reason.
"""

from __future__ import annotations

import contextlib
import time

import numpy as np
import torch

from clipscale import storage
from clipscale.data.transforms import to_model_input
from clipscale.data.validation import ValSpec, load_val_set
from clipscale.names import zeroshot
from clipscale.train.loss import objective_loss


class ValidationProbe:
    """Loads the validation batches once; `measure()` scores the engine's current weights.
    Call on every rank (under ZeRO-3 gathering the weights is a collective)."""

    def __init__(self, spec: ValSpec, model_spec, eval_cfg, task: str | None, rank: int, zero_stage: int,
                 objective: str = "clip"):
        self.spec, self.model_spec, self.eval_cfg, self.task = spec, model_spec, eval_cfg, task
        self.rank, self.zero_stage = rank, zero_stage
        self.loss = objective_loss(objective)  # one process's loss over each whole batch
        images, tokens = load_val_set(spec, model_spec.image_size, model_spec.context_length)
        n = (len(images) // spec.batch_size) * spec.batch_size
        if n == 0:
            raise ValueError(f"eval.val_batch_size={spec.batch_size} is more than the {len(images)} usable "
                             f"validation samples in {spec.shards[0]} ...; lower it or grow the split")
        self.images, self.tokens = images[:n], tokens[:n]
        self.seconds = 0.0  # spent measuring, for the cost report
        self._task_set = None

    def measure(self, engine, dtype: torch.dtype) -> dict[str, float]:
        t0 = time.perf_counter()
        model = engine.module
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad(), self._gathered(model):
                out = {"val/loss": self._loss(model, dtype, engine.device)}
                if self.task and self.rank == 0:
                    out.update(self._zeroshot(model, engine.device))
        finally:
            model.train(was_training)
        self.seconds += time.perf_counter() - t0
        return out

    def _gathered(self, model):
        if self.zero_stage != 3:
            return contextlib.nullcontext()
        import deepspeed

        return deepspeed.zero.GatheredParameters(list(model.parameters()))

    def _loss(self, model, dtype: torch.dtype, device) -> float:
        bs, losses = self.spec.batch_size, []
        for i in range(0, len(self.images), bs):
            images = to_model_input(torch.from_numpy(self.images[i:i + bs]).to(device)).to(dtype)
            tokens = torch.from_numpy(self.tokens[i:i + bs]).to(device)
            losses.append(self.loss(*(out.float() for out in model(images, tokens))))
        return float(torch.stack(losses).mean())

    def _zeroshot(self, model, device) -> dict[str, float]:
        from clipscale import evaluate

        if self._task_set is None:  # decoded, and the tokenizer built, once; scored at every measurement
            self._task_set = self._load_task()
        if not self._task_set:
            return {}  # a retrieval task has no top-1
        ds, enc = self._task_set
        metrics, _ = evaluate.score_zeroshot(model, self.task, ds, enc, device, self.eval_cfg.batch_size)
        key = zeroshot(self.task, "top1")
        return {f"val/{key}": metrics[key]}

    def _load_task(self):
        """(the task's eval set, its encoding), or () for a retrieval task."""
        from clipscale import evaluate
        from clipscale.data import evalsets

        uri = storage.join(self.eval_cfg.root, self.task)
        if not storage.exists(storage.join(uri, evalsets.CLASSNAMES), self.spec.settings):
            return ()
        enc = evaluate.Encoding(self.model_spec.image_size, evaluate.get_tokenizer(self.model_spec.context_length))
        return evalsets.load_task(uri, settings=self.spec.settings), enc


def measurement_points(budget: int, every: int) -> int:
    """Samples between measurements: `every`, or six per rung when 0 (five on the way, one at the end)."""
    return every if every > 0 else max(1, int(np.ceil(budget / 6)))
