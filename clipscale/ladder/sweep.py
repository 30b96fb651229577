"""Learning-rate sweeps: which LR each size wants, and the rule lr_opt(N) = c * N^-gamma.

`python experiments/sweep_lr.py --config CFG` runs, in the driver:
1. plan (`plan_sweep`): the chosen rungs (by default the four smallest by non-embedding parameters),
   each at a short sample budget, and per rung K learning rates drawn log-uniformly with the
   sweep's seed, one in each of K equal slices of the log range, so no two crowd together. The
   draw is a pure function of (seed, rung index), so `--dry-run` shows the LRs the real run trains;
2. provision as a ladder does (`provision.py`): absolute paths, the corpus and its validation split
   (the sweep is judged on `val/loss`, so a split is required), Ray;
3. tracking: experiment `<ladder experiment>-lr-sweep`, one parent run per sweep (found again by
   its id, a hash of its trials and scheduler) and one child run per trial, all created here
   before a worker logs; a trial whose child run has an outcome is not run again;
4. per rung, one Ray Tune search (`sweep_tune.py`): a grid over the planned LRs, with ASHA
   stopping trials early on `val/loss` measured at the worker's validation points;
5. the rule (`clipscale.scaling.lr_rule`), its plot and numbers on the parent run, and a YAML
   fragment a ladder names in `ladder.generate.lr_rule`.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from clipscale import names
from clipscale.config import ExperimentConfig, RungConfig

DEFAULT_LR_RANGE = (3e-4, 1e-2)  # brackets the tiny ladder's hand-set 1e-3..2e-3 by ~3x on either side
DEFAULT_SAMPLES = 4096  # per trial: 32 steps at the tiny ladder's batch of 128
DEFAULT_TRIALS = 4  # per rung
DEFAULT_RUNGS = 4  # the smallest this many rungs, by non-embedding parameters
# ASHA keeps the better half at each milestone: with 4 trials a rung, a factor of 4 would keep one
# trial past the first milestone and leave the parabola through the best trials too few points.
REDUCTION_FACTOR = 2.0
LR_DIGITS = 4  # significant digits of a planned LR: exact in JSON, YAML and MLflow params alike


class SweepError(ValueError):
    """A bad sweep setting or a sweep that cannot fit; the message names the flag or field."""


@dataclass(frozen=True)
class SweepSettings:
    rungs: tuple[int, ...] | None = None  # indices into ladder.rungs; None: the DEFAULT_RUNGS smallest
    trials: int = DEFAULT_TRIALS
    samples: int = DEFAULT_SAMPLES
    seed: int = 0
    lr_range: tuple[float, float] = DEFAULT_LR_RANGE
    reduction_factor: float = REDUCTION_FACTOR
    n_boot: int = 1000

    def validate(self) -> None:
        if self.trials < 1:
            raise SweepError(f"--trials: got {self.trials}; expected at least 1 trial per rung")
        if self.samples < 1:
            raise SweepError(f"--samples: got {self.samples}; expected a positive sample budget")
        lo, hi = self.lr_range
        if not (0 < lo < hi and math.isfinite(hi)):
            raise SweepError(f"--lr-range: got {lo:g},{hi:g}; expected LO,HI with 0 < LO < HI")
        if self.rungs is not None and (not self.rungs or len(set(self.rungs)) != len(self.rungs)):
            raise SweepError(f"--rungs: got {list(self.rungs)}; expected distinct rung indices")


@dataclass(frozen=True)
class AshaPlan:
    """One rung's ASHA settings, in samples seen (the worker reports val/loss with them)."""

    max_t: int  # the trial budget
    grace_period: int  # the first validation point: no trial is judged before it has a val/loss
    reduction_factor: float
    time_attr: str = names.SAMPLES_SEEN
    metric: str = names.VAL_LOSS
    mode: str = "min"

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass
class SweepTrial:
    rung: RungConfig  # the ladder's rung at this trial's learning rate and sample budget
    rung_index: int
    nonembedding_params: int
    slot: int  # position among its rung's trials, LRs ascending

    @property
    def lr(self) -> float:
        return float(self.rung.lr)

    @property
    def samples(self) -> int:
        return self.rung.budget

    @property
    def key(self) -> str:
        return f"{self.rung.name}-t{self.slot}"

    def to_dict(self) -> dict:
        return {"key": self.key, "rung": self.rung.name, "rung_index": self.rung_index, "lr": self.lr,
                "samples": self.samples, "batch_size": self.rung.batch_size,
                "nonembedding_params": self.nonembedding_params}


@dataclass
class SweepPlan:
    ladder: str
    settings: SweepSettings
    trials: list[SweepTrial]
    asha: dict[str, AshaPlan]  # rung name -> its scheduler settings

    @property
    def rungs(self) -> list[str]:
        """The chosen rungs, smallest first."""
        return list(dict.fromkeys(t.rung.name for t in self.trials))

    def of_rung(self, name: str) -> list[SweepTrial]:
        return [t for t in self.trials if t.rung.name == name]

    def to_dict(self) -> dict:
        s = self.settings
        return {"ladder": self.ladder, "seed": s.seed, "lr_range": list(s.lr_range), "trials_per_rung": s.trials,
                "samples": s.samples, "rungs": self.rungs, "trials": [t.to_dict() for t in self.trials],
                "scheduler": {"name": "ASHAScheduler", "rungs": {r: a.to_dict() for r, a in self.asha.items()}}}


def draw_lrs(seed: int, rung_index: int, k: int, lr_range: tuple[float, float]) -> list[float]:
    """K learning rates, log-uniform over lr_range, one in each of K equal slices of the log range
    (ascending). Seeded by (seed, rung index), so choosing other rungs leaves a rung's LRs alone."""
    rng = np.random.default_rng([seed, rung_index])
    edges = np.linspace(math.log(lr_range[0]), math.log(lr_range[1]), k + 1)
    logs = edges[:-1] + rng.uniform(size=k) * np.diff(edges)
    return [float(f"{math.exp(x):.{LR_DIGITS}g}") for x in logs]


def default_rungs(sizes: dict[int, int], count: int = DEFAULT_RUNGS) -> tuple[int, ...]:
    """The `count` smallest rungs by non-embedding parameters (ties: the earlier rung)."""
    return tuple(sorted(sizes, key=lambda i: (sizes[i], i))[:count])


def plan_sweep(cfg: ExperimentConfig, settings: SweepSettings) -> SweepPlan:
    # open_clip here, not at import: the CLI's --help and the fit need no model code.
    from clipscale.model import param_counts
    from clipscale.train.validation import measurement_points

    settings.validate()
    rungs = cfg.ladder.rungs
    bad = [i for i in settings.rungs or () if not 0 <= i < len(rungs)]
    if bad:
        raise SweepError(f"--rungs: {bad} not rung indices of ladder {cfg.ladder.name!r} (0..{len(rungs) - 1})")
    sizes = {i: param_counts(r.model)["nonembedding"] for i, r in enumerate(rungs)
             if settings.rungs is None or i in settings.rungs}
    chosen = sorted(settings.rungs or default_rungs(sizes), key=lambda i: (sizes[i], i))
    trials, asha = [], {}
    for i in chosen:
        rung = rungs[i]
        if settings.samples < rung.batch_size:
            raise SweepError(f"--samples: {settings.samples} is less than one global batch of rung "
                             f"{rung.name!r} ({rung.batch_size})")
        for slot, lr in enumerate(draw_lrs(settings.seed, i, settings.trials, settings.lr_range)):
            at = dataclasses.replace(rung, lr=lr, samples=settings.samples, seeds=None)
            trials.append(SweepTrial(at, i, sizes[i], slot))
        budget = trials[-1].samples
        asha[rung.name] = AshaPlan(budget, min(measurement_points(budget, cfg.eval.every_samples), budget),
                                   settings.reduction_factor)
    return SweepPlan(cfg.ladder.name, settings, trials, asha)


def sweep_id(cfg: ExperimentConfig, plan: SweepPlan) -> str:
    """What identifies a sweep: every trial's rung hash (model, LR, budget, training, data) and the
    scheduler. The same sweep run again finds its parent run and skips the trials that ended."""
    payload = [plan.ladder, [cfg.rung_hash(t.rung) for t in plan.trials],
               {r: a.to_dict() for r, a in plan.asha.items()}]
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def experiment_name(cfg: ExperimentConfig) -> str:
    return f"{cfg.tracking.experiment or cfg.ladder.name}-lr-sweep"


def default_fragment_path(config_path: str, ladder: str) -> Path:
    """`<ladder>.lr.yaml` beside the config: `ladder.generate.lr_rule` names it relative to the config."""
    return Path(config_path).parent / f"{ladder}.lr.yaml"


# ---- the outcome of a trial, and the fragment -------------------------------------------------


@dataclass
class TrialRecord:
    """A trial as its child run recorded it."""

    key: str
    rung: str
    n: int
    lr: float
    outcome: str  # names.SWEEP_OUTCOMES
    loss: float  # last val/loss; inf when diverged
    samples: int


def record_outcome(tracker, run_id: str, outcome: str, loss: float | None, samples: int, reason: str = "") -> None:
    """End a trial's child run: its outcome tag, final loss and samples reached. A diverged or
    failed trial's run is FAILED with the reason; the rest are FINISHED."""
    metrics = {names.SWEEP_SAMPLES: samples}
    if loss is not None and math.isfinite(loss):
        metrics[names.SWEEP_FINAL_LOSS] = loss
    tracker.log_metrics(run_id, metrics)
    tracker.set_tags(run_id, {names.TAG_SWEEP_OUTCOME: outcome})
    tracker.finish(run_id, "FINISHED" if outcome in ("completed", "stopped_early") else "FAILED", reason)


def fragment(fit, plan: SweepPlan, run_id: str, config: str, records: list[TrialRecord]) -> dict:
    """The YAML fragment `ladder.generate.lr_rule` reads: c, gamma, their intervals, the parameter
    count they are in, provenance; then what else helps a reader (each size's optimum)."""
    rung_of = {r.n: r.rung for r in records}
    s = plan.settings
    return {
        "c": float(fit.c), "gamma": float(fit.gamma),
        "c_ci": [float(v) for v in fit.ci["c"]], "gamma_ci": [float(v) for v in fit.ci["gamma"]],
        "param_count": "nonembedding", "sweep_run_id": run_id, "date": datetime.date.today().isoformat(),
        "config": config,
        "ci_level": float(fit.level), "ci_method": fit.ci_method, "r2": float(fit.r2),
        "sweep": {"ladder": plan.ladder, "samples_per_trial": s.samples, "trials_per_rung": s.trials,
                  "seed": s.seed, "lr_range": [float(v) for v in s.lr_range], "scheduler": "ASHAScheduler",
                  "metric": names.VAL_LOSS},
        "per_size": [{"rung": rung_of.get(int(o.n), ""), "nonembedding_params": int(o.n), "lr_opt": float(o.lr_opt),
                      "method": o.method, "best_lr": float(o.best_lr), "best_val_loss": float(o.best_loss),
                      "trials": o.n_trials, "best_at_edge": o.at_edge} for o in fit.optima],
    }


def write_fragment(path: Path, doc: dict) -> Path:
    import yaml

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    header = (f"# Learning-rate rule lr_opt(N) = c * N^-gamma, N = non-embedding parameters, fitted by\n"
              f"# experiments/sweep_lr.py --config {doc['config']} (MLflow run {doc['sweep_run_id']}, {doc['date']}).\n"
              f"# A ladder uses it through `ladder.generate.lr_rule: {path.name}`.\n")
    path.write_text(header + yaml.safe_dump(doc, sort_keys=False))
    return path


@dataclass
class SweepResult:
    parent_id: str
    experiment: str
    uri: str
    records: list[TrialRecord] = field(default_factory=list)
    fit: object | None = None  # clipscale.scaling.lr_rule.LrRuleFit
    fragment_path: Path | None = None
