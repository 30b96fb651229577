"""One driver per ladder: a lock held as tags on the ladder's parent MLflow run.

The tracking store is the one place every driver of a ladder can see, on any host, so the
lock lives there: who holds it (host, pid, a random token) and a heartbeat. A second
invocation refuses while the holder is alive. A SIGKILLed driver never leaves a lock that
blocks: on the same host its pid is dead, so a rerun proceeds at once; on another host,
a heartbeat older than `stale_after` seconds means the holder is gone.
"""

from __future__ import annotations

import os
import socket
import threading
import time
import uuid
from dataclasses import dataclass

TAG_HOST = "clipscale.lock.host"
TAG_PID = "clipscale.lock.pid"
TAG_TOKEN = "clipscale.lock.token"
TAG_HEARTBEAT = "clipscale.lock.heartbeat"


class LadderLocked(RuntimeError):
    """Another driver runs this ladder; the message names its parent run and holder."""


@dataclass
class Holder:
    host: str
    pid: int
    token: str
    heartbeat: float

    @classmethod
    def from_tags(cls, tags: dict) -> Holder | None:
        if not tags.get(TAG_TOKEN):
            return None
        return cls(tags.get(TAG_HOST, ""), int(tags.get(TAG_PID) or 0), tags[TAG_TOKEN],
                   float(tags.get(TAG_HEARTBEAT) or 0.0))

    def alive(self, now: float, stale_after: float) -> bool:
        if self.host == socket.gethostname():
            return _pid_alive(self.pid)
        return now - self.heartbeat < stale_after


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's live process
    return True


class LadderLock:
    """Acquire with `acquire()`, which refuses if a live holder exists; a daemon thread
    renews the heartbeat; `release()` clears the tags."""

    def __init__(self, tracker, parent_id: str, heartbeat_s: float = 30.0, stale_after: float = 120.0):
        self.tracker, self.parent_id = tracker, parent_id
        self.heartbeat_s, self.stale_after = heartbeat_s, stale_after
        self.me = Holder(socket.gethostname(), os.getpid(), uuid.uuid4().hex, time.time())
        self._stop = threading.Event()

    def _tags(self) -> dict:
        return self.tracker.tags(self.parent_id)

    def _check_free(self) -> None:
        holder = Holder.from_tags(self._tags())
        if holder is not None and holder.token != self.me.token and holder.alive(time.time(), self.stale_after):
            raise LadderLocked(
                f"this ladder is already running: parent run {self.parent_id} is held by pid {holder.pid} on "
                f"{holder.host} (heartbeat {time.time() - holder.heartbeat:.0f}s ago). Wait for it, or stop it first")

    def acquire(self, settle_s: float = 1.0) -> None:
        self._check_free()
        self._write()
        # Two drivers that start together both see no holder: the last writer wins, the other refuses.
        time.sleep(settle_s)
        self._check_free()
        threading.Thread(target=self._beat, daemon=True, name="clipscale-lock").start()

    def _write(self) -> None:
        self.me.heartbeat = time.time()
        self.tracker.set_tags(self.parent_id, {TAG_HOST: self.me.host, TAG_PID: self.me.pid,
                                               TAG_TOKEN: self.me.token, TAG_HEARTBEAT: f"{self.me.heartbeat:.0f}"})

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            try:
                self._write()
            except Exception:  # noqa: BLE001 - a missed beat is retried; a long outage reads as stale
                pass

    def release(self) -> None:
        self._stop.set()
        self.tracker.set_tags(self.parent_id, {TAG_TOKEN: "", TAG_PID: "", TAG_HOST: "", TAG_HEARTBEAT: ""})
