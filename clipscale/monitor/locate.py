"""Which ladder a reader means: the newest parent run of an experiment, of the whole store, or a
given parent run id. Parents carry `clipscale.ladder_hash` and no `clipscale.rung`; rungs are their
children by `mlflow.parentRunId` (clipscale.tracking)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from clipscale.tracking import TAG_LADDER_HASH, TAG_RUNG, Tracker


@dataclass(frozen=True)
class Ladder:
    tracker: Tracker
    experiment: str
    parent: object  # mlflow.entities.Run of the ladder's parent run

    @property
    def parent_id(self) -> str:
        return self.parent.info.run_id

    @property
    def name(self) -> str:
        return self.parent.info.run_name


def public_uri(uri: str) -> str:
    """The tracking URI without any user:password part, for printing."""
    parts = urlsplit(uri)
    if parts.password is None and parts.username is None:
        return uri
    host = parts.hostname or ""
    return urlunsplit(parts._replace(netloc=host + (f":{parts.port}" if parts.port else "")))


def find_ladder(uri: str, experiment: str | None = None, parent_run: str | None = None) -> Ladder:
    """The ladder to show; LookupError names what was looked for and where when there is none."""
    where = public_uri(uri)
    if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///"):]).is_file():
        # MLflow would create an empty store there: a mistyped path must not look like "no ladders".
        raise LookupError(f"no tracking store at {where} (no such file)")
    if parent_run:
        return _by_parent_id(uri, parent_run, where)
    if experiment:
        tracker = Tracker.find(uri, experiment)
        if tracker is None:
            raise LookupError(f"no experiment {experiment!r} in tracking store {where}")
        parents = tracker.parents()
        if not parents:
            raise LookupError(f"experiment {experiment!r} in {where} has no ladder parent run yet")
        return Ladder(tracker, experiment, parents[0])
    return _newest(uri, where)


def _by_parent_id(uri: str, run_id: str, where: str) -> Ladder:
    client = MlflowClient(uri)
    try:
        run = client.get_run(run_id)
    except MlflowException as e:
        raise LookupError(f"no run {run_id!r} in tracking store {where}") from e
    if TAG_RUNG in run.data.tags or TAG_LADDER_HASH not in run.data.tags:
        raise LookupError(f"run {run_id!r} in {where} is not a ladder parent run (no {TAG_LADDER_HASH} tag, "
                          f"or it is a rung)")
    exp = client.get_experiment(run.info.experiment_id)
    return Ladder(Tracker(client, uri, exp.experiment_id), exp.name, run)


def _newest(uri: str, where: str) -> Ladder:
    client = MlflowClient(uri)
    experiments = {e.experiment_id: e.name for e in client.search_experiments()}
    if not experiments:
        raise LookupError(f"tracking store {where} has no experiments: run a ladder first (make run)")
    runs = client.search_runs(list(experiments), filter_string=f"tags.`{TAG_LADDER_HASH}` LIKE '%'",
                              order_by=["attributes.start_time DESC"], max_results=200)
    parents = [r for r in runs if TAG_RUNG not in r.data.tags]
    if not parents:
        raise LookupError(f"tracking store {where} has no ladder parent run: run a ladder first (make run)")
    exp_id = parents[0].info.experiment_id
    return Ladder(Tracker(client, uri, exp_id), experiments[exp_id], parents[0])
