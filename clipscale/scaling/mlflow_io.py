"""Read a ladder's rungs from MLflow (or a CSV) into one row per rung.

Conventions (ARCHITECTURE.md, "Tracking"): one experiment per ladder; a parent run per ladder invocation;
a nested child run per rung tagged `clipscale.rung`, `clipscale.config_hash` and
`mlflow.parentRunId`, with final metrics `zeroshot/<task>/error|top1`, `compute/flops`,
`compute/device_days` and params `nonembedding_params`, `samples`.

A resumed ladder reuses finished child runs of an earlier parent, so by default every
FINISHED child run of the experiment counts, deduplicated by config hash (latest wins).

Replicates: every child carries `clipscale.seed` (runs from before replicates do not, and
count as seed 0). Runs are kept per (rung, seed) and then grouped into one row per rung:
the mean over seeds, with `n_seeds`, `seeds` and each target's seed sd and standard error
(clipscale.scaling.replicates). A single-seed ladder gives the same rows as before.

Cooldown branches (`ladder.cooldowns`) carry their parent rung in `clipscale.rung` and the fraction
in `clipscale.cooldown_fraction`; each is its own row, `<rung>-cd<fraction>` (same N, its own D), so
one ladder's rows vary D at fixed N and `clipscale fit-nd` runs on them.
"""

from __future__ import annotations

import logging
import os
import re
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from clipscale.names import TAG_HASH as HASH_TAG
from clipscale.names import TAG_PARENT as PARENT_TAG
from clipscale.names import TAG_COOLDOWN_FRACTION, TAG_REFERENCE, cooldown_name
from clipscale.names import TAG_RUNG as RUNG_TAG
from clipscale.names import zeroshot
from clipscale.scaling.replicates import DEFAULT_SEED, SEED_TAG, group_by_rung

log = logging.getLogger(__name__)

BASE_COLUMNS = ["rung", "flops", "device_days", "nonembedding_params", "samples"]
SEED_COLUMNS = ["n_seeds", "seeds"]
_RENAMED_METRICS = {"compute/flops": "flops", "compute/device_days": "device_days"}
_TASK_RE = re.compile(r"^zeroshot/(.+)/(error|top1)$")


class ScalingInputError(ValueError):
    """Input the fits cannot use: a missing experiment, run, task or column. The message names it."""


def _check_sqlite_exists(uri: str) -> None:
    # MlflowClient would silently create an empty database at a mistyped path.
    if uri.startswith("sqlite:///"):
        path = Path(uri[len("sqlite:///") :])
        if not path.exists():
            raise ScalingInputError(f"no MLflow database at {path} (tracking URI {uri!r})")


def _all_runs(client, experiment_id: str):
    from mlflow.entities import ViewType

    runs, token = [], None
    while True:
        page = client.search_runs([experiment_id], run_view_type=ViewType.ACTIVE_ONLY, max_results=1000, page_token=token)
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def _rung_name(run) -> str | None:
    """The row a run belongs to: its rung, or for a cooldown branch (tagged with its parent rung) the
    branch's own name, so that it stays its own (N, D) point and is never merged with its main rung."""
    tags = run.data.tags
    fraction = tags.get(TAG_COOLDOWN_FRACTION)
    return tags.get(RUNG_TAG) if fraction is None else cooldown_name(tags[RUNG_TAG], float(fraction))


def _row(run) -> dict:
    tags, params, metrics = run.data.tags, run.data.params, run.data.metrics
    row = {
        "rung": _rung_name(run),
        "seed": tags.get(SEED_TAG, DEFAULT_SEED),
        "run_id": run.info.run_id,
        "parent_run_id": tags.get(PARENT_TAG),
        "config_hash": tags.get(HASH_TAG),
        "start_time": run.info.start_time,
        # Runs from before the key existed trained CLIP's objective.
        "objective": params.get("train.objective", "clip"),
    }
    if TAG_COOLDOWN_FRACTION in tags:
        row["cooldown_fraction"] = float(tags[TAG_COOLDOWN_FRACTION])
    for p in ("nonembedding_params", "samples"):
        row[p] = pd.to_numeric(params.get(p), errors="coerce") if p in params else float("nan")
    for name, value in metrics.items():
        row[_RENAMED_METRICS.get(name, name)] = value
    # Error is 1 - top1 by convention; fill it in for runs that logged only top1.
    for name in list(metrics):
        m = _TASK_RE.match(name)
        if m and m.group(2) == "top1":
            row.setdefault(f"zeroshot/{m.group(1)}/error", 1.0 - metrics[name])
    return row


def load_runs(experiment_name: str | None = None, parent_run_id: str | None = None, tracking_uri: str | None = None,
              *, per_seed: bool = False) -> pd.DataFrame:
    """One row per rung with columns rung, flops, device_days, nonembedding_params, samples,
    n_seeds, seeds, and one column per final metric (`zeroshot/<task>/error`, `val/loss`, ...),
    each the mean over the rung's seeds, sorted by flops. Targets (`val/loss`,
    `zeroshot/<task>/error|top1`) also get `<col>:sd` and `<col>:se` over seeds (NaN for one
    seed). `run_id` joins the rung's run ids in seed order. per_seed=True gives one row per
    run instead, with its `seed`.

    With parent_run_id, only that invocation's children; otherwise all FINISHED child runs of
    the experiment, one per config hash (the latest). Child runs that did not finish
    (FAILED, KILLED, RUNNING) are left out with a warning; `df.attrs["excluded"]` lists them
    as dicts with rung, run_id, status and reason.
    """
    from mlflow.tracking import MlflowClient

    from clipscale.tracking import tracking_uri as resolve_uri

    uri = resolve_uri(tracking_uri)
    _check_sqlite_exists(uri)
    client = MlflowClient(tracking_uri=uri)
    if experiment_name is None and parent_run_id is None:
        experiment_name = os.environ.get("CLIPSCALE_EXPERIMENT")
        if not experiment_name:
            raise ScalingInputError("name an experiment (or a parent run id); CLIPSCALE_EXPERIMENT is not set either")
    experiment_id = _experiment_id(client, uri, experiment_name, parent_run_id)
    children = [r for r in _all_runs(client, experiment_id) if r.data.tags.get(RUNG_TAG)]
    if parent_run_id is not None:
        children = [r for r in children if r.data.tags.get(PARENT_TAG) == parent_run_id]
    if not children:
        where = f"parent run {parent_run_id!r}" if parent_run_id else f"experiment {experiment_name!r}"
        raise ScalingInputError(f"no rung runs (tag {RUNG_TAG!r}) in {where} at {uri}")
    kept, excluded = _latest_finished(children)
    _warn_unfinished(excluded)
    df = _frame(kept, per_seed)
    df.attrs.update(excluded=excluded, experiment_id=experiment_id, tracking_uri=uri)
    return df


def load_references(experiment_id: str, tracking_uri: str | None = None) -> pd.DataFrame:
    """The experiment's reference runs (`clipscale eval --reference-for`): one row each, named in
    `rung` by the model's label, with its final metrics; `flops` where its compute was stated."""
    from mlflow.tracking import MlflowClient

    from clipscale.tracking import tracking_uri as resolve_uri

    client = MlflowClient(tracking_uri=resolve_uri(tracking_uri))
    rows = [{**_row(r), "rung": r.data.tags[TAG_REFERENCE]} for r in _all_runs(client, experiment_id)
            if r.data.tags.get(TAG_REFERENCE)]
    return pd.DataFrame(rows, columns=None if rows else ["rung", "run_id"])


def references_against(df: pd.DataFrame, x: str, column: str, law) -> list[dict]:
    """The reference models of `df`'s experiment (as load_runs left it) that have both `x` and
    `column`, each with what `law` predicts at its x: {model, x, actual, predicted}."""
    if "experiment_id" not in df.attrs:
        return []  # not read from MLflow (a CSV): no references to look up
    refs = load_references(df.attrs["experiment_id"], df.attrs.get("tracking_uri"))
    if x not in refs.columns or column not in refs.columns:
        return []
    refs = refs.dropna(subset=[x, column])
    return [{"model": r["rung"], "x": float(r[x]), "actual": float(r[column]),
             "predicted": float(np.asarray(law.predict(np.array([float(r[x])])))[0])} for _, r in refs.iterrows()]


def _experiment_id(client, uri: str, experiment_name: str | None, parent_run_id: str | None) -> str:
    """The experiment holding parent_run_id if given, else the one named experiment_name."""
    if parent_run_id is not None:
        try:
            return client.get_run(parent_run_id).info.experiment_id
        except Exception as e:  # MlflowException for an unknown id
            raise ScalingInputError(f"no MLflow run {parent_run_id!r} at {uri}: {e}") from e
    exp = client.get_experiment_by_name(experiment_name)
    if exp is None:
        names = sorted(e.name for e in client.search_experiments())
        raise ScalingInputError(f"no MLflow experiment {experiment_name!r} at {uri}; experiments there: {names}")
    return exp.experiment_id


def _excluded(run, reason: str) -> dict:
    return {"rung": _rung_name(run), "seed": run.data.tags.get(SEED_TAG, DEFAULT_SEED),
            "run_id": run.info.run_id, "status": run.info.status, "reason": reason}


def _latest_finished(children) -> tuple[list, list[dict]]:
    """(kept runs, excluded runs as dicts): the latest FINISHED run per config hash and per
    (rung, seed). Replicates of a rung differ in seed, and each one is kept."""
    excluded = [_excluded(r, f"child run status {r.info.status}") for r in children if r.info.status != "FINISHED"]
    finished = [r for r in children if r.info.status == "FINISHED"]
    # Latest first, so the first run seen per key is the one kept.
    finished.sort(key=lambda r: (r.info.start_time or 0, r.info.end_time or 0), reverse=True)
    kept, seen_hash, seen_rung = [], {}, {}
    for r in finished:
        rung = (_rung_name(r), r.data.tags.get(SEED_TAG, DEFAULT_SEED))
        key = r.data.tags.get(HASH_TAG) or f"rung:{rung}"
        if key in seen_hash:
            excluded.append(_excluded(r, f"superseded by later run {seen_hash[key]} with the same config hash"))
        elif rung in seen_rung:
            excluded.append(_excluded(r, f"superseded by later run {seen_rung[rung]} of the same rung and seed (config changed)"))
        else:
            seen_hash[key] = seen_rung[rung] = r.info.run_id
            kept.append(r)
    kept_keys = {(_rung_name(r), r.data.tags.get(SEED_TAG, DEFAULT_SEED)) for r in kept}
    for e in excluded:
        e["replaced"] = (e["rung"], e["seed"]) in kept_keys
    return kept, excluded


def _warn_unfinished(excluded: list[dict]) -> None:
    not_finished = [e for e in excluded if e["status"] != "FINISHED"]
    if not not_finished:
        return
    msg = "; ".join(
        f"{e['rung']} ({e['run_id'][:8]}, {e['status']}{', a finished run is used instead' if e['replaced'] else ''})"
        for e in not_finished
    )
    # stacklevel 3: the warning points at load_runs' caller.
    warnings.warn(f"left out {len(not_finished)} child run(s) that did not finish: {msg}", stacklevel=3)
    log.info("left out child runs that did not finish: %s", msg)


def _frame(kept, per_seed: bool = False) -> pd.DataFrame:
    df = pd.DataFrame([_row(r) for r in kept])
    for c in BASE_COLUMNS:
        if c not in df.columns:
            df[c] = float("nan")
    if not per_seed:
        df = group_by_rung(df)
    first = BASE_COLUMNS + (["seed"] if per_seed else SEED_COLUMNS)
    rest = sorted(c for c in df.columns if c not in first)
    return df[first + rest].sort_values(["flops", "rung"], na_position="last").reset_index(drop=True)


def load_histories(df: pd.DataFrame, metrics, tracking_uri: str | None = None) -> pd.DataFrame:
    """The step histories of metrics on every run behind df (load_runs' rows), long format:
    one row per (run, step) with columns rung, seed, run_id, step and one per metric (NaN
    where that metric was not logged at that step). The step is samples seen."""
    from mlflow.tracking import MlflowClient

    from clipscale.tracking import tracking_uri as resolve_uri

    client = MlflowClient(tracking_uri=resolve_uri(tracking_uri or df.attrs.get("tracking_uri")))
    rows: dict[tuple, dict] = {}
    for _, r in df.iterrows():
        seeds = str(r["seed"]) if "seed" in df.columns else str(r.get("seeds", DEFAULT_SEED))
        for run_id, seed in zip(str(r["run_id"]).split(","), seeds.split(",")):
            for key in metrics:
                for m in client.get_metric_history(run_id, key):
                    row = rows.setdefault((run_id, m.step), {"rung": r["rung"], "seed": seed, "run_id": run_id, "step": m.step})
                    row[key] = m.value  # the last value logged at a step wins, as in MLflow's charts
    out = pd.DataFrame(list(rows.values()), columns=["rung", "seed", "run_id", "step", *metrics])
    return out.sort_values(["rung", "seed", "step"]).reset_index(drop=True)


def tasks(df: pd.DataFrame) -> list[str]:
    """Zero-shot tasks with an error column, in column order."""
    out = []
    for c in df.columns:
        m = _TASK_RE.match(str(c))
        if m and m.group(2) == "error" and m.group(1) not in out:
            out.append(m.group(1))
    return out


def default_task(df: pd.DataFrame) -> str:
    """`shape_color` if present, else the first in-distribution task, else the first task."""
    found = tasks(df)
    if not found:
        raise ScalingInputError(f"no zero-shot task columns (zeroshot/<task>/error) among {list(df.columns)}")
    if "shape_color" in found:
        return "shape_color"
    in_dist = [t for t in found if not t.endswith("-shift")]
    return (in_dist or found)[0]


def task_column(df: pd.DataFrame, task: str) -> str:
    col = zeroshot(task, "error")
    if col not in df.columns:
        raise ScalingInputError(f"task {task!r} not found: no column {col!r}; tasks available: {tasks(df)}")
    return col


def load_csv(path) -> pd.DataFrame:
    path = Path(path)
    if not path.exists():
        raise ScalingInputError(f"no CSV file at {path}")
    return pd.read_csv(path)


def require_columns(df: pd.DataFrame, *columns: str) -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ScalingInputError(f"column(s) {missing} not found; available columns: {list(df.columns)}")
