"""Shard naming, listing and sample-count manifests (local folders and moto S3)."""

from __future__ import annotations

import json

import pytest

from clipscale.data import shards as shard_io
from clipscale.storage import StorageError
from tests.helpers import sample


def test_writer_names_shards_and_writes_the_manifest(tmp_path):
    sizes = shard_io.write_shards((sample(i) for i in range(25)), str(tmp_path), shard_size=10, prefix="laion")
    assert sizes == {"laion-000000.tar": 10, "laion-000001.tar": 10, "laion-000002.tar": 5}
    assert json.loads((tmp_path / "sizes.json").read_text()) == sizes
    assert [s["__key__"] for s in shard_io.iter_shard(str(tmp_path / "laion-000002.tar"))] == \
        [f"{i:06d}" for i in range(20, 25)]


def test_brace_patterns_expand_with_padding():
    assert shard_io.expand_braces("s3://b/shard-{00008..00011}.tar") == [
        f"s3://b/shard-{i:05d}.tar" for i in range(8, 12)]
    assert len(shard_io.expand_braces("{0..1}/part-{000..002}.tar")) == 6


def test_list_by_prefix_folder_and_list(tmp_path, s3):
    shard_io.write_shards((sample(i) for i in range(30)), s3.uri("listing"), shard_size=10, settings=s3.settings)
    uris = shard_io.list_shards(s3.uri("listing"), s3.settings)
    assert uris == [s3.uri("listing", f"shard-{i:06d}.tar") for i in range(3)]
    assert shard_io.list_shards([uris[0], uris[2]], s3.settings) == [uris[0], uris[2]]
    assert shard_io.count_samples(uris, s3.settings) == 30
    with pytest.raises(StorageError, match="no .tar shards"):
        shard_io.list_shards(str(tmp_path), None)


def test_counts_come_from_img2dataset_stats_when_there_is_no_manifest(tmp_path):
    shard_io.write_shards((sample(i) for i in range(12)), str(tmp_path), shard_size=6, prefix="x")
    (tmp_path / "sizes.json").unlink()
    # img2dataset writes NNNNN.tar with NNNNN_stats.json beside it.
    for i, name in enumerate(("x-000000", "x-000001")):
        (tmp_path / f"{name}_stats.json").write_text(json.dumps({"count": 8, "successes": 6, "failed_to_download": 2}))
    assert shard_io.read_manifest(str(tmp_path)) == {"x-000000.tar": 6, "x-000001.tar": 6}
    for f in tmp_path.glob("*_stats.json"):
        f.unlink()
    with pytest.raises(StorageError, match="cannot count samples"):
        shard_io.read_manifest(str(tmp_path))


def test_keys_with_dots_are_refused_on_write():
    with pytest.raises(ValueError, match="dot"):
        shard_io.encode_sample({"__key__": "a.b", "txt": "x"})


def test_truncated_tar_yields_complete_samples_only(tmp_path):
    shard_io.write_shards((sample(i) for i in range(10)), str(tmp_path), shard_size=10)
    path = tmp_path / "shard-000000.tar"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    got = list(shard_io.iter_shard(str(path)))
    assert 0 < len(got) < 10
    assert all({"png", "txt"} <= s.keys() for s in got)
