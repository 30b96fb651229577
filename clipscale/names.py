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
