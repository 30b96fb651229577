"""A ladder's plan: one entry per (rung, seed) replicate, with what decides its result hashed."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

from clipscale.config import ExperimentConfig, RungConfig
from clipscale.names import cooldown_name


@dataclass
class RungPlan:
    index: int
    rung: RungConfig
    seed: int  # the replicate: added to data.seed for init and data order
    replicated: bool  # the rung has more than one seed
    config_hash: str
    params: int
    nonembedding_params: int
    flops_per_sample: int
    # A cooldown branch (clipscale.ladder.cooldown): `rung` is its main rung at the branch's budget,
    # `config_hash` the branch's, and it starts from the main run's state at `start_samples`.
    cooldown: float | None = None
    start_samples: int = 0

    @property
    def key(self) -> str:
        """Unique within a ladder: the rung's name, its seed when it is replicated, and a branch's fraction."""
        key = f"{self.rung.name}-s{self.seed}" if self.replicated else self.rung.name
        return key if self.cooldown is None else cooldown_name(key, self.cooldown)

    @property
    def train_flops(self) -> int:
        """The compute of the model it yields (a branch's includes what it shares with its main rung)."""
        return 3 * self.flops_per_sample * self.rung.budget

    @property
    def cooldown_flops(self) -> int:
        """A branch's own compute, beyond its main rung's: its decay. 0 for a main rung."""
        return 0 if self.cooldown is None else 3 * self.flops_per_sample * (self.rung.budget - self.start_samples)

    def to_dict(self, samples_per_sec_per_device: float | None = None) -> dict:
        out = {"name": self.rung.name, "seed": self.seed, "params": self.params,
               "nonembedding_params": self.nonembedding_params, "flops_per_sample": self.flops_per_sample,
               "samples": self.rung.budget, "train_flops": self.train_flops, "batch_size": self.rung.batch_size,
               "workers": self.rung.workers, "config_hash": self.config_hash}
        if self.cooldown is not None:
            out.update(name=cooldown_name(self.rung.name, self.cooldown), cooldown_of=self.rung.name,
                       cooldown_fraction=self.cooldown, start_samples=self.start_samples,
                       cooldown_flops=self.cooldown_flops)
        if samples_per_sec_per_device:
            out["est_device_days"] = self.rung.budget / samples_per_sec_per_device / 86400.0
        return out


def seeds_of(cfg: ExperimentConfig, rung: RungConfig) -> list[int]:
    return rung.seeds if rung.seeds is not None else cfg.ladder.seeds


def plan(cfg: ExperimentConfig) -> list[RungPlan]:
    # open_clip here, not at import: Tune trials import this package and never plan.
    from clipscale.model import forward_flops, param_counts

    out = []
    for i, rung in enumerate(cfg.ladder.rungs):
        if cfg.ladder.only and i not in cfg.ladder.only:
            continue
        counts, flops = param_counts(rung.model), forward_flops(rung.model)
        seeds = seeds_of(cfg, rung)
        for seed in seeds:
            out.append(RungPlan(i, rung, seed, len(seeds) > 1, cfg.rung_hash(rung, seed), counts["total"],
                                counts["nonembedding"], flops))
    return out


def ladder_hash(cfg: ExperimentConfig) -> str:
    hashes = sorted(cfg.rung_hash(r, s) for r in cfg.ladder.rungs for s in seeds_of(cfg, r))
    return hashlib.sha256(json.dumps([cfg.ladder.name, hashes]).encode()).hexdigest()[:16]
