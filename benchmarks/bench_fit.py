"""Joint L(N, D) fit on the Chinchilla points: the straightforward loop against the fast fit.

baseline   scipy L-BFGS-B with finite-difference gradients from each of the 4,500 starts of
           Hoffmann et al. (2022) (what the reference code does)
candidate  clipscale.scaling.fit_joint's path: all starts scored at once, L-BFGS-B with the
           exact gradient from the best start of each (alpha, beta) cell plus the 2 best

Both minimise the same objective, written the same way, with the same tolerances and BLAS
pinned to one thread, so the ratio is what the algorithm buys. Data: the 245 points Epoch
AI extracted (Besiroglu et al. 2024) less the 5 highest losses, from
tests/data/chinchilla_epoch_points.csv (sources in tests/data/README.md).

    python benchmarks/bench_fit.py            # full baseline grid (a few minutes)
    python benchmarks/bench_fit.py --quick    # every 10th baseline start, time scaled x10

Prints `ratio=<baseline seconds / candidate seconds>` last and writes
benchmarks/results/bench_fit.json.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import scipy

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import RESULTS, report  # noqa: E402

from clipscale.scaling.joint import (  # noqa: E402
    fit_joint_baseline,
    fit_joint_theta,
    hoffmann_grid,
    objective_point,
    theta_to_params,
)

DATA = REPO / "tests" / "data" / "chinchilla_epoch_points.csv"


def recorded_path(path: Path) -> str:
    """How a results file names `path`: relative to the repository, so that the record means the
    same on every machine; a file outside the repository is named by its file name alone."""
    path = path.resolve()
    return str(path.relative_to(REPO)) if path.is_relative_to(REPO) else path.name


def cpu_info() -> dict:
    """What the timing depends on beyond common.machine(): CPU model, load, library versions."""
    info = {
        "python": platform.python_version(),
        "numpy": np.__version__,
        "scipy": scipy.__version__,
        "blas_threads": 1,
    }
    try:
        with open("/proc/cpuinfo") as f:
            info["cpu_model"] = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), None)
        info["loadavg_at_start"] = os.getloadavg()
    except OSError:
        pass
    return info


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="run every 10th baseline start and scale its time by 10")
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--repeats", type=int, default=3, help="candidate repeats (median time)")
    args = ap.parse_args()

    info = cpu_info()
    df = pd.read_csv(args.data).sort_values("loss", kind="stable").iloc[:-5]
    n, d, loss = df.N_params.to_numpy(), df.D_tokens.to_numpy(), df.loss.to_numpy()
    grid = hoffmann_grid()
    base_grid = grid[::10] if args.quick else grid
    scale = len(grid) / len(base_grid)

    cand_times, cand_cpu = [], []
    for _ in range(args.repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        cand_theta, cand_fun = fit_joint_theta(n, d, loss)
        cand_times.append(time.perf_counter() - t0)
        cand_cpu.append(time.process_time() - c0)
    cand_s = statistics.median(cand_times)
    print(f"candidate: {cand_s:.3f} s (median of {args.repeats}: {', '.join(f'{t:.3f}' for t in cand_times)})")
    print(f"  optimum {cand_fun:.12g}  {theta_to_params(cand_theta)}")

    t0, c0 = time.perf_counter(), time.process_time()
    base_theta, base_fun = fit_joint_baseline(n, d, loss, starts=base_grid)
    base_measured = time.perf_counter() - t0
    base_cpu = time.process_time() - c0
    base_s = base_measured * scale
    what = f"{len(base_grid)} of {len(grid)} starts, scaled x{scale:g}" if args.quick else f"{len(grid)} starts"
    print(f"baseline:  {base_s:.3f} s ({what}; measured {base_measured:.3f} s)")
    print(f"  optimum {base_fun:.12g}  {theta_to_params(base_theta)}")

    args_ = (np.log(n), np.log(d), np.log(loss))
    # The candidate must not lose the optimum: same or lower objective, to rounding.
    same = cand_fun <= base_fun + 1e-10 * max(1.0, abs(base_fun))
    print(f"candidate optimum no worse than baseline: {same} (difference {cand_fun - base_fun:.3g})")
    assert abs(objective_point(cand_theta, *args_) - cand_fun) < 1e-12

    extra = {
        "cpu": info,
        "quick": args.quick,
        "baseline_starts": len(base_grid),
        "baseline_measured_seconds": base_measured,
        "baseline_scaled": scale != 1,
        "candidate_times": cand_times,
        # CPU seconds too: on a shared machine wall time swings with other people's load.
        "baseline_cpu_seconds": base_cpu * scale,
        "candidate_cpu_seconds": statistics.median(cand_cpu),
        "cpu_ratio": base_cpu * scale / statistics.median(cand_cpu),
        "baseline_objective": base_fun,
        "candidate_objective": cand_fun,
        "same_optimum": bool(same),
        "baseline_params": theta_to_params(base_theta),
        "candidate_params": theta_to_params(cand_theta),
        "data": recorded_path(args.data),
        "n_points": len(loss),
    }
    print(f"writing {RESULTS / 'bench_fit.json'}")
    report("bench_fit", base_s / cand_s, base_s, cand_s, "seconds", **extra)
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
