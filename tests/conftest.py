"""Session-wide real services: a moto S3 server on 127.0.0.1 and a local Ray.

The AWS credentials below are fake but distinctive, so leak tests can search
every output for them.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass

import pytest

FAKE_KEY_ID = "AKIACLIPSCALETESTKEY1"
FAKE_SECRET = "clipscale-test-secret-3f9a7c1e"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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
    saved = {k: os.environ.get(k) for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")}
    os.environ.update(AWS_ACCESS_KEY_ID=FAKE_KEY_ID, AWS_SECRET_ACCESS_KEY=FAKE_SECRET, AWS_DEFAULT_REGION="us-east-1")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    yield
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(scope="session")
def s3(_aws_env):
    from moto.server import ThreadedMotoServer

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
