"""`clipscale ui`: MLflow's UI on the tracking store, with direct links to the newest ladder.

MLflow 3.17 opens every experiment on its GenAI overview, and nothing there points at the runs
table, the parent run or the scaling plot. The links below go straight there, in its "Model
training" mode. A tracking server (http/https URI) already serves the UI, so nothing is started
for one: only the links are printed.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from urllib.parse import quote, urlencode

from clipscale.monitor.locate import Ladder, find_ladder, public_uri
from clipscale.tracking import tracking_uri

DEFAULT_PORT = 5000
# MLflow 3.17 keeps one UI mode for all experiments, GenAI by default, set by its mode switch and not
# by the experiment-kind tag (3.17.2's bundled UI code). This query opens its "Model training" mode.
MODE = "workflowType=machine_learning"


@dataclass(frozen=True)
class UiLinks:
    runs_table: str
    parent_run: str
    plot: str | None  # the parent's scaling plot, once 2 rungs have finished
    curves: str | None  # train/loss of every rung, on one chart


def runs_table_path(experiment_id: str) -> str:
    return f"#/experiments/{experiment_id}/runs?{MODE}"


def ui_links(base: str, ladder: Ladder) -> UiLinks:
    from mlflow.artifacts import list_artifacts

    exp = ladder.tracker.experiment_id
    base = base.rstrip("/") + "/"
    run_page = f"{base}#/experiments/{exp}/runs/"
    try:
        plots = [a.path for a in list_artifacts(run_id=ladder.parent_id, artifact_path="scaling",
                                                tracking_uri=ladder.tracker.uri) if a.path.endswith(".png")]
    except Exception:  # noqa: BLE001 - an unreadable artifact store still leaves the run links useful
        plots = []
    plots.sort(key=lambda p: ("_vs_" not in p, p))  # the fit plot before the robustness plots
    rungs = [r.info.run_id for r in ladder.tracker.children(ladder.parent_id)]
    return UiLinks(runs_table=base + runs_table_path(exp), parent_run=f"{run_page}{ladder.parent_id}?{MODE}",
                   plot=f"{run_page}{ladder.parent_id}/artifacts/{plots[0]}?{MODE}" if plots else None,
                   curves=f"{base}{curves_path(exp, rungs)}" if rungs else None)


def curves_path(experiment_id: str, run_ids: list[str], metric: str = "train/loss") -> str:
    """MLflow's metric page: one metric of several runs on one chart (the route is `#/metric/<key>`)."""
    q = {"runs": json.dumps(run_ids, separators=(",", ":")), "metric": json.dumps(metric), "experiments": json.dumps([experiment_id]),
         "plot_metric_keys": json.dumps([metric]), "x_axis": "step", "y_axis_scale": "linear",
         "line_smoothness": "1", "show_point": "false"}
    return f"#/metric/{quote(metric, safe='')}?{urlencode(q)}&{MODE}"


def format_links(ladder: Ladder, links: UiLinks) -> str:
    return "\n".join([
        f"ladder {ladder.name!r} (experiment {ladder.experiment!r}):",
        f"  runs table      {links.runs_table}",
        f"  parent run      {links.parent_run}",
        f"  scaling plot    {links.plot or '(drawn once 2 rungs have finished)'}",
        f"  learning curves {links.curves or '(no rung yet)'}",
    ])


def closing_hint(uri: str, experiment: str, port: int = DEFAULT_PORT) -> str:
    """The ladder's last lines: how to see it in a browser, and how to follow progress from anywhere."""
    from clipscale.tracking import Tracker

    shown = public_uri(uri)
    try:
        tracker = Tracker.find(uri, experiment)
        path = runs_table_path(tracker.experiment_id) if tracker else ""
    except Exception:  # noqa: BLE001 - a hint must never fail a finished ladder
        path = ""
    status = (f"progress from any shell: clipscale status --experiment {shlex.quote(experiment)} "
              f"--tracking-uri {shlex.quote(shown)} [--watch]")
    if uri.startswith(("http://", "https://")):
        return f"open {shown.rstrip('/')}/{path}   (the runs table)\n{status}"
    return (f"see it in MLflow: clipscale ui --tracking-uri {shlex.quote(shown)}   (make ui for ./mlflow.db)\n"
            f"  then open http://127.0.0.1:{port}/{path}   (the runs table)\n{status}")


def serve(uri: str, host: str, port: int, workers: int = 1) -> subprocess.Popen:
    # Its own session: `mlflow ui` runs the web server as a child, and both must stop with us.
    # One worker, not MLflow's 4: one person's browser needs no more, and on a loaded 2-core box
    # uvicorn's supervisor killed slow-starting workers over and over (seen: "Child process died").
    cmd = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri, "--host", host, "--port", str(port),
           "--workers", str(workers)]
    return subprocess.Popen(cmd, start_new_session=True)


def wait_ready(url: str, proc: subprocess.Popen, timeout: float = 300.0) -> bool:
    # Generous: on a busy 2-core box the server took about 2 minutes to answer (measured).
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        try:
            with urllib.request.urlopen(url + "health", timeout=2) as r:
                if r.status == 200:
                    return True
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.5)
    return False


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


# ---- the command ------------------------------------------------------------------------


def register(subparsers) -> None:
    p = subparsers.add_parser("ui", help="MLflow's UI on the tracking store, with links to the newest ladder")
    p.add_argument("--tracking-uri", default=None,
                   help="MLflow tracking URI (default $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db)")
    p.add_argument("--experiment", default=None, help="link this experiment's newest ladder (default: the newest)")
    p.add_argument("--host", default="127.0.0.1", help="interface to serve on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port to serve on (default {DEFAULT_PORT})")
    p.add_argument("--workers", type=int, default=1, help="MLflow UI server processes (default 1)")
    p.set_defaults(func=run)


def run(args) -> int:
    uri = tracking_uri(args.tracking_uri)
    remote = uri.startswith(("http://", "https://"))
    base = public_uri(uri) if remote else f"http://{args.host}:{args.port}/"
    try:
        ladder = find_ladder(uri, args.experiment)
        text = format_links(ladder, ui_links(base, ladder))
    except LookupError as e:
        ladder, text = None, f"clipscale ui: {e}"
    if remote:  # the tracking server serves its own UI
        print(text, flush=True)
        return 0 if ladder else 2
    proc = serve(uri, args.host, args.port, args.workers)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # so `finally` stops the server
    try:
        if not wait_ready(base, proc):
            print(f"clipscale ui: MLflow UI did not come up on {base} (is port {args.port} taken? "
                  f"try --port)", file=sys.stderr)
            return 1
        print(f"MLflow UI on {public_uri(uri)} at {base}  (Ctrl-C stops it)\n{text}", flush=True)
        return proc.wait()
    except KeyboardInterrupt:
        return 0
    finally:
        stop(proc)
