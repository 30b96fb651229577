"""Object-store faults: fail fast with the URI named and no secret shown; ride out a restart."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from clipscale.config import load_config
from clipscale.data import shards as shard_io
from clipscale.data.pipeline import BatchStream, StreamSpec, resolve_shards
from clipscale.ladder import ensure_data
from clipscale.storage import StorageError
from tests.conftest import FAKE_KEY_ID, FAKE_SECRET, free_port
from tests.helpers import sample

RUNG = "{name: r0, model: {}, samples: 64, batch_size: 32}"


def data_cfg(shards: str, endpoint: str):
    return load_config(None, [f"ladder.rungs=[{RUNG}]", f"data.shards={shards}",
                              f"data.storage.endpoint_url={endpoint}"])


def assert_fails_fast_naming(uri: str, cfg, within_s: float = 60.0) -> str:
    t0 = time.time()
    with pytest.raises(StorageError) as err:
        ensure_data(cfg)
    assert time.time() - t0 < within_s
    message = str(err.value)
    assert uri in message
    assert FAKE_SECRET not in message and FAKE_KEY_ID not in message
    return message


def test_unreachable_endpoint_fails_within_a_minute():
    endpoint = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    message = assert_fails_fast_naming("s3://bucket/shards", data_cfg("s3://bucket/shards", endpoint))
    assert "unreachable" in message, message


def test_missing_bucket_is_named(s3):
    message = assert_fails_fast_naming("s3://no-such-bucket/shards",
                                       data_cfg("s3://no-such-bucket/shards", s3.endpoint_url))
    assert "bucket does not exist" in message, message


def test_wrong_credentials_are_refused_without_echoing_them(tmp_path):
    """A moto server that checks credentials (only keys it issued are valid)."""
    port = free_port()
    env = {**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": "0"}
    server = subprocess.Popen([os.path.join(os.path.dirname(sys.executable), "moto_server"), "-H", "127.0.0.1",
                               "-p", str(port)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        endpoint = f"http://127.0.0.1:{port}"
        import urllib.request

        for _ in range(100):
            try:
                urllib.request.urlopen(endpoint, timeout=1)
                break
            except Exception:  # noqa: BLE001 - not up yet (or 403: up)
                if server.poll() is not None:
                    pytest.fail("moto_server exited")
                try:
                    urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=1)
                    break
                except Exception:  # noqa: BLE001
                    time.sleep(0.2)
        message = assert_fails_fast_naming("s3://bucket/shards", data_cfg("s3://bucket/shards", endpoint))
        assert "credentials were refused" in message, message
    finally:
        server.terminate()
        server.wait(timeout=10)


def test_s3_restart_in_the_middle_of_a_read_is_retried(s3, ray_local):
    root = s3.uri("restart")
    shard_io.write_shards((sample(i) for i in range(120)), root, shard_size=10, settings=s3.settings)
    spec = StreamSpec(shards=resolve_shards(root, s3.settings), image_size=16, context_length=16,
                      shuffle=False, settings=s3.settings)
    stream = BatchStream(spec, micro_batch=10)
    batches = iter(stream)
    next(batches)
    s3.server.stop()  # the other shards are being read or queued right now
    time.sleep(1.0)
    s3.server.start()
    got = 1 + sum(1 for _ in zip(range(11), batches))
    assert got == 12  # every sample of the epoch arrived
    assert stream.skipped.bad == 0, dict(stream.skipped.reasons)
