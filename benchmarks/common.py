"""What every benchmark shares: where results go, the machine they ran on, the last line."""

from __future__ import annotations

import datetime
import json
import os
import platform
import socket
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def machine() -> dict:
    info = {"platform": platform.platform(), "cpus": os.cpu_count(), "processor": platform.processor()}
    try:
        import torch

        info["cuda"] = torch.cuda.get_device_name() if torch.cuda.is_available() else None
    except ImportError:
        pass
    return info


def report(name: str, ratio: float, baseline: float, candidate: float, unit: str, **extra) -> Path:
    """Write benchmarks/results/<name>.json and print `ratio=<x>` as the last line.

    ratio = how many times better the candidate does than the baseline.
    """
    RESULTS.mkdir(exist_ok=True)
    dest = RESULTS / f"{name}.json"
    dest.write_text(json.dumps({"name": name, "ratio": ratio, "baseline": baseline, "candidate": candidate,
                                "unit": unit, **extra, "machine": machine()}, indent=1))
    print(f"ratio={ratio:.2f}", flush=True)
    return dest


def merged_cases(name: str, cases: dict[str, dict]) -> dict[str, dict]:
    """The cases measured now, each stamped with today's date, over the cases of `name`'s last
    results file: a run of one case replaces that case's figures and keeps the others' (each with
    its own `measured` date), instead of wiping them."""
    today = datetime.date.today().isoformat()
    dest = RESULTS / f"{name}.json"
    previous = json.loads(dest.read_text()).get("cases", {}) if dest.exists() else {}
    return {**previous, **{k: {**v, "measured": today} for k, v in cases.items()}}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
