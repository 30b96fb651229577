"""What `gpu_check.sh` runs: clipscale's figures on one NVIDIA GPU, in one go, within minutes.

Each section measures what the machine can run and names what it skipped and why:

- model: clipscale's model and loss (ViT-B/16, 224 px, 77 tokens), bf16 autocast, AdamW, at the
  largest batch that fits (doubling until out of memory): samples/s and MFU against the GPU's
  dense bf16 peak (PEAKS below). FLOPs are clipscale's own accounting (`forward_flops`, training
  = 3x forward; the loss's similarity matmul is left out, as everywhere in clipscale).
- deepspeed: the same through DeepSpeed at ZeRO stages 0 and 2 with clipscale's bf16 config
  (`deepspeed_config(precision="bf16")`), only where DeepSpeed imports.
- data: JPEG decode + random resized crop to 224 px with all cores (`jpeg_path.decode_crop_limit`).
- ray: a 1-rung micro ladder through Ray Train on the GPU, only where Ray, DeepSpeed and MLflow import.

`--dry-run` runs the same code on CPU in seconds (a tiny model, batch 4, a few steps, few images),
so CI keeps the script from rotting. Results go to benchmarks/results/gpu.json (`--out`), rewritten
after every section so a run cut short keeps what it measured. One `gpu_check:` line per figure.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from common import RESULTS, free_port, machine  # noqa: E402
from jpeg_path import cores, decode_crop_limit, make_image  # noqa: E402

# Dense (no structured sparsity) bf16 tensor-core peaks, TFLOP/s, from NVIDIA's datasheets. The
# datasheets print the sparse figure with an asterisk; these are half of it. More specific names
# come first: "A100" also matches r"A10", "H100 PCIe" also matches "H100".
PEAKS: list[tuple[str, float, str]] = [
    (r"H100.*(PCIe)", 756.0, "NVIDIA H100 Tensor Core GPU datasheet, H100 PCIe: BF16 1,513 TFLOPS with sparsity"),
    (r"H100.*NVL", 835.0, "NVIDIA H100 datasheet, H100 NVL: BF16 1,671 TFLOPS with sparsity"),
    (r"H200.*NVL", 835.0, "NVIDIA H200 Tensor Core GPU datasheet, H200 NVL: BF16 1,671 TFLOPS with sparsity"),
    (r"H200", 989.0, "NVIDIA H200 Tensor Core GPU datasheet, H200 SXM: BF16 1,979 TFLOPS with sparsity"),
    (r"H100|H800", 989.0, "NVIDIA H100 Tensor Core GPU datasheet, H100 SXM: BF16 1,979 TFLOPS with sparsity"),
    (r"B200", 2250.0, "NVIDIA HGX B200 datasheet: FP16/BF16 4.5 PFLOPS per GPU with sparsity"),
    (r"A100|A800", 312.0, "NVIDIA A100 Tensor Core GPU datasheet: BF16 312 TFLOPS (624 with sparsity)"),
    (r"L40S", 362.0, "NVIDIA L40S datasheet: BF16 733 TFLOPS with sparsity"),
    (r"L40\b", 181.0, "NVIDIA L40 datasheet: BF16 362 TFLOPS with sparsity"),
    (r"L4\b", 121.0, "NVIDIA L4 Tensor Core GPU datasheet: BF16 242 TFLOPS with sparsity"),
    (r"A10G", 125.0, "NVIDIA A10 datasheet (AWS's A10G is an A10 variant; AWS publishes no figure): BF16 250 with sparsity"),
    (r"A10\b", 125.0, "NVIDIA A10 Tensor Core GPU datasheet: BF16 125 TFLOPS (250 with sparsity)"),
]


def peak_for(name: str) -> tuple[float | None, str]:
    """(dense bf16 TFLOP/s, source) for a device name as torch reports it, or (None, why not)."""
    for pattern, tflops, source in PEAKS:
        if re.search(pattern, name):
            return tflops, source
    return None, f"no dense bf16 peak known for {name!r}: pass --peak-tflops"


@dataclass
class Check:
    """The run's record: written to JSON after each section, printed one line per figure."""

    out: Path
    dry_run: bool
    deadline: float
    data: dict = field(default_factory=dict)

    def __post_init__(self):
        self.data.update(name="gpu_check", dry_run=self.dry_run, figures={}, skipped={},
                         started=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"))

    def figure(self, key: str, line: str, **values) -> None:
        self.data["figures"][key] = values
        print(f"gpu_check: {key}: {line}", flush=True)
        self.save()

    def skip(self, key: str, why: str) -> None:
        self.data["skipped"][key] = why
        print(f"gpu_check: {key}: skipped: {why}", flush=True)
        self.save()

    def seconds_left(self) -> float:
        return self.deadline - time.monotonic()

    def save(self) -> None:
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self.out.write_text(json.dumps({**self.data, "machine": machine()}, indent=1))


@dataclass
class Setup:
    """What every training section shares."""

    spec: object  # clipscale.model_spec.ModelSpec
    device: str
    steps: int
    warmup: int
    max_batch: int
    peak_tflops: float | None
    flops_per_sample: int = 0


def model_spec(dry_run: bool):
    from clipscale.model import CLIP_PAPER_MODELS
    from clipscale.model_spec import ModelSpec

    if dry_run:
        return "tiny-vit", ModelSpec(embed_dim=32, image_size=32, vision_width=32, vision_layers=1,
                                     vision_head_width=16, patch_size=8, context_length=16, text_width=32,
                                     text_heads=2, text_layers=1)
    return "ViT-B/16", CLIP_PAPER_MODELS["ViT-B/16"]


def batch_of(spec, n: int, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(n)
    images = torch.randn(n, 3, spec.image_size, spec.image_size, generator=g)
    tokens = torch.randint(1, 49405, (n, spec.context_length), generator=g)
    tokens[:, 0], tokens[:, -1] = 49406, 49407
    return images.to(device), tokens.to(device)


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _is_oom(err: BaseException) -> bool:
    return isinstance(err, torch.cuda.OutOfMemoryError) or "out of memory" in str(err).lower()


def _free(device: str) -> None:
    import gc

    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.empty_cache()


# -- timing ---------------------------------------------------------------------

def time_steps(step, batch: tuple[torch.Tensor, torch.Tensor], setup: Setup) -> dict:
    """samples/s, step ms and the last loss over `setup.steps` steps after `setup.warmup`."""
    for _ in range(setup.warmup):
        step(*batch)
    _sync(setup.device)
    t0 = time.perf_counter()
    for _ in range(setup.steps):
        loss = step(*batch)
    _sync(setup.device)
    seconds = time.perf_counter() - t0
    n = batch[0].shape[0]
    sps = n * setup.steps / seconds
    out = {"batch": n, "samples_per_s": sps, "step_ms": 1000 * seconds / setup.steps, "loss": float(loss),
           "train_flops_per_sample": 3 * setup.flops_per_sample}
    out["tflops"] = sps * 3 * setup.flops_per_sample / 1e12
    out["mfu"] = out["tflops"] / setup.peak_tflops if setup.peak_tflops else None
    if setup.device.startswith("cuda"):
        out["max_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30
    return out


def _line(r: dict) -> str:
    mfu = f"MFU {r['mfu']:.3f}" if r["mfu"] is not None else "MFU n/a (no peak for this device)"
    return (f"batch {r['batch']}: {r['samples_per_s']:.1f} samples/s, {r['step_ms']:.1f} ms/step, "
            f"{r['tflops']:.2f} TFLOP/s, {mfu}, loss {r['loss']:.3f}")


def largest_batch(step, setup: Setup, start: int) -> int:
    """The largest power-of-two multiple of `start` (up to --max-batch) that trains a step."""
    best, n = 0, start
    while n <= setup.max_batch:
        try:
            step(*batch_of(setup.spec, n, setup.device))
            step(*batch_of(setup.spec, n, setup.device))  # the optimizer's state exists from step 2 on
            _sync(setup.device)
            best, n = n, 2 * n
        except RuntimeError as err:
            if not _is_oom(err):
                raise
            break
        finally:
            _free(setup.device)
    if not best:
        raise RuntimeError(f"even batch {start} does not fit on {setup.device}")
    return best


# -- sections -------------------------------------------------------------------

def torch_step(setup: Setup):
    """clipscale's model and loss under bf16 autocast (fp32 weights), torch's AdamW."""
    from clipscale.config import TrainConfig
    from clipscale.model import build_model
    from clipscale.train.loss import clamp_logit_scale_, clip_loss
    from clipscale.train.optim import adamw

    t = TrainConfig()
    model = build_model(setup.spec, setup.device)
    opt = adamw(model, t)
    kind = setup.device.split(":")[0]

    def step(images, tokens):
        with torch.autocast(device_type=kind, dtype=torch.bfloat16):
            image_features, text_features, scale = model(images, tokens)[:3]
            loss = clip_loss(image_features, text_features, scale)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        clamp_logit_scale_(model)
        return loss.detach()

    return step


def run_model(check: Check, setup: Setup, name: str) -> int:
    """The plain bf16 figure; returns the batch it used (the DeepSpeed stages start from it)."""
    step = torch_step(setup)
    batch = 4 if check.dry_run else largest_batch(step, setup, start=64)
    r = time_steps(step, batch_of(setup.spec, batch, setup.device), setup)
    check.figure("model_bf16_autocast", f"{name} {_line(r)}", model=name, **r)
    del step
    _free(setup.device)
    return batch


def init_single_rank(backend: str) -> None:
    """A one-rank process group, as DeepSpeed wants one even on a single device."""
    import deepspeed

    os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(free_port()))
    deepspeed.init_distributed(dist_backend=backend)


def deepspeed_step(setup: Setup, stage: int, batch: int):
    """One DeepSpeed engine as clipscale's worker builds it, with `precision=bf16`."""
    import deepspeed

    from clipscale.config import TrainConfig
    from clipscale.model import build_model
    from clipscale.train.ds_config import deepspeed_config
    from clipscale.train.loss import clamp_logit_scale_, clip_loss, flatten_scalar_params_
    from clipscale.train.optim import param_groups

    t = TrainConfig()
    model = build_model(setup.spec)
    flatten_scalar_params_(model)
    config = deepspeed_config(stage, batch, 1, 1, t.grad_clip, t.lr, tuple(t.betas), t.eps, t.weight_decay, "bf16")
    engine = deepspeed.initialize(model=model, model_parameters=param_groups(model, t.weight_decay),
                                  config=config, dist_init_required=False)[0]

    def step(images, tokens):
        image_features, text_features, scale = engine(images.to(torch.bfloat16), tokens)[:3]
        loss = clip_loss(image_features, text_features, scale)
        engine.backward(loss)
        engine.step()
        clamp_logit_scale_(engine)
        return loss.detach()

    return step, engine


def run_deepspeed(check: Check, setup: Setup, name: str, batch: int) -> None:
    try:
        import deepspeed  # noqa: F401
    except Exception as err:  # ImportError, or a broken op build at import
        check.skip("deepspeed", f"DeepSpeed does not import ({type(err).__name__}: {err}); "
                                "carry its wheel (gpu_check.sh says how)")
        return
    init_single_rank("nccl" if setup.device.startswith("cuda") else "gloo")
    for stage in (0, 2):
        n = batch
        while True:
            try:
                step, engine = deepspeed_step(setup, stage, n)
                r = time_steps(step, batch_of(setup.spec, n, setup.device), setup)
                break
            except RuntimeError as err:
                if not _is_oom(err) or n <= 1:
                    raise
                n //= 2  # bf16 weights plus fp32 masters: the plain run's batch may not fit
            finally:
                step = engine = None
                _free(setup.device)
        check.figure(f"deepspeed_zero{stage}_bf16", f"{name} ZeRO-{stage} {_line(r)}", model=name, zero_stage=stage,
                     **r)


def run_data(check: Check, per_core: int) -> None:
    """JPEG decode + random resized crop to 224 px, one process per core (the data path's limit)."""
    procs = cores()
    rng = np.random.default_rng(0)
    blobs = [make_image(i, rng) for i in range(per_core * procs)]
    r = decode_crop_limit(blobs, 224, procs)
    check.figure("data_jpeg224_decode_crop", f"{r.rate:.0f} img/s on {r.procs} cores ({r.rate / r.procs:.0f} per core, "
                 f"{r.images} images of ~256 px)", images_per_s=r.rate, per_core=r.rate / r.procs, procs=r.procs,
                 images=r.images, seconds=r.seconds)


def ray_missing() -> str | None:
    for module in ("ray", "deepspeed", "mlflow"):
        try:
            __import__(module)
        except Exception as err:
            return f"{module} does not import ({type(err).__name__}: {err}); Ray is too large to carry as wheels"
    return None


def run_ray_ladder(check: Check) -> None:
    """A 1-rung micro ladder on the GPU through the real entry point (Ray Tune + Train + DeepSpeed + MLflow)."""
    timeout = check.seconds_left() - 15
    if timeout < 90:
        check.skip("ray_micro_ladder", f"only {check.seconds_left():.0f} s left of the time budget")
        return
    work = Path(tempfile.mkdtemp(prefix="gpu-check-ladder-"))
    cmd = [sys.executable, str(REPO / "experiments" / "ladder.py"), "ladder.only=[0]",
           "ladder.rungs.0.samples=4096", "ladder.rungs.0.batch_size=256", "train.log_every_steps=2",
           "train.precision=bf16", "cluster.gpus_per_worker=1", "cluster.cpus_per_worker=1",
           f"data.synthetic.out={work / 'synthetic'}", "data.synthetic.samples=5000", f"eval.root={work / 'eval'}",
           "eval.n_per_task=100", "eval.tasks=[shape]", f"tracking.uri=sqlite:///{work / 'mlflow.db'}",
           f"cluster.storage_path={work / 'runs'}"]
    t0 = time.perf_counter()
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=REPO)
        rc, tail = out.returncode, (out.stdout + out.stderr)[-2000:]
    except subprocess.TimeoutExpired as err:
        rc, tail = None, f"timed out after {timeout:.0f} s: {str(err.stdout or '')[-1500:]}"
    wall = time.perf_counter() - t0
    check.figure("ray_micro_ladder", f"exit {rc}, {wall:.0f} s wall (4,096 samples, batch 256, bf16)",
                 exit_code=rc, wall_s=wall, output_tail=tail, work_dir=str(work))


# -- main -----------------------------------------------------------------------

def environment(check: Check, args) -> Setup | None:
    """The device, its peak and the model; None (with reasons recorded) when the model cannot run."""
    cuda = torch.cuda.is_available()
    name = torch.cuda.get_device_name() if cuda else "cpu"
    peak, source = (args.peak_tflops, "--peak-tflops") if args.peak_tflops else peak_for(name)
    check.data["device"] = {"name": name, "torch": torch.__version__, "cuda": torch.version.cuda,
                            "peak_bf16_tflops": peak, "peak_source": source, "cores": cores()}
    print(f"gpu_check: device {name}, torch {torch.__version__}, dense bf16 peak "
          f"{peak if peak else 'unknown'} TFLOP/s ({source})", flush=True)
    if not cuda and not args.dry_run:
        raise SystemExit("gpu_check: no CUDA device is visible; use --dry-run to run on CPU")
    try:
        import open_clip  # noqa: F401
    except Exception as err:
        why = f"open_clip does not import ({type(err).__name__}: {err}); carry its wheel (gpu_check.sh says how)"
        for key in ("model_bf16_autocast", "deepspeed", "data_jpeg224_decode_crop"):
            check.skip(key, why)
        return None
    import open_clip

    from clipscale.model import forward_flops

    check.data["open_clip"] = {"version": open_clip.__version__, "from": str(Path(open_clip.__file__).parent)}
    label, spec = model_spec(args.dry_run)
    setup = Setup(spec=spec, device="cuda" if cuda else "cpu", steps=args.steps or (3 if args.dry_run else 20),
                  warmup=1 if args.dry_run else 3, max_batch=args.max_batch, peak_tflops=peak)
    setup.flops_per_sample = forward_flops(spec)
    check.data["model"] = {"name": label, "spec": spec.to_dict(), "forward_flops_per_sample": setup.flops_per_sample}
    return setup


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dry-run", action="store_true", help="CPU, tiny model, batch 4, a few steps (for CI)")
    p.add_argument("--out", type=Path, default=RESULTS / "gpu.json")
    p.add_argument("--skip", action="append", default=[], choices=["model", "deepspeed", "data", "ray"])
    p.add_argument("--peak-tflops", type=float, default=None, help="dense bf16 peak, for a GPU not in the table")
    p.add_argument("--max-batch", type=int, default=2048)
    p.add_argument("--steps", type=int, default=0, help="timed steps per figure (default 20; 3 in a dry run)")
    p.add_argument("--budget-s", type=float, default=450, help="the Ray ladder is skipped past this")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    check = Check(out=args.out, dry_run=args.dry_run, deadline=time.monotonic() + args.budget_s)
    t0 = time.perf_counter()
    setup = environment(check, args)
    label = check.data.get("model", {}).get("name", "")
    batch = 4
    if setup and "model" not in args.skip:
        batch = run_model(check, setup, label)
    elif setup:
        check.skip("model_bf16_autocast", "--skip model")
    if setup and "deepspeed" not in args.skip:
        run_deepspeed(check, setup, label, batch)
    elif setup:
        check.skip("deepspeed", "--skip deepspeed")
    if "data" in args.skip:
        check.skip("data_jpeg224_decode_crop", "--skip data")
    elif setup:
        run_data(check, per_core=16 if args.dry_run else 1000)
    if args.dry_run or "ray" in args.skip:
        check.skip("ray_micro_ladder", "dry run: the ladder takes minutes on CPU (tests/test_ladder.py covers it)"
                   if args.dry_run else "--skip ray")
    elif (why := ray_missing()) is not None:
        check.skip("ray_micro_ladder", why)
    else:
        run_ray_ladder(check)
    check.data["wall_s"] = time.perf_counter() - t0
    check.save()
    print(f"gpu_check: wrote {check.out} ({len(check.data['figures'])} figures, "
          f"{len(check.data['skipped'])} skipped, {check.data['wall_s']:.0f} s)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
