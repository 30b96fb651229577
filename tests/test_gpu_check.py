"""benchmarks/gpu_check.sh --dry-run on CPU, so the GPU check cannot rot between GPU machines."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

from gpu_check import peak_for  # noqa: E402


def _dry_run(tmp_path: Path, *extra: str) -> tuple[dict, list[str]]:
    out = tmp_path / "gpu.json"
    proc = subprocess.run(["bash", str(REPO / "benchmarks" / "gpu_check.sh"), "--dry-run", "--out", str(out), *extra],
                          capture_output=True, text=True, timeout=300,
                          env={"PATH": "/usr/bin:/bin", "PYTHON": sys.executable, "HOME": str(Path.home())})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("gpu_check: ")]
    return json.loads(out.read_text()), lines


def _check_model_figure(fig: dict) -> None:
    assert fig["batch"] == 4
    assert fig["samples_per_s"] > 0 and fig["step_ms"] > 0
    assert fig["loss"] == fig["loss"] and 0 < fig["loss"] < 10  # finite, about log(4)
    assert fig["train_flops_per_sample"] > 0 and fig["mfu"] is None  # no peak for a CPU


@pytest.mark.slow  # integration: the whole gpu_check.sh in a subprocess (~20 s)
def test_dry_run_writes_figures_and_says_what_it_skipped(tmp_path):
    data, lines = _dry_run(tmp_path, "--skip", "deepspeed")
    assert data["dry_run"] is True and data["device"]["name"] == "cpu"
    _check_model_figure(data["figures"]["model_bf16_autocast"])
    jpeg = data["figures"]["data_jpeg224_decode_crop"]
    assert jpeg["images_per_s"] > 0 and jpeg["procs"] >= 1 and jpeg["images"] == 16 * jpeg["procs"]
    assert data["skipped"]["deepspeed"] == "--skip deepspeed"
    assert "dry run" in data["skipped"]["ray_micro_ladder"]
    # One summary line per figure and per skip, and a closing line naming the file.
    for key in (*data["figures"], *data["skipped"]):
        assert any(ln.startswith(f"gpu_check: {key}: ") for ln in lines), (key, lines)
    assert lines[-1].startswith(f"gpu_check: wrote {tmp_path / 'gpu.json'}")


@pytest.mark.slow
def test_dry_run_trains_through_deepspeed_bf16_at_zero_0_and_2(tmp_path):
    data, lines = _dry_run(tmp_path, "--skip", "data")
    for stage in (0, 2):
        fig = data["figures"][f"deepspeed_zero{stage}_bf16"]
        assert fig["zero_stage"] == stage
        _check_model_figure(fig)
    assert "deepspeed" not in data["skipped"]


def test_peak_table_matches_device_names_as_torch_reports_them():
    assert peak_for("NVIDIA H100 80GB HBM3")[0] == 989.0
    assert peak_for("NVIDIA H100 PCIe")[0] == 756.0
    assert peak_for("NVIDIA H200")[0] == 989.0
    assert peak_for("NVIDIA A100-SXM4-80GB")[0] == 312.0
    assert peak_for("NVIDIA A10G")[0] == 125.0
    assert peak_for("NVIDIA L4")[0] == 121.0
    assert peak_for("NVIDIA L40S")[0] == 362.0
    peak, why = peak_for("Tesla V100-SXM2-16GB")
    assert peak is None and "--peak-tflops" in why
