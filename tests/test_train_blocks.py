"""Training building blocks: gathered loss, temperature clamp, param groups, LR schedule,
DeepSpeed config at ZeRO 0-3.

DeepSpeed runs in spawned processes (gloo on CPU) so its process group and global
state never leak into the pytest process or other tests.
"""
from __future__ import annotations

import dataclasses
import math
import os

import pytest
import torch
import torch.multiprocessing as mp

from clipscale.errors import ConfigError
from clipscale.model import ModelSpec, build_model
from clipscale.train.ds_config import CPU_ZERO_TUNING, deepspeed_config, effective_zero_stage, zero_optimization
from clipscale.train.loss import MAX_LOGIT_SCALE, clamp_logit_scale_, clip_loss, flatten_scalar_params_
from clipscale.train.optim import lr_at, param_groups
from tests.helpers import free_port

TINY = ModelSpec(embed_dim=16, image_size=16, vision_width=32, vision_layers=1, vision_head_width=16,
                 patch_size=8, context_length=8, text_width=32, text_heads=2, text_layers=1,
                 vocab_size=100)
CEILING = math.log(MAX_LOGIT_SCALE)
WORLD = 2
LOCAL_BATCH = 4


def _init_dist(rank: int, world: int, port: int) -> None:
    torch.set_num_threads(1)  # two cores shared by everything
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    import deepspeed
    deepspeed.init_distributed(dist_backend="gloo")


def _global_batch(seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    n = WORLD * LOCAL_BATCH
    return (torch.randn(n, 3, TINY.image_size, TINY.image_size, generator=g),
            torch.randint(0, TINY.vocab_size, (n, TINY.context_length), generator=g),
            torch.nn.functional.normalize(torch.randn(n, 8, generator=g), dim=-1),
            torch.nn.functional.normalize(torch.randn(n, 8, generator=g), dim=-1))


def _tiny_model(logit_scale: float | None = None) -> torch.nn.Module:
    torch.manual_seed(0)
    model = build_model(TINY)
    if logit_scale is not None:
        with torch.no_grad():
            model.logit_scale.fill_(logit_scale)
    return model


def _logit_scale_value(engine) -> float:
    import deepspeed
    param = engine.module.logit_scale
    with deepspeed.zero.GatheredParameters([param], enabled=hasattr(param, "ds_id")):
        return float(param.detach().float().reshape(-1)[0])


def _ds_step(engine, images, tokens, rank, world, lr):
    from clipscale.train.optim import set_lr_
    set_lr_(engine, lr)  # the engine itself; the 2-rank test passes engine.optimizer
    img_f, txt_f, scale = engine(images.to(next(engine.module.parameters()).dtype), tokens)
    loss = clip_loss(img_f, txt_f, scale, rank, world)
    engine.backward(loss)
    engine.step()
    return loss.item()


# -- pure functions ------------------------------------------------------------

def test_lr_schedule_warmup_cosine_and_floor():
    kw = dict(base_lr=1e-3, warmup_samples=1000, total_samples=11000, min_lr=1e-5)
    assert lr_at(0, **kw) == 0.0
    assert lr_at(500, **kw) == pytest.approx(5e-4)
    assert lr_at(1000, **kw) == pytest.approx(1e-3)
    assert lr_at(6000, **kw) == pytest.approx((1e-3 + 1e-5) / 2)  # cosine midpoint
    assert lr_at(11000, **kw) == pytest.approx(1e-5)
    assert lr_at(50000, **kw) == pytest.approx(1e-5)
    after = [lr_at(s, **kw) for s in range(1000, 11001, 250)]
    assert all(a >= b for a, b in zip(after, after[1:])) and after[0] > after[-1]
    assert lr_at(0, 1.0, 0, 10) == 1.0  # no warm-up
    with pytest.raises(ValueError):
        lr_at(0, 1.0, 20, 10)


def test_wsd_schedule_warmup_flat_linear_decay_and_floor():
    from clipscale.train.optim import branch_point, schedule_lr, wsd_decay_start, wsd_lr_at

    # 1,000 samples in batches of 10, decay over the last 20%: stable through 800, first decay step at 810.
    assert branch_point(1000, 0.2, 10) == 800 and wsd_decay_start(1000, 0.2, 10) == 810
    assert branch_point(1000, 0.25, 64) == 704  # 750 rounded down to whole batches
    kw = dict(base_lr=1e-3, warmup_samples=100, decay_start=810, total_samples=1000, min_lr=1e-5)
    assert wsd_lr_at(0, **kw) == 0.0
    assert wsd_lr_at(50, **kw) == pytest.approx(5e-4)  # warm-up as the cosine schedule's
    assert all(wsd_lr_at(s, **kw) == 1e-3 for s in range(100, 811, 10))  # flat, the decay's first step included
    assert wsd_lr_at(905, **kw) == pytest.approx((1e-3 + 1e-5) / 2)  # linear: the midpoint of 810..1000
    assert wsd_lr_at(1000, **kw) == pytest.approx(1e-5) and wsd_lr_at(5000, **kw) == pytest.approx(1e-5)
    decay = [wsd_lr_at(s, **kw) for s in range(810, 1001, 10)]
    steps = [a - b for a, b in zip(decay, decay[1:])]
    assert all(d == pytest.approx(steps[0]) for d in steps)  # equal steps down
    # The dispatch: cosine is lr_at; wsd needs its decay start.
    assert schedule_lr("cosine", 6000, 1e-3, 1000, 11000, 1e-5) == lr_at(6000, 1e-3, 1000, 11000, 1e-5)
    assert schedule_lr("wsd", 905, 1e-3, 100, 1000, 1e-5, 810) == wsd_lr_at(905, **kw)
    for bad in (dict(kw, warmup_samples=900), dict(kw, decay_start=1001), dict(kw, min_lr=2e-3)):
        with pytest.raises(ValueError):
            wsd_lr_at(500, **bad)
    with pytest.raises(ValueError, match="unknown schedule"):
        schedule_lr("step", 1, 1.0, 0, 10)
    with pytest.raises(ValueError):
        branch_point(1000, 1.0, 10)


def test_worker_schedule_follows_train_schedule_and_a_branch_keeps_its_warmup():
    from clipscale.config import load_config
    from clipscale.train.job import BranchStart, WorkerJob
    from clipscale.train.loop import _schedule

    rung = ("ladder.rungs=[{name: r, model: {embed_dim: 16, image_size: 16, patch_size: 8, vision_width: 32, "
            "vision_layers: 1, vision_head_width: 16, context_length: 8, text_width: 32, text_heads: 2, "
            "text_layers: 1}, samples: 1000, batch_size: 10}]")
    cfg = load_config(None, [rung, "train.schedule=wsd", "train.lr=1e-3", "train.min_lr=0", "train.warmup_fraction=0.1"])
    job = WorkerJob(rung=cfg.ladder.rungs[0], train=cfg.train, stream=None)
    sched = _schedule(job, 1, 0)
    assert (sched.kind, sched.warmup, sched.decay_start, sched.budget) == ("wsd", 100, 810, 1000)
    assert sched.lr(810) == 1e-3 and sched.lr(1000) == 0.0
    # A 0.5 branch: 500 samples, branch point 400; the main rung's 100-sample warm-up, not 10% of 500.
    branch = WorkerJob(rung=dataclasses.replace(cfg.ladder.rungs[0], samples=500), train=cfg.train, stream=None,
                       start_from=BranchStart("kept", 400, 100))
    b = _schedule(branch, 1, 0)
    assert (b.warmup, b.decay_start, b.budget, b.total_steps) == (100, 410, 500, 50)
    assert [b.lr(s) for s in (100, 400, 410)] == [sched.lr(s) for s in (100, 400, 410)] == [1e-3] * 3
    assert b.lr(500) == 0.0
    cosine = _schedule(WorkerJob(rung=cfg.ladder.rungs[0], train=dataclasses.replace(cfg.train, schedule="cosine"),
                                 stream=None), 1, 0)
    assert cosine.kind == "cosine" and cosine.lr(550) == pytest.approx(lr_at(550, 1e-3, 100, 1000))


def test_param_groups_follow_open_clip_rule():
    model = build_model(TINY)
    flatten_scalar_params_(model)  # logit_scale is then 1-d: still excluded by name and ndim
    groups = {g["name"]: g for g in param_groups(model, weight_decay=0.2)}
    assert groups["decay"]["weight_decay"] == 0.2 and groups["no_decay"]["weight_decay"] == 0.0
    names = {id(p): n for n, p in model.named_parameters()}
    decay = {names[id(p)] for p in groups["decay"]["params"]}
    no_decay = {names[id(p)] for p in groups["no_decay"]["params"]}
    assert decay.isdisjoint(no_decay) and decay | no_decay == set(names.values())
    assert {"logit_scale", "ln_final.weight", "ln_final.bias", "visual.class_embedding",
            "transformer.resblocks.0.attn.in_proj_bias"} <= no_decay
    assert all(n in no_decay for n in names.values() if n.endswith("bias") or ".ln_" in n)
    assert {"transformer.resblocks.0.attn.in_proj_weight", "transformer.resblocks.0.mlp.c_fc.weight",
            "visual.conv1.weight", "visual.proj", "text_projection", "token_embedding.weight"} <= decay


def test_param_groups_resnet_batchnorm_not_decayed():
    spec = ModelSpec(family="resnet", vision_layers=[1, 1, 1, 1], vision_width=16,
                     vision_head_width=16, image_size=32)
    model = build_model(spec, "meta")
    groups = {g["name"]: g for g in param_groups(model, 0.1)}
    no_decay = {n for n, p in model.named_parameters() if any(p is q for q in groups["no_decay"]["params"])}
    assert "visual.bn1.weight" in no_decay and "visual.layer1.0.bn3.weight" in no_decay
    assert "visual.conv1.weight" not in no_decay


def test_flattened_logit_scale_still_runs_forward_and_loss():
    model = _tiny_model()
    assert model.logit_scale.dim() == 0
    assert flatten_scalar_params_(model) == ["logit_scale"]
    assert model.logit_scale.shape == (1,) and isinstance(model.logit_scale, torch.nn.Parameter)
    images, tokens, _, _ = _global_batch()
    img_f, txt_f, scale = model(images, tokens)
    loss = clip_loss(img_f, txt_f, scale)
    loss.backward()
    assert loss.dim() == 0 and model.logit_scale.grad.shape == (1,)
    assert model.logit_scale.item() == pytest.approx(math.log(1 / 0.07))


def test_clamp_plain_module():
    model = _tiny_model(logit_scale=CEILING + 1.0)
    clamp_logit_scale_(model)
    assert model.logit_scale.item() == pytest.approx(CEILING)
    model = _tiny_model(logit_scale=1.0)
    clamp_logit_scale_(model)
    assert model.logit_scale.item() == pytest.approx(1.0)  # only an upper bound


@pytest.mark.parametrize("kw, key", [
    ({"zero_stage": 4}, "train.zero_stage"),
    ({"micro_batch_per_gpu": 0}, "train.micro_batch_per_gpu"),
    ({"precision": "fp8"}, "train.precision"),
    ({"betas": (0.9, 1.5)}, "train.betas"),
])
def test_ds_config_validation(kw, key):
    args = dict(zero_stage=2, micro_batch_per_gpu=8, grad_accum=2, world_size=4, grad_clip=1.0,
                lr=1e-3, betas=(0.9, 0.98), eps=1e-6, weight_decay=0.2, precision="fp32")
    args.update(kw)
    with pytest.raises(ConfigError) as err:
        deepspeed_config(**args)
    assert err.value.key == key


def test_ds_config_fields():
    cfg = deepspeed_config(3, 8, 2, 4, 1.0, 1e-3, (0.9, 0.98), 1e-6, 0.2, "auto")
    assert cfg["train_batch_size"] == 8 * 2 * 4
    assert cfg["zero_optimization"]["stage"] == 3
    assert cfg["bf16"]["enabled"] == torch.cuda.is_available()
    assert cfg["optimizer"]["params"]["torch_adam"] is True
    assert cfg["optimizer"]["params"]["fused"] is True  # torch's fused AdamW kernel (optim.ADAMW_IMPL)
    assert deepspeed_config(0, 1, 1, 1, 0.0, 1e-3, (0.9, 0.98), 1e-6, 0.0, "bf16")["bf16"]["enabled"]


def test_cpu_ranks_tune_zero_1_2_and_gpus_keep_deepspeeds_defaults():
    for stage in (1, 2):
        assert zero_optimization(stage, on_gpu=False) == {"stage": stage, **CPU_ZERO_TUNING}
        assert zero_optimization(stage, on_gpu=True) == {"stage": stage}
    assert zero_optimization(0, on_gpu=False) == {"stage": 0}
    assert zero_optimization(3, on_gpu=False) == {"stage": 3}  # stage 3 has its own bucket keys
    assert deepspeed_config(2, 8, 1, 2, 1.0, 1e-3, (0.9, 0.98), 1e-6, 0.2, "fp32")["zero_optimization"] == \
        zero_optimization(2)


# -- DeepSpeed, one process ------------------------------------------------------

def _single_process_worker(rank, port, out_path):
    _init_dist(rank, 1, port)
    import deepspeed
    images, tokens, _, _ = _global_batch()
    results = []
    for stage, precision in [(0, "fp32"), (1, "fp32"), (2, "fp32"), (3, "fp32"), (0, "bf16")]:
        # Start above the ceiling: a step must not bring it back after the clamp.
        model = _tiny_model(logit_scale=CEILING + 0.5)
        flatten_scalar_params_(model)
        before = {n: p.detach().clone() for n, p in model.named_parameters()}
        cfg = deepspeed_config(stage, micro_batch_per_gpu=4, grad_accum=2, world_size=1, grad_clip=1.0,
                               lr=1e-3, betas=(0.9, 0.98), eps=1e-6, weight_decay=0.1, precision=precision)
        engine, *_ = deepspeed.initialize(model=model, model_parameters=param_groups(model, 0.1),
                                          config=cfg)
        for micro in range(2):  # one optimiser step = 2 micro-batches
            _ds_step(engine, images[micro * 4:(micro + 1) * 4], tokens[micro * 4:(micro + 1) * 4], 0, 1, 1e-2)

        def snapshot():
            with deepspeed.zero.GatheredParameters(list(engine.module.parameters()), enabled=stage == 3):
                return {n: p.detach().float().clone() for n, p in engine.module.named_parameters()}

        after_step = snapshot()
        clamp_logit_scale_(engine)
        clamped = _logit_scale_value(engine)
        # lr=0 steps: AdamW moves nothing, so only a master copy left unclamped would show.
        for micro in range(2):
            _ds_step(engine, images[:4], tokens[:4], 0, 1, 0.0)
        after_lr0 = snapshot()
        changed = sum(not torch.equal(before[n].float(), after_step[n]) for n in before if n != "logit_scale")
        moved_at_lr0 = max((after_lr0[n] - after_step[n]).abs().max().item()
                           for n in before if n != "logit_scale")
        results.append(dict(stage=stage, precision=precision, train_batch_size=engine.train_batch_size(),
                            global_steps=engine.global_steps, changed=changed, n_params=len(before) - 1,
                            clamped=clamped, after_lr0=float(after_lr0["logit_scale"][0]),
                            moved_at_lr0=moved_at_lr0, optimizer=type(engine.optimizer).__name__,
                            fused=getattr(engine.optimizer, "optimizer", engine.optimizer).param_groups[0]["fused"]))
    torch.save(results, out_path)


def test_one_rank_trains_at_stage_0_and_more_keep_their_stage():
    assert [effective_zero_stage(s, 1) for s in (0, 1, 2, 3)] == [0, 0, 0, 0]
    assert [effective_zero_stage(s, 2) for s in (0, 1, 2, 3)] == [0, 1, 2, 3]


@pytest.mark.slow  # DeepSpeed in a spawned process
def test_deepspeed_zero_stages_single_process(tmp_path):
    out = tmp_path / "single.pt"
    mp.spawn(_single_process_worker, args=(free_port(), str(out)), nprocs=1, join=True)
    for r in torch.load(out):
        where = f"ZeRO-{r['stage']} {r['precision']} ({r['optimizer']})"
        assert r["train_batch_size"] == 4 * 2 * 1, where
        assert r["global_steps"] == 2, where
        assert r["changed"] == r["n_params"], where  # every tensor got an update
        assert r["moved_at_lr0"] == 0.0, where       # our LR reached the wrapped optimiser
        assert r["fused"] is True, where  # DeepSpeed built torch's fused AdamW from the config
        tol = 0.02 if r["precision"] == "bf16" else 1e-6  # bf16 rounds log(100) to 4.59375
        assert r["clamped"] == pytest.approx(CEILING, abs=tol), where
        assert r["after_lr0"] <= CEILING + 1e-6, where  # the fp32 master was clamped too


# -- two ranks -------------------------------------------------------------------

def _two_rank_worker(rank, port, out_path):
    _init_dist(rank, WORLD, port)
    import deepspeed
    from deepspeed.utils import safe_get_full_grad

    from clipscale.train.optim import set_lr_
    images, tokens, img_feats, txt_feats = _global_batch()
    rows = slice(rank * LOCAL_BATCH, (rank + 1) * LOCAL_BATCH)
    result = {}

    # 1. The loss on features alone.
    img = img_feats[rows].clone().requires_grad_()
    txt = txt_feats[rows].clone().requires_grad_()
    scale = torch.tensor(20.0, requires_grad=True)
    loss = clip_loss(img, txt, scale, rank, WORLD)
    loss.backward()
    result["features"] = dict(loss=loss.detach(), img_grad=img.grad, txt_grad=txt.grad, scale_grad=scale.grad)

    # 2. Through a ZeRO-3 engine across both ranks, with the flattened temperature:
    #    the rank-averaged (and partitioned) gradients, then a step and the clamp.
    model = _tiny_model(logit_scale=CEILING + 0.5)
    flatten_scalar_params_(model)
    cfg = deepspeed_config(3, LOCAL_BATCH, 1, WORLD, 1.0, 1e-2, (0.9, 0.98), 1e-6, 0.1, "fp32")
    engine, *_ = deepspeed.initialize(model=model, model_parameters=param_groups(model, 0.1), config=cfg)
    set_lr_(engine.optimizer, 1e-2)
    img_f, txt_f, s = engine(images[rows], tokens[rows])
    engine.backward(clip_loss(img_f, txt_f, s, rank, WORLD))
    result["param_grads"] = {n: safe_get_full_grad(p).clone() for n, p in engine.module.named_parameters()}
    engine.step()
    clamp_logit_scale_(engine)
    _ds_step(engine, images[rows], tokens[rows], rank, WORLD, 0.0)
    with deepspeed.zero.GatheredParameters(list(engine.module.parameters())):
        result["zero3"] = {n: p.detach().clone() for n, p in engine.module.named_parameters()}
    torch.save(result, out_path.format(rank=rank))


@pytest.mark.slow  # DeepSpeed in two spawned processes
def test_two_ranks_match_single_process(tmp_path):
    out = str(tmp_path / "rank{rank}.pt")
    mp.spawn(_two_rank_worker, args=(free_port(), out), nprocs=WORLD, join=True)
    ranks = [torch.load(out.format(rank=r)) for r in range(WORLD)]
    images, tokens, img_feats, txt_feats = _global_batch()

    # Single-process reference on the whole global batch.
    img = img_feats.clone().requires_grad_()
    txt = txt_feats.clone().requires_grad_()
    scale = torch.tensor(20.0, requires_grad=True)
    ref = clip_loss(img, txt, scale)
    ref.backward()
    feats = [r["features"] for r in ranks]
    # Each rank's loss covers its rows; their mean is the global loss.
    assert torch.stack([f["loss"] for f in feats]).mean().item() == pytest.approx(ref.item(), rel=1e-5)
    # Rank-averaged gradients (what DDP/DeepSpeed apply) equal the reference; the
    # gather-with-grad backward sums every rank's contribution into each rank's rows.
    torch.testing.assert_close(torch.cat([f["img_grad"] for f in feats]) / WORLD, img.grad)
    torch.testing.assert_close(torch.cat([f["txt_grad"] for f in feats]) / WORLD, txt.grad)
    torch.testing.assert_close(torch.stack([f["scale_grad"] for f in feats]).mean(), scale.grad)

    model = _tiny_model(logit_scale=CEILING + 0.5)
    flatten_scalar_params_(model)
    img_f, txt_f, s = model(images, tokens)
    clip_loss(img_f, txt_f, s).backward()
    for name, param in model.named_parameters():
        # Summation order differs between the sharded and the whole-batch run:
        # allow float32 noise relative to the tensor's largest gradient.
        atol = 1e-4 * param.grad.abs().max().item() + 1e-8
        for r in ranks:
            torch.testing.assert_close(r["param_grads"][name], param.grad, rtol=1e-4, atol=atol,
                                       msg=lambda m: f"{name}: {m}")

    z0, z1 = ranks[0]["zero3"], ranks[1]["zero3"]
    assert z0.keys() == z1.keys()
    for name in z0:
        torch.testing.assert_close(z0[name], z1[name])
    assert z0["logit_scale"].shape == (1,)
    assert z0["logit_scale"].item() <= CEILING + 1e-6


def _zero2_tuning_worker(rank, port, out_path):
    """Two ZeRO-2 steps (2 micro-batches each) with DeepSpeed's defaults, then with the CPU tuning
    at a bucket small enough to split the tiny model into several reduces during backward."""
    _init_dist(rank, WORLD, port)
    import deepspeed
    images, tokens, _, _ = _global_batch()
    rows = slice(rank * LOCAL_BATCH, (rank + 1) * LOCAL_BATCH)
    half = LOCAL_BATCH // 2
    params = {}
    for name, zero in [("defaults", {"stage": 2}), ("tuned", {**zero_optimization(2, on_gpu=False),
                                                               "reduce_bucket_size": 2000})]:
        model = _tiny_model()
        flatten_scalar_params_(model)
        cfg = deepspeed_config(2, half, 2, WORLD, 1.0, 1e-2, (0.9, 0.98), 1e-6, 0.1, "fp32")
        cfg["zero_optimization"] = zero
        engine, *_ = deepspeed.initialize(model=model, model_parameters=param_groups(model, 0.1), config=cfg)
        for _ in range(2):
            for micro in range(2):
                r = slice(rows.start + micro * half, rows.start + (micro + 1) * half)
                _ds_step(engine, images[r], tokens[r], rank, WORLD, 1e-2)
        params[name] = {n: p.detach().clone() for n, p in engine.module.named_parameters()}
    torch.save(params, out_path.format(rank=rank))


@pytest.mark.slow  # DeepSpeed in two spawned processes
def test_cpu_zero2_tuning_trains_the_same_weights_as_deepspeeds_defaults(tmp_path):
    out = str(tmp_path / "rank{rank}.pt")
    mp.spawn(_zero2_tuning_worker, args=(free_port(), out), nprocs=WORLD, join=True)
    before = _tiny_model().state_dict()
    for r in range(WORLD):
        params = torch.load(out.format(rank=r))
        assert any(not torch.equal(params["tuned"][n], before[n].reshape(params["tuned"][n].shape))
                   for n in params["tuned"])  # it trained
        for name, value in params["defaults"].items():
            # Two ranks' sums are the same additions in either scheme: equal to the last bit.
            assert torch.equal(params["tuned"][name], value), name


def test_keep_hook_keeps_each_point_once_at_the_first_step_past_it():
    from clipscale.train.hooks import KeepHook, LoopState, StepState

    kept = []
    hook = KeepHook([96, 32, 32, 40], kept.append, start_samples=0)
    state = StepState(LoopState())
    for step in range(1, 5):  # batches of 32: 32, 64, 96, 128 samples
        state.progress.step, state.progress.samples_seen = step, 32 * step
        hook.post_step(state)
    assert kept == [32, 40, 96]  # 40 at the step that reached 64; each once, in order
    resumed = []
    KeepHook([32, 96], resumed.append, start_samples=64).post_step(StepState(LoopState(3, 96)))
    assert resumed == [96]  # 32 was kept before the restart
    stopped = StepState(LoopState(1, 32), stop_reason="diverged")
    KeepHook([32], resumed.append, start_samples=0).post_step(stopped)
    assert resumed == [96]  # a diverged step's weights are not kept
