"""benchmarks/common.py: what every benchmark's results file holds."""
from __future__ import annotations

import datetime
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import common  # noqa: E402


def test_a_one_case_run_replaces_its_case_and_keeps_the_others(tmp_path, monkeypatch):
    monkeypatch.setattr(common, "RESULTS", tmp_path)
    old = {"one_worker": {"ratio": 0.83, "measured": "2026-11-30"}, "two_workers": {"ratio": 0.78}}
    (tmp_path / "bench_x.json").write_text(json.dumps({"name": "bench_x", "cases": old}))

    cases = common.merged_cases("bench_x", {"two_workers": {"ratio": 0.80}})

    assert cases["one_worker"] == old["one_worker"]  # not run now: kept, with its own date
    assert cases["two_workers"] == {"ratio": 0.80, "measured": datetime.date.today().isoformat()}
    assert common.merged_cases("bench_new", {"a": {"ratio": 1.0}})["a"]["ratio"] == 1.0  # no file yet
