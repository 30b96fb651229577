"""Config loading: YAML + dotted overrides, and errors that name the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from clipscale.config import ExperimentConfig, apply_override, dump_config, load_config
from clipscale.errors import ConfigError

RUNG = "{name: r0, model: {}, samples: 1024, batch_size: 32}"


def load(*overrides):
    return load_config(None, [f"ladder.rungs=[{RUNG}]", *overrides])


@pytest.mark.parametrize("override, key", [
    ("train.bogus=1", "train.bogus"),                                   # unknown key
    ("train.lr=fast", "train.lr"),                                      # wrong type
    ("ladder.rungs.0.samples=-5", "ladder.rungs.0.samples"),            # negative budget
    ("ladder.rungs.0.model.family=transformer", "ladder.rungs.0.model.family"),  # unknown family
    ("train.zero_stage=4", "train.zero_stage"),                         # no ZeRO stage 4
    ("ladder.only=[3]", "ladder.only"),                                 # no such rung
    ("train.keep_checkpoints_at=[0]", "train.keep_checkpoints_at"),     # no model before the first sample
])
def test_bad_values_name_their_key(override, key):
    with pytest.raises(ConfigError) as err:
        load(override)
    assert err.value.key == key
    assert key in str(err.value)


def test_global_batch_must_split_over_workers():
    with pytest.raises(ConfigError, match="multiple of workers") as err:
        load("ladder.rungs.0.workers=2", "ladder.rungs.0.batch_size=33")
    assert err.value.key == "ladder.rungs.0.batch_size"


def test_errors_say_what_is_allowed():
    with pytest.raises(ConfigError, match=r"one of 0, 1, 2, 3"):
        load("train.zero_stage=4")
    with pytest.raises(ConfigError, match=r"known key of train"):
        load("train.lrr=1e-3")


def test_overrides_parse_as_yaml_and_reach_nested_lists():
    cfg = load("train.lr=1e-3", "ladder.only=[0]", "ladder.rungs.0.model.vision_width=128",
               "data.shuffle=false", "tracking.uri=null")
    assert cfg.train.lr == pytest.approx(1e-3) and isinstance(cfg.train.lr, float)
    assert cfg.ladder.only == [0]
    assert cfg.ladder.rungs[0].model.vision_width == 128
    assert cfg.data.shuffle is False and cfg.tracking.uri is None


def test_budget_is_whole_global_batches():
    rung = load("ladder.rungs.0.samples=1000").ladder.rungs[0]
    assert rung.steps == 31 and rung.budget == 992


def test_rung_hash_tracks_what_changes_results():
    base = load()
    rung = base.ladder.rungs[0]
    assert base.rung_hash(rung) == load().rung_hash(load().ladder.rungs[0])
    assert base.rung_hash(rung) != load("train.lr=1e-4").rung_hash(rung)
    # Where results are tracked or checkpointed does not change what a rung computes.
    moved = load("tracking.uri=sqlite:///elsewhere.db", "cluster.storage_path=/tmp/x")
    assert moved.rung_hash(moved.ladder.rungs[0]) == base.rung_hash(rung)


def test_dump_round_trips(tmp_path):
    cfg = load("train.lr=3e-4")
    path = tmp_path / "c.yaml"
    path.write_text(dump_config(cfg))
    assert load_config(path) == cfg


def test_missing_file_and_bad_override_form():
    with pytest.raises(ConfigError, match="--config"):
        load_config("/nonexistent/config.yaml")
    with pytest.raises(ConfigError):
        apply_override({}, "no-equals-sign")
    assert isinstance(ExperimentConfig(), ExperimentConfig)


def test_shipped_configs_load():
    from pathlib import Path

    for path in sorted((Path(__file__).resolve().parents[1] / "experiments" / "configs").glob("*.yaml")):
        if path.name.endswith(".lr.yaml"):
            continue  # a sweep's result (ladder.generate.lr_rule reads it), not a config
        cfg = load_config(path)
        # Ladders keep the eight rungs of the paper's study; the IsoFLOP grid is 3 budgets x 4 sizes.
        assert len(cfg.ladder.rungs) == (12 if path.name == "isoflop_tiny.yaml" else 8), path.name


def test_keeping_checkpoints_does_not_change_what_a_rung_computes():
    plain, keeping = load(), load("train.keep_checkpoints_at=[64, 128]")
    assert keeping.train.keep_checkpoints_at == [64, 128]
    rung = plain.ladder.rungs[0]
    assert keeping.rung_hash(rung) == plain.rung_hash(rung)  # a rerun finds the same runs


# tiny.yaml's learning rates before they came from the sweep's rule: the pinned hashes below are
# from the commits before `train.objective` and `train.schedule` existed, when tiny.yaml had these.
HAND_LRS = ["ladder.rungs.0.lr=0.002", "ladder.rungs.7.lr=0.001"]


def test_objective_is_an_enum_in_the_hash_and_clip_keeps_earlier_hashes():
    cfg = load_config("experiments/configs/tiny.yaml", HAND_LRS)
    rung = cfg.ladder.rungs[0]
    # Pinned from the commit before `train.objective` existed (f70d3b8): CLIP rungs already in
    # MLflow are found again by these hashes, so adding the key must not change them.
    assert cfg.rung_hash(rung) == "839dd44b84574ec8"
    assert cfg.rung_hash(cfg.ladder.rungs[7], 1) == "3bd9c3f8e1293da5"
    siglip = load_config("experiments/configs/tiny.yaml", ["train.objective=SigLIP"])
    assert siglip.train.objective == "siglip" and siglip.rung_hash(siglip.ladder.rungs[0]) != cfg.rung_hash(rung)
    with pytest.raises(ConfigError) as e:
        load_config(None, ["train.objective=sigmoid"])
    assert "train.objective" in str(e.value) and "siglip" in str(e.value)


def test_wsd_schedule_and_cooldowns_are_checked_and_cosine_keeps_earlier_hashes():
    tiny = "experiments/configs/tiny.yaml"
    cfg = load_config(tiny, ["train.schedule=cosine", "train.decay_fraction=0.3", *HAND_LRS])
    assert cfg.rung_hash(cfg.ladder.rungs[0]) == "839dd44b84574ec8"  # cosine ignores decay_fraction
    wsd = load_config(tiny, ["train.schedule=WSD", "ladder.cooldowns=[0.25, 0.5]"])
    assert wsd.train.schedule == "wsd" and wsd.rung_hash(wsd.ladder.rungs[0]) != cfg.rung_hash(cfg.ladder.rungs[0])
    other = load_config(tiny, ["train.schedule=wsd", "train.decay_fraction=0.1"])
    assert other.rung_hash(other.ladder.rungs[0]) != wsd.rung_hash(wsd.ladder.rungs[0])
    # Branches are extra runs, not a change to the main rung: the cooldown list is not hashed.
    assert load_config(tiny, ["train.schedule=wsd"]).rung_hash(wsd.ladder.rungs[0]) == wsd.rung_hash(wsd.ladder.rungs[0])
    for overrides, key, words in [
        (["ladder.cooldowns=[0.5]"], "ladder.cooldowns", "train.schedule=wsd"),
        (["train.schedule=linear"], "train.schedule", "wsd"),
        (["train.schedule=wsd", "train.decay_fraction=0"], "train.decay_fraction", "(0, 1)"),
        (["train.schedule=wsd", "train.decay_fraction=0.95"], "train.decay_fraction", "warmup_fraction"),
        (["train.schedule=wsd", "ladder.cooldowns=[0.5, 0.5]"], "ladder.cooldowns", "distinct"),
        (["train.schedule=wsd", "ladder.cooldowns=[1.0]"], "ladder.cooldowns", "(0, 1)"),
        (["train.schedule=wsd", "ladder.cooldowns=[0.01]"], "ladder.cooldowns", "warm-up"),
        (["train.schedule=wsd", "train.warmup_samples=10000000"], "train.warmup_samples", "decay starts"),
    ]:
        with pytest.raises(ConfigError) as e:
            load_config(tiny, overrides)
        assert f"'{key}'" in str(e.value) and words in str(e.value), (overrides, str(e.value))


def test_base_merges_section_by_section_relative_to_the_file(tmp_path):
    siglip = load_config("experiments/configs/tiny_siglip.yaml")
    tiny = load_config("experiments/configs/tiny.yaml")
    assert siglip.train.objective == "siglip" and siglip.ladder.name == "tiny-siglip"
    assert siglip.ladder.rungs == tiny.ladder.rungs and siglip.data == tiny.data  # inherited whole
    assert siglip.train.weight_decay == tiny.train.weight_decay  # a section merged, not replaced
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "child.yaml").write_text("base: ../missing.yaml\n")
    with pytest.raises(ConfigError) as e:
        load_config(tmp_path / "sub" / "child.yaml")
    assert "child.yaml: base" in str(e.value) and "missing.yaml" in str(e.value)
    (tmp_path / "loop.yaml").write_text("base: loop.yaml\n")
    with pytest.raises(ConfigError, match="does not include itself"):
        load_config(tmp_path / "loop.yaml")


def test_scaling_error_floor_is_a_rate_or_null():
    tiny = Path(__file__).resolve().parents[1] / "experiments" / "configs" / "tiny.yaml"
    assert load_config(tiny, ["scaling.error_floor=null"]).scaling.error_floor is None
    assert load_config(tiny).scaling.error_floor == 0.0
    with pytest.raises(ConfigError, match="scaling.error_floor"):
        load_config(tiny, ["scaling.error_floor=1.5"])
