"""Session-wide real services: a moto S3 server on 127.0.0.1 and a local Ray.

The AWS credentials are fake but distinctive, so leak tests can search every
output for them.
"""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass

import pytest

from tests.helpers import free_port

# Tests that start Ray are the slow tier: `make test-fast` (-m "not slow") runs without Ray.
RAY_FIXTURES = {"ray_local", "ray_head"}


def pytest_collection_modifyitems(config, items):
    for item in items:
        if RAY_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session", autouse=True)
def _fast_tier_stays_light(request):
    """The fast tier's promise (`make test-fast`): neither Ray nor DeepSpeed is even imported. A
    test that starts needing them belongs in the slow tier; the run fails so that it is moved.
    A fixture rather than a session hook, so that each pytest-xdist worker checks itself and its
    failure reaches the run's result."""
    yield
    import sys

    if request.config.getoption("markexpr") != "not slow":
        return
    loaded = [m for m in ("ray", "deepspeed") if m in sys.modules]
    if loaded:
        pytest.fail(f"the fast tier imported {', '.join(loaded)}: mark the test that needs it slow", pytrace=False)


# Random per session, so that no file (not even this one, which `ray job submit` uploads)
# contains the values the leak tests search for.
FAKE_KEY_ID = "AKIA" + secrets.token_hex(8).upper()
FAKE_SECRET = "cs-secret-" + secrets.token_hex(16)


@dataclass
class S3Server:
    endpoint_url: str
    bucket: str
    server: object

    @property
    def settings(self):
        from clipscale.storage import StorageSettings

        return StorageSettings(endpoint_url=self.endpoint_url)

    def client(self):
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint_url, region_name="us-east-1",
                            aws_access_key_id=FAKE_KEY_ID, aws_secret_access_key=FAKE_SECRET)

    def uri(self, *parts: str) -> str:
        return "s3://" + "/".join((self.bucket, *parts))


@pytest.fixture(scope="session", autouse=True)
def _aws_env():
    # Set before any Ray process starts so Ray workers inherit the same view.
    saved = {k: os.environ.get(k) for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION",
                                            "RAY_AUTH_MODE")}
    os.environ.update(AWS_ACCESS_KEY_ID=FAKE_KEY_ID, AWS_SECRET_ACCESS_KEY=FAKE_SECRET, AWS_DEFAULT_REGION="us-east-1")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    # A local ray.init() with the mode unset turns token auth on and writes ~/.ray/auth_token, which
    # changes every later `ray start` on the machine. Tests that want token auth set it themselves.
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    yield
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(scope="session")
def s3(_aws_env):
    import logging

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request otherwise
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    srv = S3Server(endpoint_url=f"http://127.0.0.1:{port}", bucket="clipscale-test", server=server)
    srv.client().create_bucket(Bucket=srv.bucket)
    yield srv
    server.stop()


@pytest.fixture(scope="session")
def ray_local(_aws_env):
    import ray

    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
                 configure_logging=False, object_store_memory=1 << 30)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def s3_corpus(s3):
    """256 tiny image-caption samples in 8 shards in the moto bucket; returns the shard URIs."""
    from clipscale.data import shards as shard_io
    from clipscale.data.pipeline import resolve_shards
    from tests.helpers import sample

    root = s3.uri("corpus")
    shard_io.write_shards((sample(i, size=16) for i in range(256)), root, shard_size=32, settings=s3.settings)
    return resolve_shards(root, s3.settings)


@dataclass
class RayHead:
    address: str  # for drivers (RAY_ADDRESS)
    dashboard: str  # for `ray job submit --address`
    temp_dir: str
    env: dict


def _kill_ray_processes_under(temp_dir: str) -> None:
    """Kill only the Ray processes of this head (their command lines name its temp dir);
    `ray stop` would also kill the session's other Ray."""
    import signal

    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            cmdline = open(f"/proc/{pid}/cmdline", "rb").read().decode(errors="replace")
        except OSError:
            continue
        if temp_dir in cmdline and int(pid) != os.getpid():
            try:
                os.kill(int(pid), signal.SIGKILL)
            except OSError:
                pass


@pytest.fixture(scope="session")
def ray_head(tmp_path_factory, _aws_env):
    """A real `ray start --head` cluster (2 CPUs), as a user would start one."""
    import subprocess
    import sys
    import tempfile

    temp_dir = tempfile.mkdtemp(prefix="rh", dir="/tmp")  # short: Ray's socket paths have a length limit
    port, dash = free_port(), free_port()
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
    ray_bin = os.path.join(os.path.dirname(sys.executable), "ray")
    # Every per-node agent gets its own port: their defaults (e.g. the agent's 52365) are taken
    # by the session's other local Ray, and the job API then never finds an agent.
    agent_ports = [f"--{flag}={free_port()}" for flag in (
        "dashboard-agent-listen-port", "dashboard-agent-grpc-port", "metrics-export-port",
        "runtime-env-agent-port", "ray-client-server-port")]
    subprocess.run([ray_bin, "start", "--head", f"--port={port}", f"--dashboard-port={dash}", *agent_ports,
                    "--dashboard-host=127.0.0.1", "--num-cpus=2", f"--temp-dir={temp_dir}",
                    "--include-dashboard=true", "--object-store-memory=500000000", "--disable-usage-stats"],
                   check=True, env=env, capture_output=True, timeout=180)
    head = RayHead(address=f"127.0.0.1:{port}", dashboard=f"http://127.0.0.1:{dash}", temp_dir=temp_dir, env=env)
    # The job agent comes up after `ray start` returns: wait until a trivial job goes through.
    import time

    deadline = time.time() + 180
    while True:
        probe = subprocess.run([ray_bin, "job", "submit", "--address", head.dashboard, "--", "true"],
                               env=env, capture_output=True, text=True, timeout=120)
        if probe.returncode == 0:
            break
        if time.time() > deadline:
            _kill_ray_processes_under(temp_dir)
            raise RuntimeError(f"ray head's job API never came up: {probe.stderr[-500:]}")
        time.sleep(3)
    yield head
    _kill_ray_processes_under(temp_dir)
