"""train.precision=bf16 through Ray Train + DeepSpeed on CPU, so a GPU run does not meet the bf16 path
(DeepSpeed's bf16 config, bf16 inputs, the fp32 master copies the logit-scale clamp reaches) first."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from clipscale.train.checkpoint import META_FILE, read_model
from clipscale.train.trainer import fit_rung
from tests.test_train import make_cfg

pytestmark = pytest.mark.slow


def _engine_states(checkpoint: str) -> dict:
    """DeepSpeed's own file for rank 0 in the final checkpoint: the module as the engine held it."""
    tag = json.loads(Path(checkpoint, META_FILE).read_text())["tag"]
    return torch.load(Path(checkpoint, tag, "mp_rank_00_model_states.pt"), map_location="cpu", weights_only=False)


def test_one_worker_trains_in_bf16_on_cpu(tmp_path, s3, s3_corpus, ray_local):
    # One worker: ZeRO stage 0, where DeepSpeed's bf16 path is its unfused optimiser with fp32 masters.
    cfg = make_cfg(tmp_path, s3, "train.precision=bf16", "train.max_failures=0", samples=128, workers=1)
    rung = cfg.ladder.rungs[0]
    result = fit_rung(cfg, rung, s3_corpus, evaluate=False, name="bf16-cpu")
    assert result.status == "finished", result.reason
    assert result.samples_seen == 128 and result.steps == 4
    assert result.loss_curve and all(math.isfinite(x) for x in result.loss_curve), result.loss_curve

    states = _engine_states(result.checkpoint)
    assert states["ds_config"]["bf16"]["enabled"] is True
    dtypes = {v.dtype for v in states["module"].values() if v.is_floating_point()}
    assert dtypes == {torch.bfloat16}, dtypes  # the engine really held (and trained) bf16 weights
    weights = read_model(result.checkpoint, json.loads(Path(result.checkpoint, META_FILE).read_text()))
    assert all(torch.isfinite(v).all() for v in weights.values())
    assert weights["logit_scale"].exp().item() <= 100.0 + 1e-2
