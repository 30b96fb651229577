"""Fault injection for the reliability suite: all off by default, never part of a rung's hash.

A config's `faults:` section fills this dataclass; the worker loop's `FaultHook` calls it.
It imports no torch: poisoning multiplies whatever loss it is given by NaN.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path


@dataclass
class Faults:
    """Fault injection for the reliability suite; all off by default.

    `raise_at_step` raises once on rank 0 (the `marker` file records that it did, so
    the restarted attempt goes on). `nan_at_step` makes the loss non-finite from that
    step on, or for `nan_steps` steps when set. `pid_dir` gets `rank<r>.json` ({pid, step}) after every step, so a test
    can SIGKILL a real worker mid-rung.
    """

    rung: str | None = None  # the rung to inject into; None: every rung
    raise_at_step: int | None = None
    nan_at_step: int | None = None
    nan_steps: int | None = None  # None: to the end of the rung
    sleep_per_step: float = 0.0  # seconds; stretches a micro rung so a test can act while it trains
    marker: str | None = None
    pid_dir: str | None = None

    def before_step(self, step: int, rank: int) -> None:
        if self.sleep_per_step:
            time.sleep(self.sleep_per_step)
        if self.pid_dir:
            Path(self.pid_dir, f"rank{rank}.json").write_text(json.dumps({"pid": os.getpid(), "step": step}))
        if self.raise_at_step is not None and step == self.raise_at_step and rank == 0:
            marker = Path(self.marker) if self.marker else None
            if marker is None or not marker.exists():
                if marker is not None:
                    marker.write_text(f"failed once at step {step}")
                raise RuntimeError(f"injected failure at step {step}")

    def poison(self, loss, step: int):
        if self.nan_at_step is None or step < self.nan_at_step:
            return loss
        if self.nan_steps is not None and step >= self.nan_at_step + self.nan_steps:
            return loss
        return loss * float("nan")
