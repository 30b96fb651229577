"""The MLflow names every part of clipscale and its notebooks rely on, defined once.

Plain strings and one formatter, no imports: the scaling readers and the monitor use them
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


def zeroshot(task: str, kind: str) -> str:
    """`zeroshot/<task>/<kind>`: kind is top1, top5, error, chance, mean_per_class_recall, n."""
    return f"zeroshot/{task}/{kind}"
