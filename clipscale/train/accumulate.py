"""Gradient accumulation that keeps the contrastive objective of the full batch.

Split naively, a global batch of B trained as k micro-batches scores each image against
only B/k captions: a different, easier objective, and a rung that needs accumulation
would sit off its siblings' law. The scheme of open_clip's `accum_freq` (its PR #267)
fixes that: embed every micro-batch once without gradients, then for each micro-batch
recompute its features with gradients and take the loss over the whole batch, its own
rows live and the others' cached. The tower gradients of the k backward passes add up
to exactly the full-batch gradient.

One detail differs from open_clip: the temperature (`logit_scale`, and SigLIP's `logit_bias`)
enters every one of the k losses directly, so its gradient would be counted k times. It keeps
its gradient in the first micro-batch only and is detached in the rest.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

# image features, text features, logit scale (and SigLIP's logit bias): the model's outputs
Features = tuple[torch.Tensor, ...]


def full_batch_step(forward: Callable[[object], Features], inputs: Sequence[object],
                    loss_fn: Callable[..., torch.Tensor],
                    backward: Callable[[torch.Tensor], None]) -> torch.Tensor:
    """Run the forward and backward passes of one optimiser step over `inputs` (the micro-batches,
    in order) and return the full-batch loss, detached. `backward` must add gradients up (no
    1/k scaling): each call carries a distinct part of the one gradient."""
    if len(inputs) == 1:
        loss = loss_fn(*forward(inputs[0]))
        backward(loss)
        return loss.detach()
    with torch.no_grad():
        cached = [forward(x) for x in inputs]
    images, texts = [c[0] for c in cached], [c[1] for c in cached]
    loss = None
    for j, x in enumerate(inputs):
        image_j, text_j, *scalars = forward(x)
        if j:
            scalars = [s.detach() for s in scalars]
        loss = loss_fn(torch.cat([*images[:j], image_j, *images[j + 1:]]),
                       torch.cat([*texts[:j], text_j, *texts[j + 1:]]), *scalars)
        backward(loss)
    return loss.detach()
