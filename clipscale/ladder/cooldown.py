"""Cooldown branches of a WSD ladder (`ladder.cooldowns`): several data sizes per model from one run.

Under warmup-stable-decay (Hu et al. 2024, MiniCPM; Hägele et al. 2024, "Scaling Laws and
Compute-Optimal Training Beyond Fixed Training Durations") the learning rate is constant until the
decay, so the run of a shorter length D is the main run up to D's own decay start. A branch at
fraction f of a rung with budget B and global batch b is the (N, D_b) point, D_b = f x B in whole
batches. It leaves the stable phase at s0 = optim.branch_point(D_b) (whole batches; the main run,
D_b < B, is still stable there), so:

- the main rung keeps its full training state at every s0 (`WorkerJob.keep_state_at`, through the
  same retention as `train.keep_checkpoints_at`: loop._keep, kept/samples-<N>/ beside its Ray
  Train checkpoints);
- after the main rungs, one Tune trial per (rung, seed, f) restores that state on its first attempt
  (`WorkerJob.start_from`; restarts use the branch's own Ray checkpoints), trains D_b - s0 more
  samples with its own linear decay, and is evaluated like a rung, on its own child run.

A branch's compute (`compute/flops` on its run) is that of the model it yields, 3 x F x D_b; what it
costs beyond its main rung is its decay, 3 x F x (D_b - s0), summed on the parent as
`compute/cooldown_flops`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json

from clipscale import names, storage
from clipscale.config import ExperimentConfig, RungConfig
from clipscale.ladder.plan import RungPlan, seeds_of
from clipscale.train.job import BranchStart
from clipscale.train.optim import branch_point, cooldown_budget, warmup_samples


def branch_rung(cfg: ExperimentConfig, rung: RungConfig, fraction: float) -> tuple[RungConfig, int]:
    """The branch's rung (the main rung at D_b samples, under its own name) and its start s0."""
    samples = cooldown_budget(rung.budget, fraction, rung.batch_size)
    return dataclasses.replace(rung, samples=samples), branch_point(samples, cfg.train.decay_fraction, rung.batch_size)


def branch_points(cfg: ExperimentConfig, rung: RungConfig) -> tuple[int, ...]:
    """Where the main rung keeps its full training state: every branch's start."""
    return tuple(sorted({branch_rung(cfg, rung, f)[1] for f in cfg.ladder.cooldowns}))


def branch_hash(cfg: ExperimentConfig, rung: RungConfig, seed: int, fraction: float) -> str:
    """What decides a branch's result: its main rung's hash (schedule included) and the fraction."""
    blob = json.dumps({"rung": cfg.rung_hash(rung, seed), "cooldown": fraction}, sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def trial_name(cfg: ExperimentConfig, key: str, config_hash: str) -> str:
    """A replicate's (or branch's) Ray Train run name, under `cluster.storage_path`."""
    return f"{cfg.ladder.name}-{key}-{config_hash}"


def branch_plans(cfg: ExperimentConfig, plans: list[RungPlan]) -> list[RungPlan]:
    """One plan per (main replicate, fraction), in the main plans' order."""
    out = []
    for p in plans:
        for f in cfg.ladder.cooldowns if p.cooldown is None else ():
            rung, start = branch_rung(cfg, p.rung, f)
            out.append(dataclasses.replace(p, rung=rung, config_hash=branch_hash(cfg, p.rung, p.seed, f),
                                           cooldown=f, start_samples=start))
    return out


def main_key(p: RungPlan) -> str:
    """The plan key of a branch's main replicate."""
    return dataclasses.replace(p, cooldown=None).key


def branch_start(cfg: ExperimentConfig, rung: RungConfig, seed: int, fraction: float) -> tuple[RungConfig, BranchStart, str]:
    """For a branch's trial: its rung, where it starts (the main run's kept folder at s0 and the main
    rung's warm-up) and its config hash. `cfg`'s paths are the driver's resolved ones."""
    from clipscale.train.checkpoint import KEPT_DIR, kept_name  # torch: not at import, for the driver

    branch, start = branch_rung(cfg, rung, fraction)
    key = f"{rung.name}-s{seed}" if len(seeds_of(cfg, rung)) > 1 else rung.name
    main_run = trial_name(cfg, key, cfg.rung_hash(rung, seed))
    kept = storage.join(cfg.cluster.storage_path, main_run, KEPT_DIR, kept_name(start))
    warmup = warmup_samples(cfg.train.warmup_samples, cfg.train.warmup_fraction, rung.budget)
    return branch, BranchStart(kept, start, warmup), branch_hash(cfg, rung, seed, fraction)


def branch_tags(p: RungPlan) -> dict[str, str]:
    """A branch's child run, beside `clipscale.rung` (its main rung's name): what it branches from."""
    return {names.TAG_COOLDOWN_OF: p.rung.name, names.TAG_COOLDOWN_FRACTION: f"{p.cooldown:g}",
            names.TAG_COOLDOWN_START: str(p.start_samples)}


def dry_run_entries(cfg: ExperimentConfig, plans: list[RungPlan]) -> tuple[list[dict], int]:
    """The branches for `--dry-run`, one entry per (size, fraction) with its seeds, and the compute
    they add beyond the main rungs (their decays, every seed)."""
    entries: dict[str, dict] = {}
    for p in branch_plans(cfg, plans):
        d = {k: v for k, v in p.to_dict().items() if k not in ("seed", "config_hash")}
        entries.setdefault(d["name"], {**d, "seeds": []})["seeds"].append(p.seed)
    rows = list(entries.values())
    return rows, sum(r["cooldown_flops"] * len(r["seeds"]) for r in rows)
