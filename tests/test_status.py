"""`clipscale status`, `clipscale ui`'s links and the experiment-kind tag, against a real sqlite
MLflow store populated the way a ladder populates it (tags, params, metrics, statuses)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
from mlflow.tracking import MlflowClient

from clipscale.cli import main
from clipscale.monitor.locate import find_ladder, public_uri
from clipscale.monitor.status import format_status, read_status
from clipscale.monitor.ui import closing_hint, ui_links
from clipscale.tracking import (EXPERIMENT_KIND, TAG_EXPERIMENT_KIND, TAG_HASH, TAG_LADDER, TAG_LADDER_HASH,
                                TAG_PARENT, TAG_RUNG, TAG_STATUS_REASON, Tracker)


def _rung(client, exp_id, parent_id, name, status, samples, flops, metrics, reason=""):
    tags = {TAG_LADDER: "mini", TAG_RUNG: name, TAG_HASH: f"h-{name}", TAG_PARENT: parent_id}
    if reason:
        tags[TAG_STATUS_REASON] = reason
    run = client.create_run(exp_id, run_name=name, tags=tags)
    client.log_param(run.info.run_id, "samples", samples)
    client.log_param(run.info.run_id, "train_flops_planned", flops)
    for key, value in metrics.items():
        client.log_metric(run.info.run_id, key, value)
    if status in ("FINISHED", "FAILED"):
        client.set_terminated(run.info.run_id, status)
    else:
        client.update_run(run.info.run_id, status=status)
    return run.info.run_id


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A ladder mid-way: one rung finished, one running, one scheduled, one failed; a live fit.
    One store for the module: creating a sqlite store costs seconds, and no test changes its runs."""
    uri = f"sqlite:///{tmp_path_factory.mktemp('store') / 'mlflow.db'}"
    tracker = Tracker.open(uri, "mini-exp")
    client, exp_id = tracker.client, tracker.experiment_id
    parent = client.create_run(exp_id, run_name="mini", tags={TAG_LADDER: "mini", TAG_LADDER_HASH: "lh1"}).info.run_id
    _rung(client, exp_id, parent, "r2", "SCHEDULED", 4096, 3e12, {})
    _rung(client, exp_id, parent, "r0", "FINISHED", 1024, 1e12,
          {"compute/samples": 1024, "train/samples_seen": 960, "train/samples_per_sec": 512.0})
    _rung(client, exp_id, parent, "r1", "RUNNING", 2048, 2e12,
          {"train/samples_seen": 512, "train/samples_per_sec": 16.0})
    _rung(client, exp_id, parent, "r3", "FAILED", 8192, 4e12, {"train/samples_seen": 256},
          reason="Traceback ...\nFloatingPointError: loss is nan at step 8")
    for key, value in {"a": 0.9, "b": 0.0123, "r2": 0.97, "n_points": 2, "b_ci_lo": 0.01, "b_ci_hi": 0.015}.items():
        client.log_metric(parent, f"scaling/shape/{key}", value)
    return uri, tracker, parent


def test_status_lists_every_rung_with_state_samples_rate_eta_and_the_fit(store):
    uri, _, parent = store
    st = read_status(find_ladder(uri, "mini-exp"))
    assert st.parent_id == parent and st.parent_state == "running"
    assert [r.name for r in st.rungs] == ["r0", "r1", "r2", "r3"]  # by planned compute
    assert [r.state for r in st.rungs] == ["finished", "running", "scheduled", "failed"]
    assert st.rungs[0].samples_seen == 1024  # compute/samples, not the lagging train/samples_seen
    assert st.rungs[1].eta_s == pytest.approx((2048 - 512) / 16.0)
    assert st.rungs[2].eta_s is None and st.rungs[2].samples_seen == 0
    assert st.rungs[3].reason == "FloatingPointError: loss is nan at step 8"

    text = format_status(st)
    lines = {line.split()[0]: line for line in text.splitlines() if line.strip()}
    assert re.search(r"finished\s+1,024/1,024 \(100%\)\s+512\s+-", lines["r0"])
    assert re.search(r"running\s+512/2,048 \(25%\)\s+16\s+1m36s", lines["r1"])
    assert re.search(r"scheduled\s+0/4,096 \(0%\)\s+-\s+-", lines["r2"])
    assert "failed" in lines["r3"] and "FloatingPointError: loss is nan at step 8" in lines["r3"]
    assert "4 rungs: 1 finished, 1 running, 1 scheduled, 1 failed" in text
    assert "fit shape (2 rungs): 0.9 * C^-0.0123, b 95% CI 0.0100..0.0150, R^2 0.970" in text


def test_status_command_finds_the_newest_ladder_and_names_what_is_missing(store, capsys):
    uri, _, parent = store
    assert main(["status", "--tracking-uri", uri]) == 0
    out = capsys.readouterr().out
    assert f"parent run {parent}" in out and "r3" in out
    assert main(["status", "--tracking-uri", uri, "--parent-run", parent]) == 0
    assert "experiment 'mini-exp'" in capsys.readouterr().out
    assert main(["status", "--tracking-uri", uri, "--experiment", "nope"]) == 2
    assert "no experiment 'nope'" in capsys.readouterr().err
    assert MlflowClient(uri).get_experiment_by_name("nope") is None  # reading created nothing
    missing = uri.replace("mlflow.db", "typo.db")
    assert main(["status", "--tracking-uri", missing]) == 2
    assert f"no tracking store at {missing}" in capsys.readouterr().err
    assert not Path(missing[len("sqlite:///"):]).exists()


def test_ladder_experiments_are_tagged_as_model_training(store):
    uri, tracker, _ = store
    exp = MlflowClient(uri).get_experiment(tracker.experiment_id)
    assert exp.tags[TAG_EXPERIMENT_KIND] == EXPERIMENT_KIND == "custom_model_development"


def test_ui_links_point_at_runs_table_parent_plot_and_a_finished_rung(store, tmp_path):
    uri, tracker, parent = store
    plot = tmp_path / "shape_vs_flops.png"
    plot.write_bytes(b"\x89PNG not really")
    tracker.client.log_artifact(parent, str(plot), "scaling")
    ladder = find_ladder(uri)
    links = ui_links("http://127.0.0.1:5123", ladder)
    base = f"http://127.0.0.1:5123/#/experiments/{tracker.experiment_id}/runs"
    mode = "?workflowType=machine_learning"  # MLflow 3.17's "Model training" mode, not its GenAI default
    assert links.runs_table == base + mode
    assert links.parent_run == f"{base}/{parent}{mode}"
    assert links.plot == f"{base}/{parent}/artifacts/scaling/shape_vs_flops.png{mode}"
    assert links.curves.startswith("http://127.0.0.1:5123/#/metric/train%2Floss?runs=")
    query = parse_qs(urlsplit(links.curves.split("#", 1)[1]).query)
    assert sorted(json.loads(query["runs"][0])) == sorted(r.info.run_id for r in tracker.children(parent))
    assert query["experiments"] == [f'["{tracker.experiment_id}"]'] and query["workflowType"] == ["machine_learning"]
    hint = closing_hint(uri, "mini-exp", port=5000)
    assert f"clipscale ui --tracking-uri {uri}" in hint
    assert f"http://127.0.0.1:5000/#/experiments/{tracker.experiment_id}/runs{mode}" in hint


def test_printed_uris_drop_passwords():
    assert public_uri("http://alice:s3cr3t@mlflow.internal:5000") == "http://mlflow.internal:5000"


def test_watch_stops_when_the_ladder_has_ended(store, capsys):
    uri, tracker, _ = store
    # Started long ago, so that it never becomes the store's newest ladder for the other tests.
    done = tracker.client.create_run(tracker.experiment_id, run_name="ended", start_time=1000,
                                     tags={TAG_LADDER: "ended", TAG_LADDER_HASH: "lh2"}).info.run_id
    tracker.client.set_terminated(done, "FINISHED")
    assert main(["status", "--tracking-uri", uri, "--parent-run", done, "--watch", "--interval", "1"]) == 0
    out = capsys.readouterr().out
    assert out.count("ladder 'ended'") == 1 and "(finished" in out and "0 rungs: no rungs yet" in out
