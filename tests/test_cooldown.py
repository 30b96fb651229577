"""WSD cooldown branches (clipscale.ladder.cooldown): the plan's arithmetic, the readers keeping a
branch as its own (N, D) row, and (slow) a branch resuming from its main rung's kept state."""

from __future__ import annotations

import shutil

import pytest
import torch

from clipscale.config import load_config
from clipscale.ladder import cooldown
from clipscale.ladder.plan import RungPlan

RUNG = ("ladder.rungs=[{name: r0, model: {embed_dim: 32, image_size: 16, patch_size: 4, vision_width: 32, "
        "vision_layers: 1, vision_head_width: 16, context_length: 16, text_width: 32, text_heads: 2, "
        "text_layers: 1}, samples: SAMPLES, batch_size: 32, workers: 1}]")


def _cfg(*overrides, samples=400):
    return load_config(None, [RUNG.replace("SAMPLES", str(samples)), "train.schedule=wsd", "train.decay_fraction=0.25",
                              "ladder.cooldowns=[0.5, 0.25]", "cluster.storage_path=/store/runs", *overrides])


def _plans(cfg, seeds=(0,)):
    rung = cfg.ladder.rungs[0]
    return [RungPlan(0, rung, s, len(seeds) > 1, cfg.rung_hash(rung, s), 1000, 100, 10) for s in seeds]


def test_branch_plans_budgets_starts_hashes_and_compute():
    cfg = _cfg()  # budget 384 (12 batches of 32)
    (main,) = _plans(cfg)
    half, quarter = cooldown.branch_plans(cfg, [main])
    # 0.5: D_b = 192, leaving the stable phase at 0.75 x 192 = 144 -> 128 (whole batches); 0.25: 96 -> 64.
    assert (half.key, half.rung.budget, half.start_samples) == ("r0-cd0.5", 192, 128)
    assert (quarter.key, quarter.rung.budget, quarter.start_samples) == ("r0-cd0.25", 96, 64)
    assert half.rung.name == "r0" and half.cooldown == 0.5  # tagged with its rung, its own key
    assert cooldown.branch_points(cfg, cfg.ladder.rungs[0]) == (64, 128)
    assert half.train_flops == 3 * 10 * 192 and half.cooldown_flops == 3 * 10 * (192 - 128)
    assert main.cooldown_flops == 0 and cooldown.main_key(half) == "r0"
    hashes = {main.config_hash, half.config_hash, quarter.config_hash}
    assert len(hashes) == 3 and half.config_hash == cooldown.branch_hash(cfg, main.rung, 0, 0.5)
    assert half.to_dict()["name"] == "r0-cd0.5" and half.to_dict()["cooldown_of"] == "r0"
    # The trial finds the main run's kept state under the main run's own Ray Train name.
    rung, start, config_hash = cooldown.branch_start(cfg, cfg.ladder.rungs[0], 0, 0.5)
    assert rung == half.rung and config_hash == half.config_hash
    assert start.checkpoint == f"/store/runs/{cooldown.trial_name(cfg, 'r0', main.config_hash)}/kept/samples-000000128"
    assert (start.samples, start.warmup) == (128, 38)  # the main rung's warm-up: 10% of 384
    # Replicates: each seed branches from its own run.
    two = _cfg("ladder.seeds=[0, 1]")
    keys = [p.key for p in cooldown.branch_plans(two, _plans(two, (0, 1)))]
    assert keys == ["r0-s0-cd0.5", "r0-s0-cd0.25", "r0-s1-cd0.5", "r0-s1-cd0.25"]
    seed1 = f"/tiny-r0-s1-{two.rung_hash(two.ladder.rungs[0], 1)}/kept/"
    assert seed1 in cooldown.branch_start(two, two.ladder.rungs[0], 1, 0.5)[1].checkpoint


def test_dry_run_lists_branches_and_their_extra_compute():
    cfg = _cfg("ladder.seeds=[0, 1]")
    rows, extra = cooldown.dry_run_entries(cfg, _plans(cfg, (0, 1)))
    assert [(r["name"], r["seeds"], r["samples"]) for r in rows] == [("r0-cd0.5", [0, 1], 192), ("r0-cd0.25", [0, 1], 96)]
    assert extra == 2 * 3 * 10 * ((192 - 128) + (96 - 64))


def test_reader_keeps_a_branch_as_its_own_row(tmp_path):
    from mlflow.entities import Metric, Param
    from mlflow.tracking import MlflowClient

    from clipscale import names
    from clipscale.scaling import load_runs
    from tests.test_scaling_mlflow import _empty_store

    shutil.copy(_empty_store(), tmp_path / "mlflow.db")
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(uri)
    exp = client.create_experiment("cd")
    parent = client.create_run(exp, tags={"clipscale.ladder": "cd"}).info.run_id
    for samples, tags, loss in ((400, {}, 3.0), (200, {names.TAG_COOLDOWN_OF: "w0", names.TAG_COOLDOWN_FRACTION: "0.5"},
                                                     3.4)):
        run = client.create_run(exp, tags={names.TAG_PARENT: parent, names.TAG_RUNG: "w0", names.TAG_SEED: "0",
                                           names.TAG_HASH: f"h{samples}", **tags}).info.run_id
        client.log_batch(run, metrics=[Metric("val/loss", loss, 0, 0), Metric("compute/flops", 6.0 * samples, 0, 0)],
                         params=[Param("samples", str(samples)), Param("nonembedding_params", "100")])
        client.set_terminated(run, "FINISHED")
    df = load_runs(parent_run_id=parent, tracking_uri=uri)
    rows = {r["rung"]: r for _, r in df.iterrows()}
    assert set(rows) == {"w0", "w0-cd0.5"} and not df.attrs["excluded"]  # neither merged nor superseded
    assert rows["w0-cd0.5"]["samples"] == 200 and rows["w0-cd0.5"]["val/loss"] == 3.4
    assert rows["w0"]["samples"] == 400 and rows["w0-cd0.5"]["nonembedding_params"] == rows["w0"]["nonembedding_params"]


@pytest.mark.slow
def test_wsd_branch_resumes_from_the_kept_state_and_trains_exactly_its_budget(tmp_path, s3, s3_corpus, ray_local):
    """A 384-sample WSD rung keeps its full state at 128, where its 0.5 branch (192 samples) leaves
    the stable phase; the branch restores it, decays over 160..192 and stops at exactly 192."""
    from mlflow.tracking import MlflowClient

    from clipscale.evaluate import load_checkpoint_state
    from clipscale.export import open_clip_state
    from clipscale.train.trainer import fit_rung
    from tests.test_scaling_mlflow import _empty_store

    shutil.copy(_empty_store(), tmp_path / "mlflow.db")
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(uri)
    exp = client.create_experiment("cooldown")
    main_run, branch_run = (client.create_run(exp).info.run_id for _ in range(2))
    common = (f"data.storage.endpoint_url={s3.endpoint_url}", f"cluster.storage_path={tmp_path / 'runs'}",
              "ladder.cooldowns=[0.5]", "train.lr=2e-3", "train.min_lr=1e-4", "train.log_every_steps=1",
              "train.max_failures=0", "data.shuffle=false")
    cfg = _cfg(*common, "train.keep_checkpoints_at=[160]", samples=384)
    rung = cfg.ladder.rungs[0]
    assert cooldown.branch_points(cfg, rung) == (128,)
    main = fit_rung(cfg, rung, s3_corpus, evaluate=False, tracking_uri=uri, run_id=main_run,
                    keep_state_at=cooldown.branch_points(cfg, rung),
                    name=cooldown.trial_name(cfg, "r0", cfg.rung_hash(rung, 0)))
    assert main.status == "finished" and main.samples_seen == 384

    # The branch checkpoints every step, so its state after its first step can be read back.
    branch_rung, start, branch_hash = cooldown.branch_start(cfg, rung, 0, 0.5)
    cfg_b = _cfg(*common, "train.checkpoint_every_samples=32", samples=384)
    result = fit_rung(cfg_b, branch_rung, s3_corpus, evaluate=False, tracking_uri=uri, run_id=branch_run,
                      start_from=start, name=cooldown.trial_name(cfg, "r0-cd0.5", branch_hash))
    assert result.status == "finished" and (result.samples_seen, result.steps) == (192, 6)
    assert len(result.loss_curve) == 2  # only steps 5 and 6 ran: nothing before the branch point was retrained
    assert result.train_flops == 3 * result.flops_per_sample * 192

    seen = [m.value for m in client.get_metric_history(branch_run, "train/samples_seen")]
    assert seen == [160.0, 192.0]  # its first step is s0 + batch
    lr = {m.step: m.value for m in client.get_metric_history(branch_run, "train/lr")}
    assert lr == {5: pytest.approx(2e-3), 6: pytest.approx(1e-4)}  # the stable rate first, min_lr at its end
    main_lr = {m.step: m.value for m in client.get_metric_history(main_run, "train/lr")}
    assert main_lr[5] == lr[5] and main_lr[6] == pytest.approx(2e-3)  # the main run is still stable there

    # The branch's first step started from the main run's kept state at 128: same weights, same batch
    # (data position restored), same rate, so after it both stand at the same weights.
    kept = tmp_path / "runs" / cooldown.trial_name(cfg, "r0", cfg.rung_hash(rung, 0)) / "kept"
    meta, at_s0 = _engine_weights(kept / "samples-000000128")
    assert meta["state"]["samples_seen"] == 128  # the state the branch restored
    main_160 = open_clip_state(load_checkpoint_state(str(kept / "samples-000000160")).state)
    branch_dir = tmp_path / "runs" / cooldown.trial_name(cfg, "r0-cd0.5", branch_hash)
    first, last = sorted(p for p in branch_dir.glob("checkpoint_*") if p.is_dir())  # Ray keeps the last two
    meta, branch_160 = _engine_weights(first)
    assert meta["state"]["samples_seen"] == 160
    for k in main_160:
        torch.testing.assert_close(branch_160[k], main_160[k], rtol=1e-5, atol=1e-6, msg=lambda m, k=k: f"{k}: {m}")
    final = _engine_weights(last)[1]
    assert not torch.equal(at_s0["visual.conv1.weight"], branch_160["visual.conv1.weight"])  # it trained
    assert not torch.equal(final["visual.conv1.weight"], branch_160["visual.conv1.weight"])


def _engine_weights(folder) -> tuple[dict, dict]:
    """(clipscale.json, module weights) of a one-worker checkpoint folder, from DeepSpeed's own file:
    a single worker trains at ZeRO stage 0, whose files zero_to_fp32 cannot consolidate."""
    import json

    from clipscale.export import open_clip_state

    meta = json.loads((folder / "clipscale.json").read_text())
    states = torch.load(folder / meta["tag"] / "mp_rank_00_model_states.pt", map_location="cpu", weights_only=False)
    return meta, open_clip_state(states["module"])
