"""The MLflow names every part of clipscale and its notebooks rely on, defined once.

Plain strings and small formatters, no imports: the scaling readers and the monitor use them
without loading MLflow or torch.
"""

from __future__ import annotations

# Tags. A ladder is one experiment; its parent run carries the ladder hash; each rung replicate
# is a nested child run with the bare rung name, its seed and the hash of what decides its result.
TAG_LADDER = "clipscale.ladder"
TAG_LADDER_HASH = "clipscale.ladder_hash"
TAG_RUNG = "clipscale.rung"
TAG_HASH = "clipscale.config_hash"
TAG_SEED = "clipscale.seed"
TAG_PARENT = "mlflow.parentRunId"
TAG_STATUS_REASON = "clipscale.failure_reason"
# An outside model scored beside a ladder (`clipscale eval --reference-for`): not a rung, never fitted.
TAG_REFERENCE = "clipscale.reference"
TAG_COMPARISON = "clipscale.comparison"  # "<A> vs <B>: <target>" on a `clipscale compare` run
# Where a rung's workers ran on its last attempt: JSON {node id: {"ip", "ranks"}}.
TAG_WORKER_NODES = "clipscale.worker_nodes"
# A cooldown branch (ladder.cooldowns): a child run tagged with its rung (TAG_RUNG, the parent rung's
# name) and these; its own (N, D) point, which the scaling readers name `cooldown_name(rung, fraction)`.
TAG_COOLDOWN_OF = "clipscale.cooldown_of"  # the main rung's name
TAG_COOLDOWN_FRACTION = "clipscale.cooldown_fraction"  # of the main rung's budget
TAG_COOLDOWN_START = "clipscale.cooldown_start"  # samples: where it left the main run's stable phase
COOLDOWN_FLOPS = "compute/cooldown_flops"  # parent: the branches' own training compute (their decays)


def cooldown_name(rung: str, fraction: float) -> str:
    """A cooldown branch's name: `<rung>-cd<fraction>` (w32-l1-cd0.25)."""
    return f"{rung}-cd{fraction:g}"


def zeroshot(task: str, kind: str) -> str:
    """`zeroshot/<task>/<kind>`: kind is top1, top5, error, chance, mean_per_class_recall, n."""
    return f"zeroshot/{task}/{kind}"


def node_device_seconds(node_id: str) -> str:
    """`compute/node/<node id>/device_seconds`: one node's share of `compute/device_seconds`."""
    return f"compute/node/{node_id}/device_seconds"


# What a rung's data was, for data-constrained laws (repetition): distinct samples trained on, and
# passes over the corpus (samples seen / samples the corpus holds; below 1 until it repeats).
DATA_UNIQUE = "data/unique_samples"
DATA_EPOCHS = "data/epochs"


def data_source(source: str, kind: str) -> str:
    """`data/source/<name>/<kind>` for one source of a mixture: kind is samples or epochs."""
    return f"data/source/{source}/{kind}"


# Learning-rate sweeps (`experiments/sweep_lr.py`): experiment `<ladder experiment>-lr-sweep`, one
# parent run per sweep, one child run per trial.
VAL_LOSS = "val/loss"  # what the worker measures on the held-out split, and what the sweep's scheduler reads
SAMPLES_SEEN = "samples_seen"  # in a worker's report to Ray Train: the scheduler's clock
TAG_SWEEP = "clipscale.lr_sweep"  # parent: the sweep's id (a hash of its trials and scheduler)
TAG_SWEEP_TRIAL = "clipscale.lr_sweep.trial"  # child: "<sweep id>/<trial key>", to find it again
TAG_SWEEP_OUTCOME = "clipscale.lr_sweep.outcome"  # child: completed, stopped_early, diverged or failed
TAG_SWEEP_SCHEDULER = "clipscale.lr_sweep.scheduler"  # parent: the Tune scheduler's class name
SWEEP_FINAL_LOSS = "sweep/final_val_loss"  # child: its last val/loss (fewer samples when stopped early)
SWEEP_SAMPLES = "sweep/samples_reached"  # child: samples trained when it ended
SWEEP_OUTCOMES = ("completed", "stopped_early", "diverged", "failed")


def lr_rule(key: str) -> str:
    """`lr_rule/<key>` on a sweep's parent: c, gamma, their interval ends (`c_lo`...), r2."""
    return f"lr_rule/{key}"


def lr_optimum(rung: str) -> str:
    """`lr_rule/optimum/<rung>` on a sweep's parent: that size's chosen learning rate."""
    return f"lr_rule/optimum/{rung}"
