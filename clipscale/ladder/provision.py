"""What a ladder needs before its first trial: absolute paths, the corpus and its validation
split, the eval sets, a corpus big enough to train on, and Ray."""

from __future__ import annotations

import copy
import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from clipscale import ray_logging, storage
from clipscale.config import ExperimentConfig
from clipscale.tracking import tracking_uri


# ---- paths --------------------------------------------------------------------------------


def resolve_paths(cfg: ExperimentConfig, base: str | None = None) -> ExperimentConfig:
    """Every relative path in the config made absolute against `base` (the directory the ladder
    started from), once, in the driver. Tune runs each trial in its own working directory, so a
    relative `cluster.storage_path` resolved there put checkpoints in Ray's session folder, where
    a rerun never found them."""
    base = base or os.getcwd()
    out = copy.deepcopy(cfg)
    out.cluster.storage_path = storage.absolute(cfg.cluster.storage_path, base)
    out.data.synthetic.out = storage.absolute(cfg.data.synthetic.out, base)
    out.eval.root = storage.absolute(cfg.eval.root, base)
    out.data.shards, out.data.val_shards = _absolute(cfg.data.shards, base), _absolute(cfg.data.val_shards, base)
    for source in out.data.sources:
        source.shards, source.val_shards = _absolute(source.shards, base), _absolute(source.val_shards, base)
        if source.synthetic is not None:
            source.synthetic.out = storage.absolute(source.synthetic.out, base)
    out.tracking.uri = tracking_uri(cfg.tracking.uri, base)
    return out


def _absolute(shards: str | list[str], base: str) -> str | list[str]:
    """A shard spec (one path or pattern, or a list; "" for none) with its relative paths made absolute."""
    if isinstance(shards, str):
        return storage.absolute(shards, base)
    return [storage.absolute(s, base) for s in shards]


# ---- more than one node -------------------------------------------------------------------

# Filesystem types every node can mount at one path (NFS, SMB, parallel filesystems, and FUSE
# mounts such as s3fs, gcsfuse, JuiceFS or mountpoint-s3). Anything else is this machine's disk.
_SHARED_FS = ("nfs", "nfs4", "cifs", "smb3", "lustre", "ceph", "glusterfs", "gpfs", "beegfs", "fuse.")


def cluster_nodes(cfg: ExperimentConfig) -> int:
    """Alive nodes of the cluster this ladder runs on. A named cluster (`cluster.address` or
    RAY_ADDRESS) is joined here, which starts nothing; a local Ray, still to be started, is one node."""
    ray = sys.modules.get("ray")
    if ray is None or not ray.is_initialized():
        if not (cfg.cluster.address or os.environ.get("RAY_ADDRESS")):
            return 1
        init_ray(cfg)
        import ray
    return sum(1 for node in ray.nodes() if node["Alive"])


def check_shared_storage(cfg: ExperimentConfig, nodes: int) -> None:
    """On more than one node, refuse paths only the driver's machine sees, before anything is
    written or trained. Trials, workers and a restarted worker group land on any node: a
    checkpoint on one node's disk is not there after a restart elsewhere, rank 0 evaluates
    wherever it runs, and a sqlite file is a different, empty database on every other node."""
    expected = max(nodes, cfg.cluster.expect_nodes)
    if expected <= 1:
        return
    problems = [f"{key}={value!r} ({instead})" for key, value, instead in _node_local_settings(cfg)]
    if problems:
        why = f"{nodes} nodes" if nodes > 1 else f"cluster.expect_nodes={cfg.cluster.expect_nodes}"
        raise storage.StorageError(
            f"this ladder runs on more than one node ({why}), but these paths are local to the driver's machine: "
            + "; ".join(problems))


def _corpus_paths(cfg: ExperimentConfig) -> list[tuple[str, str | list[str]]]:
    """(key, shards) for every corpus the ladder reads: the one corpus, or each mixture source."""
    if not cfg.data.sources:
        return [("data.shards", cfg.data.shards) if cfg.data.shards else ("data.synthetic.out", cfg.data.synthetic.out)]
    return [(f"data.sources.{i}.shards", s.shards) if s.shards else (f"data.sources.{i}.synthetic.out", s.synthetic.out)
            for i, s in enumerate(cfg.data.sources)]


def _node_local_settings(cfg: ExperimentConfig) -> list[tuple[str, str, str]]:
    """(key, value, what to use instead) for every setting a node other than the driver's would miss."""
    shared = "use s3://bucket/prefix, or a path on a filesystem every node mounts (NFS)"
    found = []
    if _node_local(cfg.cluster.storage_path):
        found.append(("cluster.storage_path", cfg.cluster.storage_path, shared))
    if cfg.eval.tasks and _node_local(cfg.eval.root):
        found.append(("eval.root", cfg.eval.root, shared))
    for key, shards in _corpus_paths(cfg):
        local = [uri for uri in ([shards] if isinstance(shards, str) else shards) if _node_local(uri)]
        if local:  # the first of a long list names the problem
            more = f" and {len(local) - 1} more" if len(local) > 1 else ""
            found.append((key, local[0] + more, shared))
    uri = cfg.tracking.uri or ""
    if uri.startswith(("sqlite:", "file:", "/", ".", "~")):  # a database file or a file store
        found.append(("tracking.uri", uri, "use an MLflow server every node reaches, "
                      "tracking.uri=http://HOST:5000 (cluster/mlflow/ sets one up)"))
    return found


def _node_local(uri: str) -> bool:
    if not uri or storage.is_s3(uri):
        return False
    fstype = _mount_type(os.path.realpath(uri))
    return not any(fstype == t or (t.endswith(".") and fstype.startswith(t)) for t in _SHARED_FS)


def _mount_type(path: str) -> str:
    """The type of the filesystem holding `path`: the longest mount point above it in /proc/self/mounts."""
    try:
        mounts = Path("/proc/self/mounts").read_text().splitlines()
    except OSError:  # not Linux: nothing known, so the path counts as local
        return ""
    best, fstype = "", ""
    for line in mounts:
        fields = line.split()
        if len(fields) < 3:
            continue
        point = fields[1].replace("\\040", " ")
        if (path == point or path.startswith(point.rstrip("/") + "/")) and len(point) > len(best):
            best, fstype = point, fields[2]
    return fstype


# ---- data ---------------------------------------------------------------------------------


@dataclass
class Corpus:
    """The shards a ladder trains on and the validation split it never trains on (empty: none).
    For a mixture (`data.sources`), `train`/`val` are the union and `sources`/`val_sources` hold
    each source's own shards and weight."""

    train: tuple[str, ...]
    val: tuple[str, ...] = ()
    sources: tuple = ()  # pipeline.Source per mixture source: training shards
    val_sources: tuple = ()  # pipeline.Source per source with a validation split: its val shards

    def fit_args(self) -> dict:
        """`fit_rung`'s data arguments beside the training shards, in one place for a ladder's and a
        sweep's trials (a sweep's own copy of these fields once dropped a mixture's sources)."""
        return {"val_shards": self.val, "sources": self.sources, "val_sources": self.val_sources}


def ensure_data(cfg: ExperimentConfig) -> Corpus:
    """Shard URIs for the run; the synthetic corpus (and its validation split) is generated once
    when no shards are configured."""
    if cfg.data.sources:
        return _mixture(cfg)
    if not cfg.data.shards:
        return _synthetic(cfg, cfg.data.synthetic, "data.synthetic")
    corpus = _user_corpus(cfg, cfg.data.shards, cfg.data.val_shards)
    if not corpus.val:
        print("clipscale: no validation split (data.val_shards or data.val_fraction): val/loss is not measured",
              flush=True)
    return corpus


def _user_corpus(cfg: ExperimentConfig, shards, val_shards) -> Corpus:
    """Configured shards, less the validation split: named shards, or a hashed fraction of them."""
    from clipscale.data.pipeline import resolve_shards
    from clipscale.data.validation import split_by_name

    first = shards if isinstance(shards, str) else shards[0]
    storage.check_reachable(first, cfg.data.storage)
    train = resolve_shards(shards, cfg.data.storage)
    if val_shards:
        val = resolve_shards(val_shards, cfg.data.storage)
        held_out = set(val)
        return Corpus(tuple(s for s in train if s not in held_out), val)
    if cfg.data.val_fraction:
        return Corpus(*split_by_name(train, cfg.data.val_fraction))
    return Corpus(train)


def _mixture(cfg: ExperimentConfig) -> Corpus:
    """Each source's corpus and validation split, by the same rules as a single corpus."""
    from clipscale.data.pipeline import Source

    parts = []
    for i, source in enumerate(cfg.data.sources):
        if source.synthetic is not None:
            parts.append((source, _synthetic(cfg, source.synthetic, f"data.sources.{i}.synthetic")))
        else:
            parts.append((source, _user_corpus(cfg, source.shards, source.val_shards)))
    no_val = [s.name for s, c in parts if not c.val]
    if no_val:
        where = "the others" if len(no_val) < len(parts) else "none: val/loss is not measured"
        print(f"clipscale: sources without a validation split (val_shards or data.val_fraction): {', '.join(no_val)}; "
              f"val/loss is measured on {where}", flush=True)
    return Corpus(train=tuple(u for _, c in parts for u in c.train), val=tuple(u for _, c in parts for u in c.val),
                  sources=tuple(Source(s.name, c.train, s.weight) for s, c in parts),
                  val_sources=tuple(Source(s.name, c.val, s.weight) for s, c in parts if c.val))


def _synthetic(cfg: ExperimentConfig, syn, key: str) -> Corpus:
    from clipscale.data import synthetic
    from clipscale.data.pipeline import resolve_shards

    root = syn.out
    val_root = storage.join(root, "val")
    _ensure_synthetic(cfg, syn, key, root, syn.samples, synthetic.TRAIN_STREAM)
    _ensure_synthetic(cfg, syn, key, val_root, syn.val_samples, synthetic.VAL_STREAM)
    return Corpus(resolve_shards(root, cfg.data.storage), resolve_shards(val_root, cfg.data.storage))


def _ensure_synthetic(cfg: ExperimentConfig, syn, key: str, root: str, samples: int, stream: int) -> None:
    """Generate `samples` of the synthetic stream into `root` unless a matching corpus is there."""
    import json

    from clipscale.data import shards as shard_io
    from clipscale.data import synthetic

    wanted = {"seed": syn.seed, "image_size": syn.image_size, "kind_weights": syn.kind_weights or synthetic.KIND_WEIGHTS,
              "stream": stream}
    try:
        sizes = shard_io.read_manifest(root, cfg.data.storage)
        have = json.loads(storage.read_bytes(storage.join(root, "corpus.json"), cfg.data.storage))
    except storage.StorageError:
        sizes, have = {}, None
    if have is not None:
        have.setdefault("stream", synthetic.TRAIN_STREAM)  # corpora written before the validation split
        differ = {k: (have.get(k), v) for k, v in wanted.items() if have.get(k) != v}
        if differ:
            raise storage.StorageError(
                f"{key}.out: {root} holds a corpus made with other settings {differ} (have, want); "
                f"delete it or point {key}.out elsewhere")
        if sum(sizes.values()) >= samples:
            return
    print(f"clipscale: generating the synthetic corpus ({samples} samples) in {root}", flush=True)
    synthetic.write_corpus(root, samples, syn.shard_size, syn.seed, syn.image_size, settings=cfg.data.storage,
                           kind_weights=syn.kind_weights, stream=stream)


def check_corpus_size(cfg: ExperimentConfig, shards: tuple[str, ...], plans: list) -> int:
    """Fail before any trial starts when the corpus cannot fill one global batch of the widest rung.
    Counts come from `sizes.json` or img2dataset's `*_stats.json` (read otherwise)."""
    from clipscale.data import shards as shard_io

    total = shard_io.count_samples(list(shards), cfg.data.storage)
    need = max(p.rung.batch_size for p in plans)
    if total < need:
        where = cfg.data.shards if cfg.data.shards else cfg.data.synthetic.out
        raise storage.StorageError(
            f"data.shards: {where} holds {total} usable samples in {len(shards)} shard(s); the ladder needs at least "
            f"one global batch ({need}) to train. Check the shards (img2dataset's *_stats.json 'successes')")
    return total


def ensure_eval(cfg: ExperimentConfig) -> str:
    from clipscale.data import evalsets

    root = cfg.eval.root
    # Tasks clipscale can make are made on first use; any other name is a set the user
    # put there in CLIP_benchmark's layout (ImageNet, CIFAR...), which must already exist.
    own = [t for t in cfg.eval.tasks if t in evalsets.ALL_TASKS]
    for task in cfg.eval.tasks:
        if task not in own and not storage.exists(storage.join(root, task, evalsets.CLASSNAMES), cfg.data.storage) \
                and not storage.exists(storage.join(root, task, "test"), cfg.data.storage):
            raise storage.StorageError(
                f"eval.tasks: {task!r} is not a task clipscale generates ({', '.join(evalsets.ALL_TASKS)}) and "
                f"{storage.join(root, task)} holds no CLIP_benchmark-layout set")
    written = evalsets.ensure_eval_sets(root, seed=cfg.eval.seed, n_per_task=cfg.eval.n_per_task,
                                        image_size=cfg.data.synthetic.image_size, tasks=own,
                                        n_retrieval=cfg.eval.n_per_task, settings=cfg.data.storage) if own else []
    if written:
        print(f"clipscale: wrote eval sets {', '.join(written)} under {root}", flush=True)
    return root


# ---- Ray ----------------------------------------------------------------------------------


def init_ray(cfg: ExperimentConfig) -> None:
    import ray

    if ray.is_initialized():
        return
    # Only non-secret settings travel in the runtime env: Ray records runtime envs in its
    # own logs and job metadata. Credentials come from where the workers run (an instance
    # profile, a Kubernetes secret, or the environment `ray start` / the local driver had).
    env = storage.public_env()
    env["MLFLOW_TRACKING_URI"] = tracking_uri(cfg.tracking.uri)
    address = cfg.cluster.address or os.environ.get("RAY_ADDRESS")
    runtime_env: dict = {"env_vars": env}
    if not address:  # a Ray started here has no dashboard, so Ray Train's State API queries all fail
        runtime_env["worker_process_setup_hook"] = ray_logging.SETUP_HOOK
    ray.init(address=address, runtime_env=runtime_env, log_to_driver=True, include_dashboard=False,
             configure_logging=False)


def max_concurrent_trials(cfg: ExperimentConfig, plans: list) -> int:
    """As many trials as the cluster can really run, with CPU left over for Ray Data."""
    if cfg.ladder.max_concurrent:
        return cfg.ladder.max_concurrent
    import ray

    res = ray.cluster_resources()
    cpus = res.get("CPU", 1.0)
    reserve = max(1.0, 0.25 * cpus)  # Ray Data decode tasks
    widest = max(p.rung.workers for p in plans)
    per_trial_cpu = widest * cfg.cluster.cpus_per_worker
    by_cpu = max(1, math.floor((cpus - reserve) / per_trial_cpu))
    if cfg.cluster.gpus_per_worker > 0:
        by_gpu = max(1, math.floor(res.get("GPU", 0.0) / (widest * cfg.cluster.gpus_per_worker)))
        return min(by_cpu, by_gpu)
    return by_cpu


def oversubscription_warning(torch_threads: int, concurrency: int, workers: int, cpus: float) -> str | None:
    """A warning when concurrent trials ask for more intra-op threads than there are CPUs.

    OpenMP threads spin while they wait for each other, so oversubscribed cores do not share
    but thrash: on 2 cores, two trials at 2 threads each ran 5x slower than at 1 thread each.
    """
    if torch_threads and concurrency * workers * torch_threads > cpus:
        return (f"clipscale: warning: train.torch_threads={torch_threads} x {concurrency} concurrent trial(s) x "
                f"{workers} worker(s) is more threads than the cluster's {cpus:g} CPUs; they will thrash. "
                "Lower train.torch_threads, or 0 for each worker's CPU share")
    return None
