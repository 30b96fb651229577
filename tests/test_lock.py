"""One driver per ladder: who holds the lock, when a holder counts as gone."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import pytest

from clipscale.lock import Holder, LadderLock, LadderLocked


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_same_host_decides_by_pid():
    here = socket.gethostname()
    assert Holder(here, os.getpid(), "t", heartbeat=0.0).alive(time.time(), stale_after=120)  # old beat, live pid
    assert not Holder(here, _dead_pid(), "t", heartbeat=time.time()).alive(time.time(), stale_after=120)


def test_other_host_decides_by_heartbeat():
    now = time.time()
    assert Holder("elsewhere", 1, "t", heartbeat=now - 30).alive(now, stale_after=120)
    assert not Holder("elsewhere", 1, "t", heartbeat=now - 300).alive(now, stale_after=120)


@pytest.mark.slow  # a real MLflow sqlite store: schema migrations take 10-20 s
def test_second_driver_is_refused_until_the_first_releases(tmp_path):
    from clipscale.tracking import Tracker

    tracker = Tracker.open(f"sqlite:///{tmp_path / 'mlflow.db'}", "locks")
    parent = tracker.parent_run("l", "hash", "{}", {})
    first = LadderLock(tracker, parent, heartbeat_s=0.2)
    first.acquire(settle_s=0.1)
    beat = float(tracker.tags(parent)["clipscale.lock.heartbeat"])
    with pytest.raises(LadderLocked, match=parent):
        LadderLock(tracker, parent).acquire(settle_s=0.1)
    time.sleep(1.6)  # the heartbeat thread renews the beat (whole seconds)
    assert float(tracker.tags(parent)["clipscale.lock.heartbeat"]) > beat
    first.release()
    second = LadderLock(tracker, parent)
    second.acquire(settle_s=0.1)  # free again
    second.release()
    # A holder on another host whose heartbeat stopped long ago does not block.
    tracker.set_tags(parent, {"clipscale.lock.host": "elsewhere", "clipscale.lock.pid": "1",
                              "clipscale.lock.token": "gone", "clipscale.lock.heartbeat": f"{time.time() - 600:.0f}"})
    LadderLock(tracker, parent).acquire(settle_s=0.1)
