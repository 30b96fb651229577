"""The Ray Data pipeline against a real S3 API (moto on 127.0.0.1) and local folders."""

from __future__ import annotations

import io
import os
import tarfile
import threading
import time

import numpy as np
import pytest

from clipscale.data import shards as shard_io
from clipscale.data.pipeline import BatchStream, DataPosition, Source, StreamSpec, resolve_shards
from clipscale.errors import DataQualityError
from tests.helpers import image_bytes, sample

SOT, EOT = 49406, 49407


def take(stream, n_batches):
    out = []
    for batch in stream:
        out.append(batch)
        if len(out) == n_batches:
            break
    return out


def test_s3_shards_stream_into_batches(s3, ray_local):
    root = s3.uri("pipe-basic")
    sizes = shard_io.write_shards((sample(i) for i in range(40)), root, shard_size=10, settings=s3.settings)
    assert sizes == {f"shard-{i:06d}.tar": 10 for i in range(4)}
    spec = StreamSpec(shards=resolve_shards(root, s3.settings), image_size=24, context_length=16,
                      train=True, shuffle=True, seed=1, settings=s3.settings)
    stream = BatchStream(spec, micro_batch=8)
    batches = take(stream, 5)  # exactly one epoch: 40 samples
    images, tokens = batches[0]
    assert images.shape == (8, 24, 24, 3) and images.dtype == np.uint8
    assert tokens.shape == (8, 16) and tokens.dtype == np.int64
    assert (tokens[:, 0] == SOT).all() and (tokens == EOT).any(axis=1).all()
    assert stream.skipped.rows == 40 and stream.skipped.bad == 0
    assert stream.position.epoch == 0  # the epoch is consumed; the next row starts epoch 1
    take(stream, 1)
    assert stream.position.epoch == 1


def test_position_resumes_exactly(tmp_path, ray_local):
    root = str(tmp_path / "c")
    shard_io.write_shards((sample(i) for i in range(30)), root, shard_size=7)
    spec = StreamSpec(shards=resolve_shards(root), image_size=16, context_length=16, shuffle=True, seed=3)
    full = [t for _, t in take(BatchStream(spec, micro_batch=5), 10)]  # crosses into epoch 1
    first = BatchStream(spec, micro_batch=5)
    head = [t for _, t in take(first, 4)]
    resumed = BatchStream(spec, micro_batch=5, position=DataPosition(**first.position.to_dict()))
    tail = [t for _, t in take(resumed, 6)]
    np.testing.assert_array_equal(np.concatenate(head + tail), np.concatenate(full))


def test_a_closed_stream_reads_on_from_where_it_stood(tmp_path, ray_local):
    """close() ends the Ray Data execution (the loop closes the stream before the rung evaluates);
    the same stream read again starts a new one at its position: nothing skipped or repeated."""
    root = str(tmp_path / "c")
    shard_io.write_shards((sample(i) for i in range(30)), root, shard_size=7)
    spec = StreamSpec(shards=resolve_shards(root), image_size=16, context_length=16, shuffle=True, seed=3)
    full = [t for _, t in take(BatchStream(spec, micro_batch=5), 8)]
    stream = BatchStream(spec, micro_batch=5)
    head = [t for _, t in take(stream, 3)]  # 15 rows: mid-shard
    stream.close()
    assert stream._feed is None
    tail = [t for _, t in take(stream, 5)]  # on into epoch 1
    np.testing.assert_array_equal(np.concatenate(head + tail), np.concatenate(full))


def test_two_workers_split_shards_without_overlap(tmp_path, ray_local):
    root = str(tmp_path / "c")
    shard_io.write_shards((sample(i) for i in range(40)), root, shard_size=10)
    spec = StreamSpec(shards=resolve_shards(root), image_size=16, context_length=16, shuffle=False)
    seen = []
    for rank in range(2):
        s = BatchStream(spec, micro_batch=10, rank=rank, world=2)
        seen.append({tuple(t) for _, tok in take(s, 2) for t in tok})
    assert len(seen[0]) == len(seen[1]) == 20 and not seen[0] & seen[1]


BAD_CASES = {
    "bad_image": {"__key__": "b1", "jpg": b"this is not a jpeg", "txt": "a caption"},
    "empty_image": {"__key__": "b2", "png": b"", "txt": "a caption"},
    "no_caption": {"__key__": "b3", "png": image_bytes()},
    "empty_caption": {"__key__": "b4", "png": image_bytes(), "txt": "  \n\t "},
    "bad_caption_encoding": {"__key__": "b5", "png": image_bytes(), "txt": b"\xff\xfe caption \x80"},
    "no_image": {"__key__": "b6", "txt": "a caption with no image"},
}


def test_bad_samples_are_skipped_and_counted(s3, ray_local):
    root = s3.uri("pipe-bad")
    good = [sample(i) for i in range(20)]
    mixed = good[:10] + list(BAD_CASES.values()) + good[10:]
    # A huge caption and mixed jpg/png are fine; a key with dots loses its image extension.
    mixed += [{"__key__": "huge", "png": image_bytes(), "txt": "word " * 200_000},
              sample(100, fmt="jpg"), {"__key__": "has.dots"}]
    # encode_sample refuses dotted keys, so write the tar by hand as a foreign writer would.
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        members = [("has.dots.txt", b"dots")] + [m for smp in mixed[:-1] for m in shard_io.encode_sample(smp)]
        for name, payload in members:
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    s3.client().put_object(Bucket=s3.bucket, Key="pipe-bad/shard-000000.tar", Body=buf.getvalue())
    shard_io.write_manifest(root, {"shard-000000.tar": len(mixed)}, s3.settings)
    spec = StreamSpec(shards=resolve_shards(root, s3.settings), image_size=16, context_length=16,
                      shuffle=False, settings=s3.settings)
    stream = BatchStream(spec, micro_batch=1)
    batches = take(stream, 22)  # 20 good + huge caption + jpg
    assert len(batches) == 22
    reasons = stream.skipped.reasons
    # The dotted key splits into key "has" + extension "dots.txt": a sample with no image.
    expected = {reason: 1 for reason in BAD_CASES} | {"no_image": 2}
    assert dict(reasons) == expected


def test_truncated_and_unreadable_shards(tmp_path, ray_local):
    root = str(tmp_path / "c")
    shard_io.write_shards((sample(i) for i in range(30)), root, shard_size=10)
    path = os.path.join(root, "shard-000001.tar")
    data = open(path, "rb").read()
    open(path, "wb").write(data[: len(data) // 2])
    uris = list(resolve_shards(root)) + [os.path.join(root, "missing-shard.tar")]
    spec = StreamSpec(shards=tuple(uris), image_size=16, context_length=16, shuffle=False)
    stream = BatchStream(spec, micro_batch=1)
    got = 0
    for _ in stream:
        got += 1
        if stream.position.epoch > 0 or (stream.position.shard == 3):
            break
    assert stream.skipped.reasons["truncated_tar"] == 1
    assert stream.skipped.reasons["unreadable_shard"] == 1
    assert 20 < got < 30


def test_too_many_bad_samples_names_the_worst_shard(tmp_path, ray_local):
    root = str(tmp_path / "c")
    bad = [{"__key__": f"x{i}", "png": b"garbage", "txt": "t"} for i in range(30)]
    shard_io.write_shards([sample(i) for i in range(10)] + bad, root, shard_size=40)
    spec = StreamSpec(shards=resolve_shards(root), image_size=16, context_length=16, shuffle=False,
                      max_bad_fraction=0.5, min_rows_for_bad_check=20)
    with pytest.raises(DataQualityError, match=r"shard-000000\.tar \(\d+ bad\)"):
        take(BatchStream(spec, micro_batch=4), 100)


def test_pipeline_streams_before_last_shard_is_readable(tmp_path, ray_local):
    """The last shard is a FIFO with no writer yet: a non-streaming reader would block."""
    root = tmp_path / "c"
    shard_io.write_shards((sample(i) for i in range(40)), str(root), shard_size=10)
    last = root / "shard-000003.tar"
    payload = last.read_bytes()
    last.unlink()
    os.mkfifo(last)
    spec = StreamSpec(shards=resolve_shards(str(root)), image_size=16, context_length=16, shuffle=False)
    stream = iter(BatchStream(spec, micro_batch=10))
    first = next(stream)
    assert first[0].shape[0] == 10

    def feed():
        with open(last, "wb") as f:
            f.write(payload)

    writer = threading.Thread(target=feed, daemon=True)
    writer.start()
    rest = [next(stream) for _ in range(3)]
    writer.join(timeout=30)
    assert len(rest) == 3


def test_half_bad_shard_is_skipped_and_counted_below_the_threshold(tmp_path, ray_local):
    root = str(tmp_path / "c")
    half_bad = [sample(i) if i % 2 else {"__key__": f"bad{i}", "jpg": b"\x00garbage", "txt": "t"} for i in range(20)]
    shard_io.write_shards([sample(100 + i) for i in range(60)] + half_bad, root, shard_size=20)
    spec = StreamSpec(shards=resolve_shards(root), image_size=16, context_length=16, shuffle=False)
    stream = BatchStream(spec, micro_batch=10)
    batches = take(stream, 7)  # 60 good + 10 good from the half-bad shard
    assert len(batches) == 7
    assert dict(stream.skipped.reasons) == {"bad_image": 10}
    assert stream.skipped.by_shard == {os.path.join(root, "shard-000003.tar"): 10}


@pytest.mark.slow  # imports Ray Data's internals; the fast tier loads neither Ray nor DeepSpeed
def test_idle_executor_steps_are_spaced_out(monkeypatch):
    from clipscale.data import backoff as backoff_mod
    from clipscale.data.backoff import MIN_STEP_S, IdleBackoff

    backoff, steps, t0 = IdleBackoff(), 0, time.perf_counter()
    while time.perf_counter() - t0 < 10 * MIN_STEP_S:
        backoff.on_execution_step(None)  # a step that returned at once: the spin
        steps += 1
    assert steps <= 11, f"{steps} idle steps in {10 * MIN_STEP_S:.2f}s: the executor loop still spins"

    time.sleep(2 * MIN_STEP_S)  # a step that blocked in ray.wait for longer is not delayed further
    slept = []
    monkeypatch.setattr(backoff_mod.time, "sleep", slept.append)
    backoff.on_execution_step(None)
    assert slept == []


def test_datasets_carry_the_idle_backoff(tmp_path, ray_local):
    from clipscale.data.backoff import IdleBackoff
    from clipscale.data.pipeline import build_dataset

    root = str(tmp_path / "c")
    shard_io.write_shards((sample(i) for i in range(4)), root, shard_size=4)
    spec = StreamSpec(shards=resolve_shards(root), image_size=16, context_length=16, shuffle=False)
    ds = build_dataset(spec, list(spec.shards), epoch=0)
    assert IdleBackoff in ds.context.execution_callback_classes
    assert len(ds.take_all()) == 4


def test_a_corpus_shuffles_the_same_wherever_it_lives(tmp_path, ray_local):
    tokens = []
    for folder in ("here", "there"):
        root = str(tmp_path / folder)
        shard_io.write_shards((sample(i) for i in range(24)), root, shard_size=8)
        spec = StreamSpec(shards=resolve_shards(root), image_size=16, context_length=16, shuffle=True, seed=5)
        tokens.append(np.concatenate([t for _, t in take(BatchStream(spec, micro_batch=6), 4)]))
    np.testing.assert_array_equal(tokens[0], tokens[1])


def test_a_mixture_draws_by_weight_and_resumes_exactly(tmp_path, ray_local):
    """Two sources at 3:1; captions name the source. A stream restored from a position mid-way,
    across both sources' epoch ends, continues exactly as the uninterrupted one."""
    from clipscale.data.mixture import MixtureStream, position_from_dict

    sources = []
    for name, n, weight in (("web", 40, 3.0), ("books", 15, 1.0)):
        root = str(tmp_path / name)
        shard_io.write_shards(({**sample(i), "txt": f"{name} {i}"} for i in range(n)), root, shard_size=5)
        sources.append(Source(name, resolve_shards(root), weight))
    spec = StreamSpec(shards=(), image_size=16, context_length=16, seed=2, sources=tuple(sources))
    tokens_of = {name: int(_tokenize([name])[0, 1]) for name in ("web", "books")}
    full = [t for _, t in take(MixtureStream(spec, micro_batch=8), 12)]  # 96 samples: books repeats ~1.6x
    share = np.mean(np.concatenate(full)[:, 1] == tokens_of["web"])
    assert abs(share - 0.75) < 4 * np.sqrt(0.75 * 0.25 / 96), share  # within sampling error
    first = MixtureStream(spec, micro_batch=8)
    head = [t for _, t in take(first, 5)]
    saved = first.position.to_dict()
    assert sum(saved["seen"].values()) == 40 and saved["batches"] == 5
    resumed = MixtureStream(spec, micro_batch=8, position=position_from_dict(saved))
    tail = [t for _, t in take(resumed, 7)]
    np.testing.assert_array_equal(np.concatenate(head + tail), np.concatenate(full))
    assert resumed.position.sources["books"].epoch >= 1  # the resume crossed an epoch end


def _tokenize(texts):
    from clipscale.data.pipeline import _tokenizer

    return _tokenizer(16)(texts).numpy()
