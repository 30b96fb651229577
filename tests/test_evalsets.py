"""Eval sets in the CLIP_benchmark webdataset layout: writing, reading (local and S3), our tasks."""

from __future__ import annotations

import io
import json
import os

import numpy as np
import pytest
from PIL import Image

from clipscale.data import evalsets, synthetic
from clipscale.storage import StorageError


@pytest.fixture(autouse=True)
def one_torch_thread():
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: a second thread only adds contention on a shared 2-core box
    yield
    torch.set_num_threads(before)


def _encode(array: np.ndarray, fmt: str, mode: str) -> bytes:
    im = Image.fromarray(array)
    # an adaptive palette keeps flat greys exact (the default web palette dithers them)
    im = im.convert("P", palette=Image.Palette.ADAPTIVE) if mode == "P" else im.convert(mode)
    buf = io.BytesIO()
    im.save(buf, format=fmt, **({"quality": 95} if fmt == "JPEG" else {}))
    return buf.getvalue()


# (extension, PIL format, mode): every image a reader may meet
FORMATS = [("png", "PNG", "RGB"), ("png", "PNG", "L"), ("png", "PNG", "P"), ("png", "PNG", "RGBA"),
           ("jpg", "JPEG", "RGB"), ("jpg", "JPEG", "L"), ("jpg", "JPEG", "CMYK"), ("webp", "WEBP", "RGB"),
           ("jpeg", "JPEG", "RGB"), ("png", "PNG", "LA"), ("webp", "WEBP", "RGBA"), ("png", "PNG", "I;16")]


def _mixed_samples(n: int = 12):
    rng = np.random.default_rng(0)
    arrays, samples = [], []
    for k in range(n):
        ext, fmt, mode = FORMATS[k % len(FORMATS)]
        arr = np.full((20, 24, 3), 40 * (k % 6), dtype=np.uint8)  # flat grey: survives every mode and JPEG
        arrays.append(arr)
        samples.append({"__key__": f"s{k:04d}", ext: _encode(arr, fmt, mode), "cls": int(rng.integers(3))})
    return arrays, samples


def test_write_then_load_task_with_every_image_format(tmp_path):
    arrays, samples = _mixed_samples(12)
    uri = str(tmp_path / "mixed")
    # one sample per shard: 12 shards, so 10.tar must sort after 9.tar to keep sample order
    sizes = evalsets.write_task(uri, ["a", "b", "c"], ["a photo of a {c}.", "{c}"], samples, shard_size=1)
    assert len(sizes) == 12 and (tmp_path / "mixed" / "test" / "11.tar").exists()
    assert (tmp_path / "mixed" / "test" / "nshards.txt").read_text().strip() == "12"
    ds = evalsets.load_task(uri)
    assert ds.name == "mixed" and ds.classnames == ["a", "b", "c"] and ds.templates == ["a photo of a {c}.", "{c}"]
    assert isinstance(ds.images, np.ndarray) and ds.images.shape == (12, 20, 24, 3) and ds.images.dtype == np.uint8
    assert ds.labels.tolist() == [s["cls"] for s in samples]
    for got, want in zip(ds.images, arrays):
        assert np.abs(got.astype(int) - want.astype(int)).max() <= 12  # JPEG/CMYK round-trips are lossy


def test_load_task_errors_name_the_file(tmp_path):
    with pytest.raises(StorageError, match="classnames.txt"):
        evalsets.load_task(str(tmp_path / "missing"))
    _, samples = _mixed_samples(2)
    samples[0]["cls"] = 1
    samples[1] = {"__key__": "bad", "png": samples[0]["png"], "cls": 7}
    evalsets.write_task(str(tmp_path / "t"), ["a", "b"], None, samples)
    with pytest.raises(StorageError, match=r"bad.*0\.tar.*label 7"):
        evalsets.load_task(str(tmp_path / "t"))
    evalsets.write_task(str(tmp_path / "u"), ["a"], None, [{"__key__": "x", "txt": "no image", "cls": 0}])
    with pytest.raises(StorageError, match="has no image"):
        evalsets.load_task(str(tmp_path / "u"))
    with pytest.raises(ValueError, match="templates need"):
        evalsets.write_task(str(tmp_path / "v"), ["a"], ["no placeholder"], [])


def test_load_retrieval_several_captions(tmp_path):
    arr = np.zeros((8, 8, 3), dtype=np.uint8)
    samples = [{"__key__": "a", "png": _encode(arr, "PNG", "RGB"), "txt": "one\ntwo\n"},
               {"__key__": "b", "jpg": _encode(arr, "JPEG", "RGB"), "txt": "three"}]
    evalsets.write_task(str(tmp_path / "r"), None, None, samples)
    ds = evalsets.load_retrieval(str(tmp_path / "r"))
    assert ds.captions == ["one", "two", "three"] and ds.text_to_image.tolist() == [0, 0, 1]
    assert len(ds.images) == 2


def test_uci_digits_loader_gives_all_1797_with_true_labels():
    from sklearn.datasets import load_digits

    images, labels = evalsets.load_uci_digits(32)
    ref = load_digits()
    assert images.shape == (1797, 32, 32, 3) and images.dtype == np.uint8
    assert np.array_equal(labels, ref.target)
    # each image is its own 8x8 grid, upsampled: shrinking it back matches that grid, not a neighbour's
    small = np.stack([np.asarray(Image.fromarray(im[..., 0]).resize((10, 10), Image.BOX))[1:9, 1:9]
                      for im in images[:50]]).reshape(50, -1).astype(float)
    grids = ref.images[:50].reshape(50, -1)
    corr = np.corrcoef(small, grids)[:50, 50:]
    assert (corr.argmax(axis=1) == np.arange(50)).all()
    assert images.mean() < 100  # light ink on a black ground


@pytest.fixture(scope="module")
def eval_root(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("eval"))
    tasks = ["shape", "novel", "count-shift", "digit", "digits_uci", "retrieval"]
    assert evalsets.ensure_eval_sets(root, seed=3, n_per_task=60, n_retrieval=40, tasks=tasks) == tasks
    return root


def test_ensure_eval_sets_writes_once_and_checks_parameters(eval_root):
    assert evalsets.ensure_eval_sets(eval_root, seed=3, n_per_task=60, n_retrieval=40,
                                     tasks=["shape", "novel"]) == []
    with pytest.raises(ValueError, match="other parameters"):
        evalsets.ensure_eval_sets(eval_root, seed=4, n_per_task=60, tasks=["shape"])
    assert evalsets.ensure_eval_sets(eval_root, seed=4, n_per_task=60, tasks=["shape"], strict=False) == []
    with pytest.raises(ValueError, match="unknown eval task"):
        evalsets.ensure_eval_sets(eval_root, tasks=["imagenet"])


def test_synthetic_tasks_have_consistent_labels(eval_root):
    shape = evalsets.load_task(os.path.join(eval_root, "shape"))
    assert shape.classnames == list(synthetic.SHAPES) and len(shape) == 60
    assert len(set(shape.labels.tolist())) >= 6
    novel = evalsets.load_task(os.path.join(eval_root, "novel"))
    assert {tuple(c.split(" ")) for c in novel.classnames} == synthetic.HELD_OUT_PAIRS
    assert evalsets.load_task(os.path.join(eval_root, "count-shift")).classnames == list(synthetic.COUNT_WORDS)
    digits = evalsets.load_task(os.path.join(eval_root, "digits_uci"))
    assert len(digits) == 1797 and digits.classnames == [str(d) for d in range(10)]
    assert all("{c}" in t for t in digits.templates)
    # regenerating from the same seed gives the same images, and labels match the scenes
    again = list(evalsets.synthetic_task_samples("shape", 60, seed=3))
    assert [s["cls"] for s in again] == shape.labels.tolist()


def test_eval_images_never_coincide_with_training_samples():
    train = {s["png"] for s in synthetic.generate(200, seed=3)}
    evals = {s["png"] for s in evalsets.synthetic_task_samples("shape", 200, seed=3)}
    evals |= {s["png"] for s in evalsets.retrieval_samples(200, seed=3)}
    assert not train & evals


def test_shift_renderings_differ_from_training_style():
    # outlines and textures only ever appear in -shift sets
    plain = [synthetic.sample_scene(np.random.default_rng(i), "shape") for i in range(200)]
    shifted = [synthetic.sample_scene(np.random.default_rng(i), "shape", shift=True) for i in range(200)]
    assert not any(s.get("outline") or s.get("texture") for s in plain)
    assert all(s.get("outline") or s.get("texture") or s["size"] in synthetic.SHIFT_SIZES for s in shifted)


# -- S3 (moto server from tests/conftest.py) ---------------------------------------------------

def test_clip_benchmark_set_on_s3_is_read_and_scored(s3, tmp_path):
    import torch

    from clipscale import evaluate
    from clipscale.model import ModelSpec, build_model

    # A set written elsewhere (local disk), uploaded as plain objects with boto3.
    local = tmp_path / "digits_small"
    images, labels = evalsets.load_uci_digits(32)
    samples = [{"__key__": f"{k:04d}", "png" if k % 2 else "jpg":
                _encode(images[k], "PNG" if k % 2 else "JPEG", "L"), "cls": int(labels[k])} for k in range(30)]
    classnames, templates = evalsets.task_spec("digits_uci")
    evalsets.write_task(str(local), classnames, templates, samples, shard_size=16)
    client = s3.client()
    for dirpath, _, files in os.walk(local):
        for name in files:
            rel = os.path.relpath(os.path.join(dirpath, name), tmp_path)
            client.upload_file(os.path.join(dirpath, name), s3.bucket, f"evalsets/{rel}")

    ds = evalsets.load_task(s3.uri("evalsets", "digits_small"), settings=s3.settings)
    assert ds.classnames == classnames and ds.labels.tolist() == labels[:30].tolist()
    assert ds.images.shape == (30, 32, 32, 3)

    torch.manual_seed(0)
    spec = ModelSpec(embed_dim=32, vision_width=32, vision_layers=1, text_width=32, text_heads=1, text_layers=1)
    m = evaluate.evaluate_model(build_model(spec), spec, ["digits_small"], s3.uri("evalsets"),
                                settings=s3.settings, linear_probe=False)
    assert 0 <= m["zeroshot/digits_small/top1"] <= 1 and "zeroshot/digits_small/top5" in m


def test_write_task_to_s3_round_trip(s3):
    _, samples = _mixed_samples(5)
    uri = s3.uri("evalsets", "written")
    evalsets.write_task(uri, ["a", "b", "c"], ["{c}"], samples, shard_size=2, settings=s3.settings)
    ds = evalsets.load_task(uri, settings=s3.settings)
    assert ds.labels.tolist() == [s["cls"] for s in samples]
    meta = json.loads(s3.client().get_object(Bucket=s3.bucket, Key="evalsets/written/meta.json")["Body"].read())
    assert meta["samples"] == 5
