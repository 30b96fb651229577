"""cluster/: the AWS launcher config, the KubeRay manifests and the helper scripts, checked
without a cluster: against Ray's own validator and schemas, against the configs they
run, and for secrets."""

from __future__ import annotations

import copy
import os
import re
import shlex
import signal
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from clipscale.config import load_config

ROOT = Path(__file__).resolve().parents[1]
CLUSTER = ROOT / "cluster"
AWS = CLUSTER / "aws.yaml"
RAYCLUSTER = CLUSTER / "kuberay" / "raycluster.yaml"
RAYJOB = CLUSTER / "kuberay" / "rayjob.yaml"
DOCKERFILE = CLUSTER / "docker" / "Dockerfile"
CLIP_PAPER = ROOT / "experiments" / "configs" / "clip_paper.yaml"
GPUS_PER_NODE = 8


def widest_rung() -> int:
    """GPUs the widest rung of the paper ladder needs at once (one GPU per worker)."""
    cfg = load_config(CLIP_PAPER)
    return max(r.workers for r in cfg.ladder.rungs) * int(cfg.cluster.gpus_per_worker)


# ---- cluster/aws.yaml ---------------------------------------------------------------------


def aws() -> dict:
    return yaml.safe_load(AWS.read_text())


def ray_validate(config: dict) -> None:
    """What `ray up` does to a config before it talks to AWS: fill in the provider's
    defaults (prepare_config), then validate against ray-schema.json plus Ray's own
    cross-field rules (validate_config)."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    validate_config(prepare_config(copy.deepcopy(config)))


@pytest.mark.slow  # imports Ray (its validator, its version); the fast tier loads no Ray
def test_aws_config_passes_rays_validator():
    ray_validate(aws())


@pytest.mark.slow  # imports Ray (its validator, its version); the fast tier loads no Ray
def test_rays_validator_catches_what_a_typo_would_break():
    import jsonschema

    typo = aws()
    typo["available_node_types"]["gpu-p5"]["min_worker"] = 1
    with pytest.raises(jsonschema.ValidationError):
        ray_validate(typo)
    wrong_head = aws()
    wrong_head["head_node_type"] = "no-such-type"
    with pytest.raises(ValueError):
        ray_validate(wrong_head)


def test_aws_node_types_serve_the_paper_ladder():
    cfg = aws()
    types = cfg["available_node_types"]
    assert cfg["provider"]["type"] == "aws"
    gpu = {name: t for name, t in types.items() if t["resources"].get("GPU")}
    assert {t["node_config"]["InstanceType"] for t in gpu.values()} == {"p4d.24xlarge", "p5.48xlarge"}
    for name, t in gpu.items():
        assert t["resources"]["GPU"] == GPUS_PER_NODE, name
        assert t["min_workers"] == 0, f"{name}: idle GPU nodes would bill around the clock"
        assert t["max_workers"] * GPUS_PER_NODE >= widest_rung(), name
    assert cfg["max_workers"] * GPUS_PER_NODE >= widest_rung()
    # Training and decode tasks belong on the GPU nodes, not the head.
    assert types[cfg["head_node_type"]]["resources"].get("CPU") == 0
    for name, t in types.items():
        # Without these Ray falls back to its default AMI (Ubuntu 18.04, too old a driver
        # for H100) and to a profile with no access to the data bucket.
        assert t["node_config"].get("ImageId"), name
        assert t["node_config"].get("IamInstanceProfile"), name


def test_aws_nodes_install_this_checkout_and_get_settings_not_secrets():
    cfg = aws()
    mounts = cfg["file_mounts"]
    for remote, local in mounts.items():
        assert (ROOT / local).exists(), f"`ray up` from the repository root cannot find {local}"
    # What `pip install -e` needs, mounted into one directory that the setup installs.
    by_local = {Path(local).as_posix().removeprefix("./"): remote for remote, local in mounts.items()}
    assert {"pyproject.toml", "README.md", "clipscale"} <= set(by_local)
    (home,) = {str(Path(r).parent) for r in mounts}
    commands = " ; ".join(cfg["setup_commands"])
    assert re.search(rf"pip install .*-e {re.escape(home)}(\s|$)", commands)
    for var in ("MLFLOW_TRACKING_URI", "AWS_REGION"):
        assert f"export {var}=" in commands
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        assert var not in AWS.read_text()  # the instance profile supplies credentials
    assert not any(local.rstrip("/") in (".", "./") for local in mounts.values()), "would hash .venv and data/"


# ---- cluster/kuberay ----------------------------------------------------------------------


def docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def raycluster() -> dict:
    (doc,) = docs(RAYCLUSTER)
    return doc


def rayjob() -> dict:
    (doc,) = docs(RAYJOB)
    return doc


def pod_groups(rc: dict) -> list[tuple[str, dict]]:
    spec = rc["spec"]
    groups = [("head", spec["headGroupSpec"])]
    groups += [(g["groupName"], g) for g in spec["workerGroupSpecs"]]
    return groups


def test_manifests_are_ray_io_v1_of_the_right_kinds():
    for path, kind in ((RAYCLUSTER, "RayCluster"), (RAYJOB, "RayJob")):
        (doc,) = docs(path)
        assert doc["apiVersion"] == "ray.io/v1", path.name
        assert doc["kind"] == kind, path.name
        assert doc["metadata"]["name"], path.name


def test_raycluster_has_the_required_fields():
    spec = raycluster()["spec"]
    assert spec["workerGroupSpecs"], "at least one worker group"
    for name, group in pod_groups(raycluster()):
        params = group["rayStartParams"]
        assert isinstance(params, dict), name
        # KubeRay turns these into `ray start` flags; it rejects non-string values.
        assert all(isinstance(v, str) for v in params.values()), name
        containers = group["template"]["spec"]["containers"]
        assert containers and all(c.get("image") for c in containers), name
    for g in spec["workerGroupSpecs"]:
        assert g["groupName"] and 0 <= g["minReplicas"] <= g["replicas"] <= g["maxReplicas"]
        gpus = int(g["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"])
        assert gpus == GPUS_PER_NODE
        assert g["maxReplicas"] * gpus >= widest_rung()


@pytest.mark.slow  # imports Ray (its validator, its version); the fast tier loads no Ray
def test_one_image_for_head_workers_and_submitter_built_on_the_pinned_ray():
    import ray

    images = {c["image"] for _, g in pod_groups(raycluster()) for c in g["template"]["spec"]["containers"]}
    images |= {c["image"] for c in rayjob()["spec"]["submitterPodTemplate"]["spec"]["containers"]}
    assert len(images) == 1, images
    assert raycluster()["spec"]["rayVersion"] == ray.__version__
    base = re.search(r"^FROM\s+(\S+)", DOCKERFILE.read_text(), re.M).group(1)
    assert base.startswith(f"rayproject/ray:{ray.__version__}-py311"), base


def test_pods_share_settings_and_take_secrets_only_from_secret_refs():
    envs = {name: g["template"]["spec"]["containers"][0]["env"] for name, g in pod_groups(raycluster())}
    first = next(iter(envs.values()))
    assert all(env == first for env in envs.values()), "head and workers must see the same settings"
    names = {e["name"] for e in first}
    assert {"MLFLOW_TRACKING_URI", "AWS_REGION"} <= names
    secretish = re.compile(r"KEY_ID|SECRET|PASSWORD|TOKEN", re.I)
    for e in first:
        if secretish.search(e["name"]):
            assert "value" not in e, e["name"]
            assert e["valueFrom"]["secretKeyRef"]["name"], e["name"]


def test_rayjob_runs_a_real_config_on_the_raycluster():
    job = rayjob()["spec"]
    assert job["clusterSelector"]["ray.io/cluster"] == raycluster()["metadata"]["name"]
    tokens = shlex.split(job["entrypoint"])
    i = tokens.index("experiments/ladder.py")
    assert tokens[i - 1] == "python"
    # The driver's working directory is where the image put the repository.
    workdir = re.search(r"^WORKDIR\s+(\S+)", DOCKERFILE.read_text(), re.M).group(1)
    assert tokens[:3] == ["cd", workdir, "&&"]
    assert (ROOT / tokens[i]).is_file()
    assert tokens[i + 1] == "--config"
    config = ROOT / tokens[i + 2]
    assert config.is_file()
    overrides = tokens[i + 3:]
    assert overrides and all("=" in o and not o.startswith("-") for o in overrides)
    cfg = load_config(config, overrides)  # unknown keys or bad values raise ConfigError
    assert cfg.cluster.storage_path.startswith("s3://")
    assert "{" in cfg.data.shards  # the brace pattern reached clipscale unexpanded


# ---- secrets ------------------------------------------------------------------------------

SCANNED = sorted(p for base in (CLUSTER, ROOT / "experiments" / "configs") for p in base.rglob("*") if p.is_file())
ACCESS_KEY = re.compile(r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b")
PRIVATE_KEY = re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----")
# NAME = value / NAME: value, where NAME says secret; a value is fine only as a placeholder
# ("...", "YOUR-...", "<...>"), a shell reference ("$VAR") or a structure ("{secretKeyRef...").
ASSIGNMENT = re.compile(r"""([A-Za-z0-9_]*(?:secret|password|passwd|token)[A-Za-z0-9_]*)["']?\s*[:=]\s*["']?([^\s"',]*)""", re.I)
PLACEHOLDER = re.compile(r"^(?:|\.\.\.|YOUR-.*|<.*|\$.*|\{.*)$")


def secrets_in(text: str) -> list[str]:
    found = ACCESS_KEY.findall(text) + PRIVATE_KEY.findall(text)
    found += [f"{name}={value}" for name, value in ASSIGNMENT.findall(text) if not PLACEHOLDER.match(value)]
    return found


def test_secret_scan_would_catch_a_leak():
    key = "AKIA" + "Q" * 16
    assert secrets_in(f"aws_access_key_id = {key}")
    assert secrets_in("AWS_SECRET_ACCESS_KEY=wJalrXUtnFEMIxK7MDENGxbPxRfiCY")
    assert secrets_in("  MLFLOW_TRACKING_PASSWORD: hunter2")
    assert secrets_in("-----BEGIN RSA PRIVATE KEY-----")
    assert not secrets_in("export AWS_SECRET_ACCESS_KEY=...")
    assert not secrets_in("--from-literal=MLFLOW_TRACKING_PASSWORD=YOUR-PASSWORD")
    assert not secrets_in("valueFrom: {secretKeyRef: {name: clipscale-aws, key: AWS_SECRET_ACCESS_KEY}}")


def test_scan_covers_the_cluster_and_gpu_configs():
    names = {p.relative_to(ROOT).as_posix() for p in SCANNED}
    assert {"cluster/aws.yaml", "cluster/kuberay/raycluster.yaml", "cluster/kuberay/rayjob.yaml",
            "cluster/local.sh", "cluster/mlflow/server.sh", "cluster/README.md",
            "experiments/configs/clip_paper.yaml", "experiments/configs/gpu_small.yaml"} <= names


@pytest.mark.parametrize("path", SCANNED, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_no_secrets_in_cluster_files_or_configs(path):
    assert secrets_in(path.read_text(errors="replace")) == []


# ---- scripts ------------------------------------------------------------------------------


@pytest.mark.parametrize("script", ["local.sh", "mlflow/server.sh"])
def test_scripts_parse_and_are_executable(script):
    path = CLUSTER / script
    assert os.access(path, os.X_OK), f"chmod +x {path}"
    subprocess.run(["bash", "-n", str(path)], check=True)


def run_local(state: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "CLIPSCALE_LOCAL_DIR": str(state)}
    return subprocess.run([str(CLUSTER / "local.sh"), *args], env=env, capture_output=True, text=True, timeout=120)


def test_local_stop_and_status_with_nothing_running(tmp_path):
    for cmd in ("status", "stop"):
        out = run_local(tmp_path, cmd)
        assert out.returncode == 0, out.stderr
        assert "ray: not running" in out.stdout and "mlflow: not running" in out.stdout
    assert run_local(tmp_path, "restart").returncode != 0  # unknown commands are refused


def live_in_group(pgid: int) -> list[str]:
    rows = subprocess.run(["ps", "-e", "-o", "pgid=,pid=,stat="], capture_output=True, text=True).stdout
    return [pid for g, pid, stat in (r.split() for r in rows.splitlines() if r.strip())
            if g == str(pgid) and not stat.startswith("Z")]


def test_local_stop_ends_only_the_recorded_process_groups(tmp_path):
    def session(cmd: str) -> subprocess.Popen:
        # What local.sh's start does: each service leads its own session / process group.
        return subprocess.Popen(["setsid", "bash", "-c", cmd], stdin=subprocess.DEVNULL)

    # Like `ray start --block`: a leader that stops its children when it gets SIGTERM.
    ray_like = session("trap 'kill $(jobs -p); exit 0' TERM; sleep 300 & sleep 300 & wait")
    # Like `mlflow server`: children (uvicorn, job runner) that must be signalled themselves.
    mlflow_like = session("sleep 300 & sleep 300 & wait")
    bystander = subprocess.Popen(["sleep", "300"], start_new_session=True)
    try:
        time.sleep(0.5)
        (tmp_path / "ray.pid").write_text(f"{ray_like.pid}\n")
        (tmp_path / "mlflow.pid").write_text(f"{mlflow_like.pid}\n")
        assert "ray: running" in run_local(tmp_path, "status").stdout
        t0 = time.monotonic()
        out = run_local(tmp_path, "stop")
        assert out.returncode == 0, out.stderr
        assert time.monotonic() - t0 < 20  # no waiting out the KILL fallback
        ray_like.wait(timeout=5)
        mlflow_like.wait(timeout=5)
        for leader in (ray_like, mlflow_like):
            assert live_in_group(leader.pid) == [], "the whole process group should be gone"
        assert bystander.poll() is None, "stop must not touch processes it did not start"
        assert not (tmp_path / "ray.pid").exists() and not (tmp_path / "mlflow.pid").exists()
    finally:
        for p in (ray_like, mlflow_like, bystander):
            if p.poll() is None:
                os.kill(p.pid, signal.SIGKILL)
                p.wait()


def test_mlflow_server_script_names_what_is_missing():
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PG", "MLFLOW_"))}
    out = subprocess.run([str(CLUSTER / "mlflow" / "server.sh")], env=env, capture_output=True, text=True, timeout=30)
    assert out.returncode != 0
    assert "PGHOST" in out.stderr

