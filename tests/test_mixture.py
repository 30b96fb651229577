"""Data mixtures (`data.sources`): the mixing draws, the validation quotas, the data metrics and
the config rules. The streams themselves run through Ray Data in test_pipeline.py."""

from __future__ import annotations

import numpy as np
import pytest

from clipscale import names
from clipscale.config import load_config
from clipscale.data.mixture import MixPosition, data_metrics, mix_counts, position_from_dict, source_spec
from clipscale.data.pipeline import DataPosition, Source, StreamSpec
from clipscale.data.validation import quotas
from clipscale.errors import ConfigError

SPEC = StreamSpec(shards=(), image_size=16, context_length=16, seed=5,
                  sources=(Source("web", ("a.tar", "b.tar"), 3.0), Source("books", ("c.tar",), 1.0)))


def test_mixing_proportions_hold_within_sampling_error():
    n, batches, p = 32, 400, 0.75
    counts = np.array([mix_counts(5, 0, k, n, (3.0, 1.0)) for k in range(batches)])
    assert (counts.sum(axis=1) == n).all()
    share = counts[:, 0].sum() / (n * batches)
    sd = np.sqrt(p * (1 - p) / (n * batches))
    assert abs(share - p) < 4 * sd, share


def test_mixing_draws_are_a_function_of_seed_rank_and_index():
    again = [mix_counts(5, 1, k, 32, (3.0, 1.0)).tolist() for k in range(20)]
    assert again == [mix_counts(5, 1, k, 32, (3.0, 1.0)).tolist() for k in range(20)]
    assert again != [mix_counts(6, 1, k, 32, (3.0, 1.0)).tolist() for k in range(20)]  # another seed
    assert again != [mix_counts(5, 0, k, 32, (3.0, 1.0)).tolist() for k in range(20)]  # another rank


def test_each_source_shuffles_with_a_seed_of_its_own():
    web, books = source_spec(SPEC, 0), source_spec(SPEC, 1)
    assert web.shards == ("a.tar", "b.tar") and books.shards == ("c.tar",)
    assert not web.sources and web.seed != books.seed
    assert source_spec(SPEC, 0).seed == web.seed  # and the same one every time


def test_position_round_trips_through_a_checkpoint_dict():
    pos = MixPosition(7, {"web": DataPosition(1, 2, 3), "books": DataPosition(0, 0, 9)}, {"web": 170, "books": 54})
    assert position_from_dict(pos.to_dict()) == pos
    assert position_from_dict(DataPosition(2, 1, 0).to_dict()) == DataPosition(2, 1, 0)  # a single corpus's


def test_validation_quotas_follow_the_weights_and_sum_to_the_set():
    parts = quotas(SPEC.sources, 1024)
    assert parts == ((("a.tar", "b.tar"), 768), (("c.tar",), 256))
    odd = quotas((Source("x", ("x",), 1.0), Source("y", ("y",), 1.0), Source("z", ("z",), 1.0)), 100)
    assert sum(n for _, n in odd) == 100 and sorted(n for _, n in odd) == [33, 33, 34]


def test_data_metrics_count_repetition_per_source():
    # web: 300 seen of 200 rows (1.5 passes, 200 distinct); books: 100 seen of 400 rows.
    out = data_metrics(SPEC, [300.0, 200.0, 200.0, 100.0, 100.0, 400.0])
    assert out[names.data_source("web", "samples")] == 300 and out[names.data_source("books", "samples")] == 100
    assert out[names.data_source("web", "epochs")] == pytest.approx(1.5)
    assert out[names.data_source("books", "epochs")] == pytest.approx(0.25)
    assert out[names.DATA_UNIQUE] == 300 and out[names.DATA_EPOCHS] == pytest.approx(400 / 600)
    single = StreamSpec(shards=("a.tar",), image_size=16, context_length=16)
    assert data_metrics(single, [50.0, 50.0, 200.0]) == {names.DATA_UNIQUE: 50.0, names.DATA_EPOCHS: 0.25}
    assert data_metrics(single, [50.0, 50.0, float("nan")]) == {}  # no manifest: the size is unknown


MIX = "data.sources=[{name: web, shards: /c/web, weight: 3}, {name: books, shards: /c/books}]"


def test_a_mixture_loads_and_enters_the_rung_hash():
    plain = load_config("experiments/configs/tiny.yaml")
    mixed = load_config("experiments/configs/tiny.yaml", [MIX])
    assert [s.name for s in mixed.data.sources] == ["web", "books"] and mixed.data.sources[1].weight == 1.0
    rung = plain.ladder.rungs[0]
    assert plain.rung_hash(rung) != mixed.rung_hash(rung)


@pytest.mark.parametrize("override,key", [
    ("data.shards=/c/other", "data.shards"),
    ("data.val_shards=/c/val", "data.val_shards"),
    ("data.sources.1.weight=0", "data.sources.1.weight"),
    ("data.sources.1.name=web", "data.sources"),
    ("data.sources.1.shards=''", "data.sources.1.shards"),
])
def test_mixture_config_errors_name_the_key(override, key):
    with pytest.raises(ConfigError) as e:
        load_config("experiments/configs/tiny.yaml", [MIX, override])
    assert e.value.key == key
    if key in ("data.shards", "data.val_shards"):  # the message names both keys
        assert "data.sources" in str(e.value)
