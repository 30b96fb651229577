"""The synthetic corpus: determinism, held-out pairs, caption diversity, the `data synth` CLI."""

from __future__ import annotations

import io
import json
import re
from collections import Counter

import numpy as np
import pytest
from PIL import Image

from clipscale.data import shards, synthetic


@pytest.fixture(scope="module")
def corpus() -> list[dict]:
    return list(synthetic.generate(2000, seed=7))


def test_same_seed_same_bytes_and_any_subset_regenerates():
    a = list(synthetic.generate(40, seed=3))
    b = list(synthetic.generate(40, seed=3))
    assert [s["png"] for s in a] == [s["png"] for s in b]
    assert [s["txt"] for s in a] == [s["txt"] for s in b]
    # sample i is a pure function of (seed, i): a later slice matches on its own
    tail = list(synthetic.generate(10, seed=3, start=30))
    assert [s["png"] for s in tail] == [s["png"] for s in a[30:]]
    assert [s["__key__"] for s in tail] == [f"{i:09d}" for i in range(30, 40)]


def test_different_seeds_differ():
    a = list(synthetic.generate(30, seed=1))
    b = list(synthetic.generate(30, seed=2))
    assert sum(x["png"] == y["png"] for x, y in zip(a, b)) == 0
    assert sum(x["txt"] == y["txt"] for x, y in zip(a, b)) < 3


def test_images_are_rgb_png_of_the_requested_size():
    for size in (32, 48):
        s = synthetic.make_sample(5, seed=0, image_size=size)
        im = Image.open(io.BytesIO(s["png"]))
        assert im.format == "PNG" and im.mode == "RGB" and im.size == (size, size)
        assert np.asarray(im).std() > 5  # something is drawn


def test_held_out_pairs_design():
    held = synthetic.HELD_OUT_PAIRS
    assert len(held) == len(synthetic.COLORS) * len(synthetic.SHAPES) // 8
    seen = set(synthetic.SEEN_PAIRS)
    assert not held & seen
    # every color and shape still occurs in training
    assert {c for c, _ in seen} == set(synthetic.COLORS) and {s for _, s in seen} == set(synthetic.SHAPES)
    # on the novel task neither attribute alone identifies the class
    assert all(sum(c == c2 for c2, _ in held) >= 2 and sum(s == s2 for _, s2 in held) >= 2 for c, s in held)


def test_held_out_pairs_never_in_training(corpus):
    more = list(synthetic.generate(1000, seed=8))
    all_names = {c: (c, *synthetic.COLOR_SYNONYMS.get(c, ())) for c in synthetic.COLORS}
    all_shapes = {s: (s, synthetic.PLURALS[s], *synthetic.SHAPE_SYNONYMS.get(s, ())) for s in synthetic.SHAPES}
    patterns = [re.compile(rf"\b{cn}\s+(?:\w+\s+)?{sn}\b")  # e.g. "red circle", "red large circle"
                for c, s in synthetic.HELD_OUT_PAIRS for cn in all_names[c] for sn in all_shapes[s]]
    n_shapes = 0
    for sample in corpus + more:
        attrs = sample["json"]
        for ck, sk in (("color", "shape"), ("color2", "shape2")):
            if sk in attrs:
                n_shapes += 1
                assert (attrs[ck], attrs[sk]) not in synthetic.HELD_OUT_PAIRS, sample
        text = sample["txt"].lower()
        assert not any(p.search(text) for p in patterns), text
    assert n_shapes > 1500  # the check above really looked at shapes


def test_captions_are_diverse_and_mention_attributes(corpus):
    captions = [s["txt"].lower().rstrip(".").strip() for s in corpus]
    duplicates = len(captions) - len(set(captions))
    assert duplicates / len(captions) < 0.05
    kinds = Counter(s["json"]["kind"] for s in corpus)
    assert set(kinds) == set(synthetic.KIND_WEIGHTS)
    shapes = [s for s in corpus if s["json"]["kind"] == "shape"]
    mentions_shape = sum(any(w in s["txt"] for w in (s["json"]["shape"], *synthetic.SHAPE_SYNONYMS.get(
        s["json"]["shape"], ()))) for s in shapes)
    assert mentions_shape / len(shapes) > 0.8
    digits = [s for s in corpus if s["json"]["kind"] == "digit"]
    assert all(str(s["json"]["digit"]) in s["txt"] or synthetic.DIGIT_WORDS[s["json"]["digit"]] in s["txt"]
               for s in digits)


def test_attributes_are_balanced(corpus):
    shapes = Counter(s["json"]["shape"] for s in corpus if s["json"]["kind"] == "shape")
    colors = Counter(s["json"]["color"] for s in corpus if s["json"]["kind"] == "shape")
    assert set(shapes) == set(synthetic.SHAPES) and set(colors) == set(synthetic.COLORS)
    assert max(shapes.values()) < 2 * min(shapes.values())


def test_cli_writes_shards_and_sizes(tmp_path, capsys):
    from clipscale.cli import main

    out = tmp_path / "corpus"
    rc = main(["data", "synth", "--out", str(out), "--samples", "25", "--shard-size", "10", "--seed", "4"])
    assert rc == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["samples"] == 25
    sizes = shards.read_manifest(str(out))
    assert sizes == {"shard-000000.tar": 10, "shard-000001.tar": 10, "shard-000002.tar": 5}
    read = [s for uri in shards.list_shards(str(out)) for s in shards.iter_shard(uri)]
    expected = list(synthetic.generate(25, seed=4))
    assert [r["png"] for r in read] == [e["png"] for e in expected]
    assert [r["txt"].decode() for r in read] == [e["txt"] for e in expected]
    info = json.loads((out / "corpus.json").read_text())
    assert info["seed"] == 4 and info["samples"] == 25


def test_cli_rejects_bad_arguments(tmp_path):
    from clipscale.cli import main

    with pytest.raises(SystemExit):
        main(["data", "synth", "--out", str(tmp_path), "--samples", "0"])
