"""The first hour in a real browser: a micro ladder runs, `clipscale ui` starts MLflow's UI on its
store, and headless Chromium renders the printed runs-table link. The page must show MLflow's
runs table in its "Model training" mode (not the GenAI overview) and the ladder's parent run."""

from __future__ import annotations

import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import threading
import time

import pytest

from clipscale.cli import main
from tests.conftest import free_port
from tests.test_job_submit import micro_config

pytestmark = pytest.mark.slow


def chromium() -> str:
    path = next(filter(None, map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))), None)
    if path is None:
        pytest.skip("no chromium on PATH and the test cannot install it: .ci/run installs Debian's `chromium` "
                    "package; here run `apt-get install chromium`")
    return path


def read_until(proc: subprocess.Popen, marker: str, timeout: float) -> str:
    """stdout of `proc` up to and including the first line containing `marker`."""
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in proc.stdout], daemon=True).start()
    seen, deadline = [], time.time() + timeout
    while time.time() < deadline:
        try:
            line = lines.get(timeout=1)
        except queue.Empty:
            if proc.poll() is not None:
                break
            continue
        seen.append(line)
        if marker in line:
            return "".join(seen)
    raise AssertionError(f"no {marker!r} from clipscale ui within {timeout}s; got:\n{''.join(seen)}")


def render(url: str, profile) -> str:
    out = subprocess.run([chromium(), "--headless", "--no-sandbox", "--disable-gpu", f"--user-data-dir={profile}",
                          "--virtual-time-budget=15000", "--dump-dom", url],
                         capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout


def test_ui_runs_table_shows_the_ladder_in_headless_chromium(tmp_path, s3, s3_corpus, ray_local, capsys):
    chromium()  # skip before training when there is no browser
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    config = micro_config(tmp_path, s3, s3.uri("corpus"), "uimicro", n_rungs=1,
                          tracking={"uri": uri, "experiment": "ui-browser"})  # parent run name != experiment name
    assert main(["ladder", "--config", str(config)]) == 0
    closing = capsys.readouterr().out
    assert f"clipscale ui --tracking-uri {uri}" in closing and "/#/experiments/" in closing

    assert main(["status", "--tracking-uri", uri]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.lstrip().startswith("j0")]
    assert rows and "finished" in rows[0] and "128/128" in rows[0]

    port = free_port()
    ui = subprocess.Popen([sys.executable, "-m", "clipscale.cli", "ui", "--tracking-uri", uri, "--port", str(port)],
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        printed = read_until(ui, "learning curves", timeout=240)
        link = next(w for w in printed.split() if "/runs?" in w and "/#/experiments/" in w)
        assert link.startswith(f"http://127.0.0.1:{port}/#/experiments/")
        dom = render(link, tmp_path / "chromium-profile")
    finally:
        os.killpg(ui.pid, signal.SIGTERM)  # clipscale ui stops the MLflow server it started
        ui.wait(timeout=30)
    # MLflow 3.17 calls the runs table "Training runs" in its GenAI mode and "Runs" in its
    # "Model training" mode, which the link opens: the GenAI side nav must be gone.
    assert re.search(r"<h2[^>]*>Runs</h2>", dom), dom[-3000:]
    assert "Evaluation runs" not in dom and "Model registry" in dom
    assert re.search(r">\s*uimicro\s*<", dom)  # the parent run's name (the experiment is ui-browser)
