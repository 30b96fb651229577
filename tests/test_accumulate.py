"""Gradient accumulation keeps the full-batch contrastive objective: loss and gradients with
grad_accum 1 and 4 agree on a fixed batch, on one rank and across two (gloo), for CLIP's softmax
loss and SigLIP's sigmoid loss; across two ranks each equals the one-process loss."""

from __future__ import annotations

import os

import pytest
import torch
import torch.multiprocessing as mp

from clipscale.model import ModelSpec, build_model
from clipscale.train.accumulate import full_batch_step
from clipscale.train.loss import clip_loss, flatten_scalar_params_, objective_loss
from tests.helpers import free_port

TINY = ModelSpec(embed_dim=16, image_size=16, patch_size=8, vision_width=16, vision_layers=1, vision_head_width=8,
                 context_length=8, text_width=16, text_heads=2, text_layers=1)
BATCH = 16  # per rank
OBJECTIVES = ["clip", "siglip"]


def _model(objective: str = "clip") -> torch.nn.Module:
    torch.manual_seed(0)
    model = build_model(TINY, objective=objective)
    flatten_scalar_params_(model)
    return model


def _batch(rank: int):
    g = torch.Generator().manual_seed(100 + rank)
    return (torch.randn(BATCH, 3, TINY.image_size, TINY.image_size, generator=g),
            torch.randint(1, 400, (BATCH, TINY.context_length), generator=g))


def _loss_and_grads(model, images, tokens, accum: int, rank: int = 0, world: int = 1, objective: str = "clip"):
    model.zero_grad()
    micro = BATCH // accum
    inputs = [(images[i * micro:(i + 1) * micro], tokens[i * micro:(i + 1) * micro]) for i in range(accum)]
    loss = full_batch_step(lambda x: model(*x), inputs, objective_loss(objective, rank, world),
                           lambda loss: loss.backward())
    return float(loss), {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


def _assert_same(a, b):
    (loss_a, grads_a), (loss_b, grads_b) = a, b
    assert abs(loss_a - loss_b) <= 1e-5 * abs(loss_a), (loss_a, loss_b)
    assert grads_a.keys() == grads_b.keys()
    for name in grads_a:
        torch.testing.assert_close(grads_b[name], grads_a[name], rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.parametrize("objective", OBJECTIVES)
def test_one_rank_accum_4_matches_accum_1(objective):
    torch.set_num_threads(1)
    model = _model(objective)
    images, tokens = _batch(0)
    whole = _loss_and_grads(model, images, tokens, accum=1, objective=objective)
    _assert_same(whole, _loss_and_grads(model, images, tokens, accum=4, objective=objective))
    assert whole[1]["logit_scale"].abs().item() > 0  # the temperature is trained, once
    if objective == "siglip":
        assert whole[1]["logit_bias"].abs().item() > 0  # and so is SigLIP's bias


def test_naive_accumulation_would_differ():
    """The check can fail: four independent micro-batch losses are another objective."""
    torch.set_num_threads(1)
    model = _model()
    images, tokens = _batch(0)
    whole_loss, _ = _loss_and_grads(model, images, tokens, accum=1)
    naive = sum(float(clip_loss(*model(images[i:i + 4], tokens[i:i + 4])[:3]).detach()) for i in range(0, BATCH, 4)) / 4
    assert abs(naive - whole_loss) > 1e-3 * whole_loss


def _two_rank_worker(rank: int, port: int, out: str, objective: str):
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.distributed.init_process_group("gloo", rank=rank, world_size=2)
    model = _model(objective)
    images, tokens = _batch(rank)
    results = {}
    for accum in (1, 4):
        loss, grads = _loss_and_grads(model, images, tokens, accum, rank, 2, objective)
        for g in grads.values():  # what DDP / DeepSpeed apply: the mean over ranks
            torch.distributed.all_reduce(g)
            g /= 2
        total = torch.tensor([loss])  # each rank's loss covers its own rows: the mean is the global loss
        torch.distributed.all_reduce(total)
        results[accum] = (float(total) / 2, grads)
    if rank == 0:
        torch.save(results, out)
    torch.distributed.destroy_process_group()


@pytest.mark.slow  # two spawned processes with a gloo group
@pytest.mark.parametrize("objective", OBJECTIVES)
def test_two_ranks_accum_4_matches_one_process_on_the_global_batch(tmp_path, objective):
    out = str(tmp_path / "two.pt")
    mp.spawn(_two_rank_worker, args=(free_port(), out, objective), nprocs=2, join=True)
    results = torch.load(out)
    _assert_same(results[1], results[4])
    torch.set_num_threads(1)
    model = _model(objective)
    (i0, t0), (i1, t1) = _batch(0), _batch(1)
    model.zero_grad()
    loss = objective_loss(objective)(*model(torch.cat([i0, i1]), torch.cat([t0, t1])))
    loss.backward()
    single = (float(loss.detach()), {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None})
    _assert_same(single, results[4])
