"""Experiment configuration: typed dataclasses, loaded from YAML plus dotted overrides.

    cfg = load_config("experiments/configs/tiny.yaml", ["train.lr=1e-3", "ladder.only=[0,1]"])

Every value is checked against its field's type and its section's rules
before anything starts; a `ConfigError` names the dotted key, the bad value
and what is allowed.
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import json
import re
import types
import typing
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

import yaml

from clipscale import ladder_rules
from clipscale.errors import ConfigError
from clipscale.ladder_rules import GenerateConfig
from clipscale.model_spec import ModelSpec
from clipscale.storage import StorageSettings
from clipscale.testing.faults import Faults


class Precision(StrEnum):
    AUTO = "auto"  # bf16 on GPU, fp32 on CPU
    BF16 = "bf16"
    FP32 = "fp32"


class Objective(StrEnum):
    CLIP = "clip"  # softmax InfoNCE over the batch, both directions (Radford et al. 2021)
    SIGLIP = "siglip"  # pairwise sigmoid loss with a learnt bias (Zhai et al. 2023)


class LRSchedule(StrEnum):
    COSINE = "cosine"  # warm-up, then cosine to min_lr over the whole budget (CLIP, open_clip)
    # warm-up, stable, then a linear decay over the last decay_fraction of the budget (Hu et al. 2024,
    # MiniCPM; Hägele et al. 2024): shorter runs branch off the stable phase (ladder.cooldowns)
    WSD = "wsd"


class ScalingTarget(StrEnum):
    VAL_LOSS = "val_loss"  # the validation loss: the smooth quantity (Kaplan et al. 2020; OLMo's ladder)
    ZEROSHOT = "zeroshot"  # zero-shot error on `scaling.task`


class PlacementStrategy(StrEnum):
    """Where a rung's workers go, as Ray placement-group strategies (best effort, not STRICT_*)."""

    PACK = "PACK"  # as few nodes as fit (Ray's default): collectives stay inside a node
    SPREAD = "SPREAD"  # across nodes: one lost node takes fewer of a rung's workers with it


class ScalingX(StrEnum):
    FLOPS = "flops"
    DEVICE_DAYS = "device_days"


@dataclass
class SyntheticConfig:
    """The procedural corpus generated on first use when `data.shards` is empty."""

    out: str = "data/synthetic"
    samples: int = 20000
    val_samples: int = 2000  # a validation split from its own RNG stream, under `out`/val
    shard_size: int = 1000
    seed: int = 0
    image_size: int = 32
    kind_weights: dict[str, float] | None = None  # scene mix; None: the generator's default

    def validate(self, p: str) -> None:
        from clipscale.data.synthetic import KIND_WEIGHTS

        for kind, w in (self.kind_weights or {}).items():
            if kind not in KIND_WEIGHTS or w < 0:
                raise ConfigError(f"{p}.kind_weights.{kind}", w, f"a weight >= 0 for one of {sorted(KIND_WEIGHTS)}")


@dataclass
class SourceConfig:
    """One corpus of a mixture: its shards (or a synthetic corpus made on first use) and weight."""

    name: str
    weight: float = 1.0  # its expected share of every batch: weight / sum of weights
    shards: str | list[str] = ""
    val_shards: str | list[str] = ""  # this source's validation split; or data.val_fraction of its shards
    synthetic: SyntheticConfig | None = None  # when `shards` is empty

    def validate(self, p: str) -> None:
        if not self.name or "/" in self.name:
            raise ConfigError(f"{p}.name", self.name, "a non-empty name without '/'")
        _positive(f"{p}.weight", self.weight)
        if bool(self.shards) == (self.synthetic is not None):
            raise ConfigError(f"{p}.shards", self.shards, f"shards, or a {p}.synthetic corpus (exactly one of the two)")
        if self.synthetic is not None:
            self.synthetic.validate(f"{p}.synthetic")
            if self.val_shards:
                raise ConfigError(f"{p}.val_shards", self.val_shards,
                                  "empty for a synthetic source (its validation split is generated with it)")


@dataclass
class DataConfig:
    shards: str | list[str] = ""  # folder/prefix, brace pattern or list; "" -> the synthetic corpus
    # A mixture instead of `shards`: batches drawn from these by weight (deterministic per seed).
    sources: list[SourceConfig] = field(default_factory=list)
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)
    storage: StorageSettings = field(default_factory=StorageSettings)
    shuffle: bool = True
    seed: int = 0
    max_bad_fraction: float = 0.2
    val_shards: str | list[str] = ""  # a user corpus's validation split; never trained on
    val_fraction: float = 0.0  # or: hold out this fraction of whole shards, chosen by a hash of their names

    def validate(self, p: str = "data") -> None:
        self.synthetic.validate(f"{p}.synthetic")
        self._validate_sources(p)
        _positive(f"{p}.synthetic.val_samples", self.synthetic.val_samples)
        if not 0.0 <= self.val_fraction < 1.0:
            raise ConfigError(f"{p}.val_fraction", self.val_fraction, "a fraction in [0, 1)")
        if self.val_shards and self.val_fraction:
            raise ConfigError(f"{p}.val_fraction", self.val_fraction,
                              f"0 when {p}.val_shards names the validation split (set one of the two)")
        _positive(f"{p}.synthetic.samples", self.synthetic.samples)
        _positive(f"{p}.synthetic.shard_size", self.synthetic.shard_size)
        if not 0.0 <= self.max_bad_fraction <= 1.0:
            raise ConfigError(f"{p}.max_bad_fraction", self.max_bad_fraction, "a fraction in [0, 1]")

    def _validate_sources(self, p: str) -> None:
        if not self.sources:
            return
        for key in ("shards", "val_shards"):
            if getattr(self, key):
                raise ConfigError(f"{p}.{key}", getattr(self, key),
                                  f"empty when {p}.sources is set (a mixture names each source's shards and "
                                  f"val_shards; set {p}.{key} or {p}.sources, not both)")
        for i, source in enumerate(self.sources):
            source.validate(f"{p}.sources.{i}")
        seen = [s.name for s in self.sources]
        if len(set(seen)) != len(seen):
            raise ConfigError(f"{p}.sources", seen, "sources with unique names")


@dataclass
class TrainConfig:
    """Defaults follow CLIP (Radford et al. 2021, sec. 2.5): AdamW, decoupled weight
    decay 0.2, beta2 0.98, eps 1e-6, cosine schedule, temperature init 0.07."""

    lr: float = 5e-4
    min_lr: float = 0.0
    weight_decay: float = 0.2
    betas: list[float] = field(default_factory=lambda: [0.9, 0.98])
    eps: float = 1e-6
    warmup_fraction: float = 0.1  # of the rung's samples; `warmup_samples` wins when > 0
    warmup_samples: int = 0
    grad_clip: float = 1.0
    grad_accum: int = 1
    objective: Objective = Objective.CLIP
    schedule: LRSchedule = LRSchedule.COSINE
    decay_fraction: float = 0.2  # wsd: the decay's share of the budget (Hägele et al. 2024 use 0.2)
    zero_stage: int = 2
    precision: Precision = Precision.AUTO
    grad_checkpointing: bool = False
    log_every_steps: int = 10
    checkpoint_every_samples: int = 0  # 0: only at the end
    # Sample counts at which the model is also kept for good (Ray Train keeps only the latest
    # checkpoint): each is logged on the rung's run as an open_clip export, checkpoints/samples-<N>/.
    keep_checkpoints_at: list[int] = field(default_factory=list)
    max_failures: int = 2
    torch_threads: int = 0  # intra-op threads per worker; 0 keeps Ray's default (its CPU share)

    def validate(self, p: str = "train") -> None:
        _positive(f"{p}.lr", self.lr)
        if self.zero_stage not in (0, 1, 2, 3):
            raise ConfigError(f"{p}.zero_stage", self.zero_stage, "one of 0, 1, 2, 3")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ConfigError(f"{p}.betas", self.betas, "two numbers in [0, 1)")
        if not 0 <= self.warmup_fraction < 1:
            raise ConfigError(f"{p}.warmup_fraction", self.warmup_fraction, "a fraction in [0, 1)")
        if not 0 < self.decay_fraction < 1:
            raise ConfigError(f"{p}.decay_fraction", self.decay_fraction, "a fraction in (0, 1)")
        if self.schedule == LRSchedule.WSD and self.warmup_fraction + self.decay_fraction > 1:
            raise ConfigError(f"{p}.decay_fraction", self.decay_fraction,
                              f"at most 1 - {p}.warmup_fraction ({1 - self.warmup_fraction:g}) with "
                              f"{p}.schedule=wsd: the warm-up must end before the decay starts")
        for key in ("grad_accum", "log_every_steps"):
            _positive(f"{p}.{key}", getattr(self, key))
        for key in ("weight_decay", "grad_clip", "checkpoint_every_samples", "max_failures", "warmup_samples", "min_lr"):
            if getattr(self, key) < 0:
                raise ConfigError(f"{p}.{key}", getattr(self, key), "a number >= 0")
        if not all(isinstance(n, int) and n > 0 for n in self.keep_checkpoints_at):
            raise ConfigError(f"{p}.keep_checkpoints_at", self.keep_checkpoints_at, "a list of sample counts > 0")


@dataclass
class RungConfig:
    """One model on the ladder. `lr`/`zero_stage` of None take `train.*`."""

    name: str
    model: ModelSpec
    samples: int
    batch_size: int  # global batch, over all workers
    workers: int = 1
    seeds: list[int] | None = None  # None: ladder.seeds
    lr: float | None = None
    zero_stage: int | None = None

    def validate(self, p: str) -> None:
        if not self.name or "/" in self.name:
            raise ConfigError(f"{p}.name", self.name, "a non-empty name without '/'")
        self.model.validate(f"{p}.model")
        _positive(f"{p}.samples", self.samples)
        _positive(f"{p}.batch_size", self.batch_size)
        _positive(f"{p}.workers", self.workers)
        if self.batch_size % self.workers:
            raise ConfigError(f"{p}.batch_size", self.batch_size, f"a multiple of workers ({self.workers})")
        if self.samples < self.batch_size:
            raise ConfigError(f"{p}.samples", self.samples, f"at least one global batch ({self.batch_size})")
        if self.lr is not None:
            _positive(f"{p}.lr", self.lr)
        if self.seeds is not None:
            _check_seeds(f"{p}.seeds", self.seeds)
        if self.zero_stage is not None and self.zero_stage not in (0, 1, 2, 3):
            raise ConfigError(f"{p}.zero_stage", self.zero_stage, "one of 0, 1, 2, 3 (or null for train.zero_stage)")

    @property
    def steps(self) -> int:
        return self.samples // self.batch_size

    @property
    def budget(self) -> int:
        """Samples actually trained: whole global batches, so the budget is exact across restarts."""
        return self.steps * self.batch_size


@dataclass
class LadderConfig:
    name: str = "tiny"
    rungs: list[RungConfig] = field(default_factory=list)
    only: list[int] | None = None  # indices into rungs
    max_concurrent: int = 0  # 0: sized from the cluster's resources
    seeds: list[int] = field(default_factory=lambda: [0])  # replicates of every rung (init and data order)
    # Cooldown branches (train.schedule=wsd): each rung also yields the (N, f x budget) point for every
    # fraction f, decayed from its stable-phase state (clipscale/ladder/cooldown.py).
    cooldowns: list[float] = field(default_factory=list)
    # Rungs by rule (clipscale/ladder_rules.py), instead of `rungs`. load_config derives the rungs
    # and clears this; `provenance` then says, per rung and field, where each value came from.
    # No hash reads either: the derived rungs themselves are hashed.
    generate: GenerateConfig | None = None
    provenance: dict[str, dict[str, str]] = field(default_factory=dict)

    def derive_rungs(self, p: str = "ladder") -> None:
        """Replace `generate` by the rungs it derives (imports open_clip: only when it is set)."""
        if self.generate is None:
            return
        if self.rungs:
            raise ConfigError(f"{p}.generate", "set", f"unset while {p}.rungs lists rungs by hand: {p}.rungs or "
                                                      f"{p}.generate, not both ({p}.rungs=[] drops listed rungs)")
        derived = ladder_rules.derive(self.generate, f"{p}.generate")
        self.rungs = [RungConfig(name=d.name, model=d.model, samples=d.samples, batch_size=d.batch_size,
                                 workers=d.workers, lr=d.lr) for d in derived]
        self.provenance = {d.name: d.provenance for d in derived}
        self.generate = None

    def validate(self, p: str = "ladder") -> None:
        if not self.name:
            raise ConfigError(f"{p}.name", self.name, "a non-empty ladder name")
        if self.generate is not None:
            raise ConfigError(f"{p}.generate", "set", "rungs derived by load_config (which clears this key)")
        if not self.rungs:
            raise ConfigError(f"{p}.rungs", self.rungs, "at least one rung")
        names = [r.name for r in self.rungs]
        if len(set(names)) != len(names):
            raise ConfigError(f"{p}.rungs", names, "unique rung names")
        for i, rung in enumerate(self.rungs):
            rung.validate(f"{p}.rungs.{i}")
        for i in self.only or []:
            if not 0 <= i < len(self.rungs):
                raise ConfigError(f"{p}.only", self.only, f"indices in 0..{len(self.rungs) - 1}")
        if self.max_concurrent < 0:
            raise ConfigError(f"{p}.max_concurrent", self.max_concurrent, "0 (auto) or a positive count")
        _check_seeds(f"{p}.seeds", self.seeds)
        if len(set(self.cooldowns)) != len(self.cooldowns) or not all(0 < f < 1 for f in self.cooldowns):
            raise ConfigError(f"{p}.cooldowns", self.cooldowns, "distinct fractions of each rung's budget in (0, 1)")
        stale = sorted(set(self.provenance) - set(names))
        if stale:
            raise ConfigError(f"{p}.provenance", stale, f"names of {p}.rungs")


@dataclass
class EvalConfig:
    tasks: list[str] = field(default_factory=lambda: ["shape", "color", "shape_color", "count", "digit"])
    root: str = "data/eval"  # where eval sets live (generated there on first use for synthetic tasks)
    seed: int = 1_000_003
    n_per_task: int = 500
    linear_probe: bool = True
    batch_size: int = 256
    val_batch_size: int = 256  # val/loss batches: fixed size and order, so rungs with other batch sizes compare
    val_samples: int = 1024  # validation samples per measurement (the split's first ones, always the same)
    every_samples: int = 0  # in-training val/loss and zero-shot every this many samples; 0: five times per rung
    log_model: bool = True  # each finished rung's open_clip export, as artifacts under model/ on its child run
    max_model_mb: float = 2048.0  # a bigger export is not logged (the checkpoint still holds it)

    def validate(self, p: str = "eval") -> None:
        _positive(f"{p}.n_per_task", self.n_per_task)
        _positive(f"{p}.batch_size", self.batch_size)
        _positive(f"{p}.val_batch_size", self.val_batch_size)
        _positive(f"{p}.val_samples", self.val_samples)
        if self.every_samples < 0:
            raise ConfigError(f"{p}.every_samples", self.every_samples, "0 (five times per rung) or a positive count")
        _positive(f"{p}.max_model_mb", self.max_model_mb)


@dataclass
class TrackingConfig:
    uri: str | None = None  # None: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db in the working directory
    experiment: str | None = None  # None: the ladder's name
    retry_seconds: float = 120.0  # how long logging waits out an unreachable tracking server

    def validate(self, p: str = "tracking") -> None:
        _positive(f"{p}.retry_seconds", self.retry_seconds)


@dataclass
class ClusterConfig:
    address: str | None = None  # None: an existing cluster if RAY_ADDRESS is set, else a local Ray
    cpus_per_worker: float = 0.5  # below 1 so Ray Data keeps CPU to decode with
    gpus_per_worker: float = 0.0
    storage_path: str = "runs"  # Ray Train checkpoints: local path or s3://bucket/prefix
    placement_strategy: PlacementStrategy = PlacementStrategy.PACK  # a rung's workers over nodes
    # More than one node makes node-local paths an error; set it for an autoscaling cluster
    # that starts with one node, where the driver cannot see the nodes still to come.
    expect_nodes: int = 1

    def validate(self, p: str = "cluster") -> None:
        _positive(f"{p}.expect_nodes", self.expect_nodes)
        if self.cpus_per_worker <= 0:
            raise ConfigError(f"{p}.cpus_per_worker", self.cpus_per_worker, "a number > 0")
        if self.gpus_per_worker < 0:
            raise ConfigError(f"{p}.gpus_per_worker", self.gpus_per_worker, "a number >= 0")


@dataclass
class ScalingConfig:
    target: ScalingTarget = ScalingTarget.VAL_LOSS  # what the live fit follows
    x: ScalingX = ScalingX.FLOPS
    task: str = "shape_color"
    holdout: int = 1
    bootstrap: int = 200
    # The two-step prediction's error floor: the task error of a perfect model (0 for the generated
    # eval sets); null fits it, which a ladder far from its floor cannot pin (clipscale.scaling.twostep).
    error_floor: float | None = 0.0

    def validate(self, p: str = "scaling") -> None:
        for key in ("holdout", "bootstrap"):
            if getattr(self, key) < 0:
                raise ConfigError(f"{p}.{key}", getattr(self, key), "a count >= 0")
        if self.error_floor is not None and not 0 <= self.error_floor < 1:
            raise ConfigError(f"{p}.error_floor", self.error_floor, "an error rate in [0, 1), or null to fit it")


@dataclass
class ExperimentConfig:
    ladder: LadderConfig = field(default_factory=LadderConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    scaling: ScalingConfig = field(default_factory=ScalingConfig)
    faults: Faults = field(default_factory=Faults)  # reliability tests only; never part of a rung's hash

    def validate(self) -> ExperimentConfig:
        for f in dataclasses.fields(self):
            section = getattr(self, f.name)
            if hasattr(section, "validate"):
                section.validate(f.name)
        _check_schedule(self)
        return self

    def to_dict(self) -> dict:
        return to_dict(self)

    def rung_hash(self, rung: RungConfig, seed: int = 0) -> str:
        """What decides a rung's result: the rung, its replicate seed, training, data and eval settings.
        Tracking, cluster and scaling settings change where a run goes, not what it computes."""
        # Whether and how the model is logged changes where it goes, not what it computes.
        evals = {k: v for k, v in to_dict(self.eval).items() if k not in ("log_model", "max_model_mb")}
        train = {k: v for k, v in to_dict(self.train).items() if k != "keep_checkpoints_at"}  # what is kept, not trained
        if train["objective"] == Objective.CLIP:
            del train["objective"]  # the default before the key existed: earlier CLIP rungs keep their hashes
        if train["schedule"] == LRSchedule.COSINE:  # likewise; decay_fraction means nothing to cosine
            del train["schedule"], train["decay_fraction"]
        data = to_dict(self.data)
        if not data["sources"]:
            del data["sources"]  # the default before mixtures existed: earlier rungs keep their hashes
        payload = {"rung": to_dict(rung), "train": train, "data": data, "eval": evals, "seed": seed}
        payload["rung"].pop("seeds", None)  # the replicate's own seed is what counts
        if payload["rung"]["lr"] is None:
            payload["rung"]["lr"] = self.train.lr
        if payload["rung"]["zero_stage"] is None:
            payload["rung"]["zero_stage"] = self.train.zero_stage
        blob = json.dumps(payload, sort_keys=True, default=str).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


def _check_schedule(cfg: ExperimentConfig) -> None:
    """Checks across sections, rung by rung (branch points fall on whole batches): a WSD warm-up
    ends before the decay, and each cooldown branch leaves its rung's stable phase past the warm-up."""
    from clipscale.train.optim import branch_point, cooldown_budget, warmup_samples, wsd_decay_start

    train, cooldowns = cfg.train, cfg.ladder.cooldowns
    if cooldowns and train.schedule != LRSchedule.WSD:
        raise ConfigError("ladder.cooldowns", cooldowns, f"[] unless train.schedule=wsd (it is {train.schedule}): "
                                                         "a branch decays from the stable phase of a WSD rung")
    if train.schedule != LRSchedule.WSD:
        return
    for rung in cfg.ladder.rungs:
        warmup, b = warmup_samples(train.warmup_samples, train.warmup_fraction, rung.budget), rung.batch_size
        if warmup > wsd_decay_start(rung.budget, train.decay_fraction, b):
            raise ConfigError("train.warmup_samples", warmup, f"at most {wsd_decay_start(rung.budget, train.decay_fraction, b)}"
                              f" with train.schedule=wsd: rung {rung.name}'s decay starts there")
        for f in cooldowns:
            start = branch_point(cooldown_budget(rung.budget, f, b), train.decay_fraction, b)
            if start < max(warmup, b):
                raise ConfigError("ladder.cooldowns", f, f"a fraction whose branch of rung {rung.name} leaves the stable "
                                  f"phase at or past its warm-up ({warmup} samples) and one batch ({b}); it leaves "
                                  f"at {start} (train.decay_fraction={train.decay_fraction:g})")


# ---- generic typed loading -------------------------------------------------------------


def _positive(key: str, value) -> None:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or value <= 0:
        raise ConfigError(key, value, "a number > 0")


def _check_seeds(key: str, seeds: list[int]) -> None:
    if not seeds or len(set(seeds)) != len(seeds) or any(s < 0 for s in seeds):
        raise ConfigError(key, seeds, "a non-empty list of distinct seeds >= 0")


def _type_name(tp) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _convert(tp, value, key: str):
    """Check/convert one value against a type annotation; recurse into dataclasses and lists."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(tp)
        if value is None and type(None) in options:
            return None
        for option in (o for o in options if o is not type(None)):
            try:
                return _convert(option, value, key)
            except ConfigError:
                continue
        raise ConfigError(key, value, " or ".join(_type_name(o) for o in options))
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(key, value, f"a mapping of {tp.__name__} fields")
        return from_dict(tp, value, key)
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(key, value, "a mapping")
        _, item = typing.get_args(tp) or (Any, Any)
        return {str(k): _convert(item, v, f"{key}.{k}") for k, v in value.items()}
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(key, value, "a list")
        (item,) = typing.get_args(tp) or (Any,)
        return [_convert(item, v, f"{key}.{i}") for i, v in enumerate(value)]
    if tp is Any:
        return value
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        # Case does not matter: YAML users write `spread` as often as `SPREAD`.
        match = next((m for m in tp if str(m.value).lower() == str(value).lower()), None)
        if match is None:
            raise ConfigError(key, value, f"one of {', '.join(str(m.value) for m in tp)}")
        return match
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(key, value, "true or false")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)  # YAML writes 1e6 as a float
        raise ConfigError(key, value, "an integer")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise ConfigError(key, value, "a number")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(key, value, "a string")
    return value


def from_dict(cls, data: dict, prefix: str = ""):
    if not isinstance(data, dict):
        raise ConfigError(prefix or "<root>", data, f"a mapping of {cls.__name__} fields")
    if cls is ModelSpec:
        return ModelSpec.from_dict(data, prefix)
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for key in data:
        if key not in names:
            raise ConfigError(_join(prefix, key), data[key], f"a known key of {prefix or 'the config'}: {sorted(names)}")
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name in data:
            kwargs[f.name] = _convert(hints[f.name], data[f.name], _join(prefix, f.name))
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(_join(prefix, f.name), None, "a value (this key is required)")
    return cls(**kwargs)


def to_dict(obj) -> Any:
    if isinstance(obj, enum.Enum):
        return obj.value
    if isinstance(obj, ModelSpec):
        return obj.to_dict()
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    return obj


def _join(prefix: str, key: str) -> str:
    return f"{prefix}.{key}" if prefix else key


_YAML11_FLOAT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


def apply_override(data: dict, override: str) -> None:
    """`a.b.0.c=value` into a nested dict/list; the value is parsed as YAML (`[0,1]`, `1e-3`, `null`)."""
    if "=" not in override:
        raise ConfigError(override, None, "an override of the form key.path=value")
    path, raw = override.split("=", 1)
    value = yaml.safe_load(raw) if raw.strip() else ""
    if isinstance(value, str) and _YAML11_FLOAT.fullmatch(value.strip()):
        value = float(value)  # YAML 1.1 reads "1e-3" (no dot) as a string
    keys = path.strip().split(".")
    node: Any = data
    for i, key in enumerate(keys[:-1]):
        nxt = keys[i + 1]
        if isinstance(node, list):
            if not key.isdigit() or int(key) >= len(node):
                raise ConfigError(".".join(keys[: i + 1]), key, f"an index below {len(node)}")
            node = node[int(key)]
        else:
            node = node.setdefault(key, [] if nxt.isdigit() else {})
    last = keys[-1]
    if isinstance(node, list):
        if not last.isdigit() or int(last) >= len(node):
            raise ConfigError(path, last, f"an index below {len(node)}")
        node[int(last)] = value
    else:
        node[last] = value


def _read_yaml(path: Path, key: str = "--config", seen: tuple[Path, ...] = ()) -> dict:
    """A config file's mapping, with `base: OTHER.yaml` (relative to this file) read first and
    this file's keys merged over it, section by section."""
    if not path.exists():
        raise ConfigError(key, str(path), "an existing YAML file")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(key, str(path), f"valid YAML ({e})") from None
    ladder_rules.anchor_paths(data, path)  # ladder.generate.lr_rule is relative to the file that names it
    base = data.pop("base", None)
    if base is None:
        return data
    base_path = (path.parent / str(base)).resolve()
    if base_path in seen:
        raise ConfigError(f"{path.name}: base", str(base), "a file that does not include itself")
    inherited = _read_yaml(base_path, f"{path.name}: base", (*seen, path.resolve()))
    # This file's `generate` replaces the base's listed `rungs` (and the other way round).
    return _merge(ladder_rules.drop_replaced(inherited, data), data)


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> ExperimentConfig:
    data: dict = _read_yaml(Path(path)) if path is not None else {}
    for override in overrides or []:
        apply_override(data, override)
    ladder = data.get("ladder")
    generate = ladder.pop("generate", None) if isinstance(ladder, dict) else None
    if generate is not None and not ladder.get("rungs"):
        ladder.pop("rungs", None)  # `ladder.rungs=[]` or null: no listed rungs beside the generated ones
    cfg = from_dict(ExperimentConfig, data)
    if generate is not None:  # loaded on its own, so that its errors name keys inside it
        cfg.ladder.generate = ladder_rules.load_generate(generate, "ladder.generate")
    cfg.ladder.derive_rungs("ladder")  # before validate, so every later step sees plain rungs
    return cfg.validate()


def dump_config(cfg: ExperimentConfig) -> str:
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)
