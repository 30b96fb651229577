"""Training samples/s of a clipscale rung against bare PyTorch loops, side by side.

- one_worker: a rung (Ray Train + DeepSpeed + Ray Data feed, 1 worker) against a bare
  single-process loop (same model, same global batch, AdamW, batches already in memory).
- one_worker_memory: the same rung fed pre-made in-memory batches instead of Ray Data (as in
  two_workers): the training path's own overhead. On a box where the data workers share the
  trainer's cores, one_worker's gap beyond this one is the cost of decoding the data there.
- two_workers: Ray Train + DeepSpeed ZeRO-2 with 2 workers against a bare 2-process torch DDP
  loop (gloo, same model, same per-rank batch); both sides train from the same pre-made
  in-memory batches (benchmarks/train_memory.py), so the ratio measures training overhead alone.

    python benchmarks/bench_train.py [--case one_worker|one_worker_memory|two_workers|all] [--rung w128-l2] [--steps 60]
                                     [--zero 2] [--repeats 3]

The candidate's throughput is samples / time over the loop's logging windows after the first
(start-up, JIT builds and the first shard read are not training speed). Each case's ratio is
candidate / baseline samples/s, the median over `--repeats` candidate runs, each judged against
the faster of the baselines run just before and after it. The last line is `ratio=<x>` of the
1-worker case (which trains at ZeRO stage 0 whatever `--zero` says: there is nothing to
partition); `cases.two_workers.ratio` in the JSON holds the other. A run of one `--case` replaces
that case in benchmarks/results/bench_train.json and keeps the others, each case with the date it
was `measured`.
"""

from __future__ import annotations

import argparse
import dataclasses
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
from common import free_port, merged_cases, report  # noqa: E402
from train_memory import ddp_samples_per_s, fit_from_memory  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def alternate(run_baseline, run_candidate, repeats: int) -> dict:
    """Baseline, candidate, baseline, ..., baseline: each candidate is judged against the faster of
    the baselines on either side of it, since a noisy neighbour (this box's throughput drifts by
    10-30% over minutes) can only slow a run down; the case's ratio is the median over candidates."""
    baselines, pairs, results = [run_baseline()], [], []
    for i in range(repeats):
        cand, result = run_candidate(i)
        baselines.append(run_baseline())
        base = max(baselines[-2:])
        pairs.append((cand / base, base, cand))
        results.append(result)
        print(f"  candidate {i + 1}/{repeats}: {cand:.1f} samples/s against {base:.1f}: ratio {cand / base:.2f}",
              flush=True)
    ratio, base, cand = sorted(pairs)[len(pairs) // 2]
    return {"ratio": ratio, "baseline": base, "candidate": cand, "ratios": [p[0] for p in pairs],
            "baselines": baselines, "last": results[-1]}


def window_rate(result) -> float:
    """Windows hold equal sample counts, so their harmonic mean is samples / time over the run:
    read-ahead decoding slows early windows and spares late ones, and this counts both."""
    return statistics.harmonic_mean(result.sps_curve[1:] or result.sps_curve)


def one_worker(args, cfg, rung, shards, feed: str = "ray_data") -> dict:
    """1 worker against the bare loop. `feed` "memory" swaps the Ray Data stream for pre-made
    in-memory batches (as two_workers does): the ratio of the training path alone, so the gap
    between the two 1-worker ratios is what decoding the data on the same cores costs."""
    torch.set_num_threads(args.threads)
    batch = synthetic_batch(rung, rung.batch_size)

    def run_baseline() -> float:
        sps = bare_loop(rung, cfg.train, [batch], steps=max(5, args.steps // 3), warmup=2)
        print(f"  baseline: bare PyTorch loop {sps:.1f} samples/s ({torch.get_num_threads()} threads)", flush=True)
        return sps

    def run_candidate(i: int):
        t0 = time.perf_counter()
        if feed == "memory":
            result = fit_from_memory(cfg, rung, name=f"bench-mem1-{i}")
        else:
            result = fit_rung(cfg, rung, shards, evaluate=False, name=f"bench-{i}")
        print(f"  clipscale rung ({feed}): windows {[round(w) for w in result.sps_curve]}, ZeRO-{result.zero_stage}, "
              f"{result.torch_threads} threads, fit() wall {time.perf_counter() - t0:.0f}s", flush=True)
        return window_rate(result), result

    print(f"one_worker: {rung.name}, batch {rung.batch_size}, {feed} feed against a bare loop", flush=True)
    out = alternate(run_baseline, run_candidate, args.repeats)
    result = out.pop("last")
    if result.zero_stage != args.zero:
        print(f"  ZeRO-{args.zero} was requested; 1 worker trains at stage {result.zero_stage} "
              f"(clipscale.train.ds_config.effective_zero_stage)", flush=True)
    return {**out, "workers": 1, "zero_stage": result.zero_stage, "step_ms": 1000 * rung.batch_size / out["candidate"],
            "flops_per_sample": result.flops_per_sample, "device": result.device_type, "feed": feed}


def two_workers(args, cfg, rung) -> dict:
    world = 2
    rung = dataclasses.replace(rung, workers=world)
    cfg = dataclasses.replace(cfg, cluster=dataclasses.replace(cfg.cluster, cpus_per_worker=1),
                              train=dataclasses.replace(cfg.train, torch_threads=max(1, args.threads // world)))
    threads = cfg.train.torch_threads

    def run_baseline() -> float:
        sps = ddp_samples_per_s(rung, cfg.train, world, steps=max(5, args.steps // 3), warmup=2, threads=threads,
                                port=free_port())
        print(f"  baseline: bare torch DDP, {world} processes x {threads} threads, {sps:.1f} samples/s", flush=True)
        return sps

    def run_candidate(i: int):
        t0 = time.perf_counter()
        result = fit_from_memory(cfg, rung, name=f"bench-mem-{i}")
        print(f"  clipscale, {world} workers from memory: windows {[round(w) for w in result.sps_curve]}, "
              f"ZeRO-{result.zero_stage}, fit() wall {time.perf_counter() - t0:.0f}s", flush=True)
        return window_rate(result), result

    print(f"two_workers: {rung.name}, batch {rung.batch_size} ({rung.batch_size // world} per rank), "
          f"ZeRO-{args.zero} against DDP, in-memory batches", flush=True)
    out = alternate(run_baseline, run_candidate, args.repeats)
    result = out.pop("last")
    return {**out, "workers": world, "zero_stage": result.zero_stage, "threads_per_rank": threads,
            "step_ms": 1000 * rung.batch_size / out["candidate"], "feed": "memory"}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(REPO / "experiments" / "configs" / "tiny.yaml"))
    parser.add_argument("--case", default="all", choices=["one_worker", "one_worker_memory", "two_workers", "all"])
    parser.add_argument("--rung", default="w128-l2")
    parser.add_argument("--steps", type=int, default=60)
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
    rung = dataclasses.replace(rung, workers=1, samples=rung.batch_size * args.steps)
    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False, configure_logging=False)
    import train_memory

    ray.cloudpickle.register_pickle_by_value(train_memory)  # workers cannot import benchmarks/ by name
    cases = {}
    if args.case in ("one_worker", "all"):
        corpus = str(work / "corpus")
        # One epoch covers every step, as it does on a real corpus: an epoch boundary rebuilds the
        # Ray Dataset (~1.5 s stall, measured), which a tiny corpus would hit every few windows.
        n = rung.batch_size * (args.steps + 4)
        synthetic.write_corpus(corpus, synthetic.generate(n, 0, 32), 256, 0, 32, progress=False)
        cases["one_worker"] = one_worker(args, cfg, rung, resolve_shards(corpus))
    if args.case in ("one_worker_memory", "all"):
        cases["one_worker_memory"] = one_worker(args, cfg, rung, (), feed="memory")
    if args.case in ("two_workers", "all"):
        cases["two_workers"] = two_workers(args, cfg, rung)
    ray.shutdown()
    measured = set(cases)
    cases = merged_cases("bench_train", cases)  # a one-case run keeps the other cases' last figures
    for name, c in cases.items():
        stale = "" if name in measured else f" (not run now: measured {c.get('measured', 'earlier')})"
        print(f"{name}: clipscale {c['candidate']:.1f} samples/s, baseline {c['baseline']:.1f}: ratio {c['ratio']:.2f}"
              f"{stale}", flush=True)
    head = cases.get("one_worker") or cases.get("one_worker_memory") or cases["two_workers"]
    report("bench_train", head["ratio"], head["baseline"], head["candidate"], "samples/s", rung=rung.name,
           batch_size=rung.batch_size, zero_stage_requested=args.zero, cases=cases,
           # the 1-worker case's fields at the top level, as before this file had cases
           **{k: head[k] for k in ("workers", "zero_stage", "step_ms", "ratios", "baselines")})
    return 0


if __name__ == "__main__":
    sys.exit(main())
