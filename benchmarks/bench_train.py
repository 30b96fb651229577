"""Training samples/s of a clipscale rung (Ray Train + DeepSpeed + Ray Data feed) against
a bare single-process PyTorch loop (same model, same global batch, AdamW, batches
already in memory), side by side.

    python benchmarks/bench_train.py [--rung w128-l3] [--steps 60] [--workers 1] [--zero 2] [--repeats 3]

The candidate's throughput is samples / time over the loop's logging windows after
the first (start-up, JIT builds and the first shard read are not training speed).
The last line is `ratio=<x>` = candidate / baseline samples/s, the median over `--repeats`
candidate runs. With one worker the rung trains at ZeRO stage 0 whatever `--zero` says
(there is nothing to partition); use `--workers 2` to time a ZeRO stage.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

from clipscale.config import load_config  # noqa: E402
from clipscale.data import synthetic  # noqa: E402
from clipscale.data.pipeline import resolve_shards  # noqa: E402
from clipscale.throughput import bare_loop, synthetic_batch  # noqa: E402
from clipscale.train.trainer import fit_rung  # noqa: E402
from common import report  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(REPO / "experiments" / "configs" / "tiny.yaml"))
    parser.add_argument("--rung", default="w128-l2")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--zero", type=int, default=2)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--repeats", type=int, default=3, help="candidate runs, each between two baselines")
    args = parser.parse_args()
    if args.repeats < 1:
        parser.error(f"--repeats must be >= 1, got {args.repeats}")

    import ray

    work = Path(tempfile.mkdtemp(prefix="bench-train-"))
    cfg = load_config(args.config, [
        f"cluster.storage_path={work / 'runs'}", f"train.zero_stage={args.zero}", "train.log_every_steps=5",
        "train.checkpoint_every_samples=0", f"train.torch_threads={args.threads}", "train.max_failures=0",
    ])
    rung = next(r for r in cfg.ladder.rungs if r.name == args.rung)
    rung.workers = args.workers
    rung.samples = rung.batch_size * args.steps
    corpus = str(work / "corpus")
    # One epoch covers every step, as it does on a real corpus: an epoch boundary rebuilds the
    # Ray Dataset (~1.5 s stall, measured), which a tiny corpus would hit every few windows.
    n = rung.batch_size * (args.steps + 4)
    synthetic.write_corpus(corpus, synthetic.generate(n, 0, 32), 256, 0, 32, progress=False)
    shards = resolve_shards(corpus)

    torch.set_num_threads(args.threads)
    batch = synthetic_batch(rung, rung.batch_size)

    def run_baseline() -> float:
        t0 = time.perf_counter()
        sps = bare_loop(rung, cfg.train, [batch], steps=max(5, args.steps // 3), warmup=2)
        print(f"baseline: bare PyTorch loop {sps:.1f} samples/s ({time.perf_counter() - t0:.0f}s, "
              f"{torch.get_num_threads()} threads)", flush=True)
        return sps

    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False, configure_logging=False)
    # Baseline, candidate, baseline, candidate, ..., baseline: each candidate is judged against
    # the faster of the baselines on either side of it, since a noisy neighbour (this box's
    # throughput drifts by 10-30% over minutes) can only slow a run down; the reported ratio is
    # the median over the candidates.
    baselines, pairs = [run_baseline()], []
    for i in range(args.repeats):
        t0 = time.perf_counter()
        result = fit_rung(cfg, rung, shards, evaluate=False, name=f"bench-{i}")
        wall = time.perf_counter() - t0
        baselines.append(run_baseline())
        # Windows hold equal sample counts, so their harmonic mean is samples / time over the run:
        # read-ahead decoding slows early windows and spares late ones, and this counts both.
        windows = result.sps_curve[1:] or result.sps_curve
        cand = statistics.harmonic_mean(windows)
        base = max(baselines[-2:])
        pairs.append((cand / base, base, cand))
        print(f"candidate {i + 1}/{args.repeats}: clipscale rung {cand:.1f} samples/s after the first window "
              f"(windows {[round(w) for w in result.sps_curve]}, step {1000 * rung.batch_size / cand:.0f} ms, "
              f"ZeRO-{result.zero_stage}, {result.torch_threads} threads, fit() wall {wall:.0f}s): "
              f"ratio {cand / base:.2f}", flush=True)
    ray.shutdown()
    ratio, base, cand = sorted(pairs)[len(pairs) // 2]
    if result.zero_stage != args.zero:
        print(f"ZeRO-{args.zero} was requested; {rung.workers} worker trains at stage {result.zero_stage} "
              f"(clipscale.train.ds_config.effective_zero_stage)", flush=True)
    report("bench_train", ratio, base, cand, "samples/s", rung=rung.name, batch_size=rung.batch_size,
           workers=rung.workers, zero_stage_requested=args.zero, zero_stage=result.zero_stage,
           step_ms=1000 * rung.batch_size / cand, flops_per_sample=result.flops_per_sample,
           device=result.device_type, ratios=[p[0] for p in pairs], baselines=baselines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
