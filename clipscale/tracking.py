"""MLflow conventions (ARCHITECTURE.md, "Tracking"): one experiment per ladder, one parent run per
ladder config, one nested child run per rung.

Runs are found again by tags rather than created anew, which is what makes a
second invocation add nothing: the parent by `clipscale.ladder_hash`, a rung
by `clipscale.config_hash`. A rung whose run is FINISHED is skipped; any other
status means it is continued in the same run. Everything that creates a run or
an experiment happens in the driver, before workers log (concurrent creation
of a sqlite store corrupts its migration; ARCHITECTURE.md, "Stack facts").
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

from mlflow.entities import Metric, Param, RunStatus, RunTag
from mlflow.tracking import MlflowClient

from clipscale import storage
from clipscale.names import (TAG_HASH, TAG_LADDER, TAG_LADDER_HASH, TAG_PARENT, TAG_RUNG,  # noqa: F401 - re-exported
                             TAG_SEED, TAG_STATUS_REASON)

# MLflow's marker for a training (not GenAI) experiment. MLflow 3.17.2's own UI follows its mode
# switch instead, which the links `clipscale ui` prints set.
TAG_EXPERIMENT_KIND = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"
MAX_PARAM_LEN = 6000  # MLflow 3's param value limit


def tracking_uri(configured: str | None = None, base: str | None = None) -> str:
    """Config, then $MLFLOW_TRACKING_URI, then a sqlite file in the working directory.

    A relative sqlite path is made absolute against `base` (default: the working
    directory), because Ray workers and Tune trials run in other directories.
    """
    uri = configured or os.environ.get("MLFLOW_TRACKING_URI") or "sqlite:///mlflow.db"
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        uri = "sqlite:///" + str(Path(base or os.getcwd(), uri[len("sqlite:///"):]).resolve())
    return uri


@dataclass
class Tracker:
    client: MlflowClient
    uri: str
    experiment_id: str

    @classmethod
    def open(cls, uri: str, experiment: str) -> Tracker:
        client = MlflowClient(uri)
        exp = client.get_experiment_by_name(experiment)
        exp_id = exp.experiment_id if exp is not None else client.create_experiment(experiment)
        if exp is None or exp.tags.get(TAG_EXPERIMENT_KIND) != EXPERIMENT_KIND:
            client.set_experiment_tag(exp_id, TAG_EXPERIMENT_KIND, EXPERIMENT_KIND)
        return cls(client, uri, exp_id)

    @classmethod
    def find(cls, uri: str, experiment: str) -> Tracker | None:
        """The experiment's tracker, or None: readers (status, ui) must not create experiments."""
        client = MlflowClient(uri)
        exp = client.get_experiment_by_name(experiment)
        return cls(client, uri, exp.experiment_id) if exp is not None else None

    # ---- finding and creating runs --------------------------------------------------

    def _search(self, filter_string: str) -> list:
        return self.client.search_runs([self.experiment_id], filter_string=filter_string,
                                       order_by=["attributes.start_time DESC"], max_results=1000)

    def parent_run(self, ladder: str, ladder_hash: str, config_yaml: str, params: dict) -> str:
        found = self._search(f"tags.`{TAG_LADDER_HASH}` = '{ladder_hash}' and tags.`{TAG_RUNG}` = ''") or [
            r for r in self._search(f"tags.`{TAG_LADDER_HASH}` = '{ladder_hash}'") if TAG_RUNG not in r.data.tags]
        if found:
            run_id = found[0].info.run_id
            self.client.update_run(run_id, status="RUNNING")
            return run_id
        run = self.client.create_run(self.experiment_id, run_name=ladder,
                                     tags={TAG_LADDER: ladder, TAG_LADDER_HASH: ladder_hash})
        run_id = run.info.run_id
        self.log_params(run_id, params)
        self.client.log_text(run_id, config_yaml, "config/resolved.yaml")
        return run_id

    def rung_run(self, parent_id: str, ladder: str, rung: str, config_hash: str, seed: int = 0,
                 run_name: str | None = None) -> tuple[str, str]:
        """(run_id, status) of a rung replicate's run; created (status NEW) when none exists.
        `clipscale.rung` is always the bare rung name; the replicate is `clipscale.seed`."""
        found = self._search(f"tags.`{TAG_HASH}` = '{config_hash}'")
        if found:
            run = found[0]
            if run.data.tags.get(TAG_PARENT) != parent_id:
                self.client.set_tag(run.info.run_id, TAG_PARENT, parent_id)
            return run.info.run_id, run.info.status
        run = self.client.create_run(self.experiment_id, run_name=run_name or rung, tags={
            TAG_LADDER: ladder, TAG_RUNG: rung, TAG_HASH: config_hash, TAG_PARENT: parent_id, TAG_SEED: str(seed)})
        return run.info.run_id, "NEW"

    def run_by_tag(self, tag: str, value: str, run_name: str) -> str:
        """The id of this experiment's run whose `tag` is `value`; created with that tag if none is."""
        found = [r for r in self._search(f"tags.`{tag}` = '{value}'")
                 if r.data.tags.get(tag) == value] if "'" not in value else []
        if found:
            return found[0].info.run_id
        return self.client.create_run(self.experiment_id, run_name=run_name, tags={tag: value}).info.run_id

    def run(self, run_id: str):
        """The MLflow run (info, params, metrics, tags)."""
        return self.client.get_run(run_id)

    def children(self, parent_id: str) -> list:
        return self._search(f"tags.`{TAG_PARENT}` = '{parent_id}'")

    def parents(self) -> list:
        """The experiment's ladder parent runs, newest first (children carry no ladder hash)."""
        return [r for r in self._search(f"tags.`{TAG_LADDER_HASH}` LIKE '%'") if TAG_RUNG not in r.data.tags]

    # ---- logging --------------------------------------------------------------------

    def log_params(self, run_id: str, params: dict) -> None:
        existing = self.client.get_run(run_id).data.params
        batch = [Param(k, str(v)[:MAX_PARAM_LEN]) for k, v in _flatten(params).items() if k not in existing]
        for i in range(0, len(batch), 100):
            self.client.log_batch(run_id, params=batch[i: i + 100])

    def log_metrics(self, run_id: str, metrics: dict, step: int = 0) -> None:
        import time

        now = int(time.time() * 1000)
        batch = [Metric(k, float(v), now, step) for k, v in metrics.items()
                 if isinstance(v, (int, float)) and math.isfinite(float(v))]
        for i in range(0, len(batch), 500):
            self.client.log_batch(run_id, metrics=batch[i: i + 500])

    def log_artifacts(self, run_id: str, local_dir: str, artifact_path: str | None = None) -> None:
        self.client.log_artifacts(run_id, local_dir, artifact_path)

    def set_tags(self, run_id: str, tags: dict) -> None:
        self.client.log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def finish(self, run_id: str, status: str = "FINISHED", reason: str = "") -> None:
        if reason:
            self.client.set_tag(run_id, TAG_STATUS_REASON, storage.scrub(reason)[:5000])
        self.client.set_terminated(run_id, status=status)

    def set_status(self, run_id: str, status: str) -> None:
        """A run's status while it lives (SCHEDULED, RUNNING); `finish` ends it."""
        self.client.update_run(run_id, status=status)

    def tags(self, run_id: str) -> dict[str, str]:
        return dict(self.client.get_run(run_id).data.tags)

    def status(self, run_id: str) -> str:
        return self.client.get_run(run_id).info.status

    def metrics(self, run_id: str) -> dict[str, float]:
        return dict(self.client.get_run(run_id).data.metrics)


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, f"{key}."))
        elif isinstance(v, (list, tuple)):
            out[key] = json.dumps(v)
        else:
            out[key] = v
    return out


def is_finished(status: str) -> bool:
    return status == RunStatus.to_string(RunStatus.FINISHED)
