"""Rungs by rule (`ladder.generate`, clipscale/ladder_rules.py): shapes, budgets, batch sizes and
learning rates derived from N (non-embedding parameters), each value with its source."""

from __future__ import annotations

import contextlib
import io
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from clipscale import ladder_cli
from clipscale.config import dump_config, load_config
from clipscale.errors import ConfigError
from clipscale.model import forward_flops, param_counts

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "experiments" / "configs" / "tiny.yaml"
TINY_RULES = ROOT / "experiments" / "configs" / "tiny_rules.yaml"
GEN = "ladder.generate"
SWEEP = """\
c: 0.0078
gamma: 0.15
c_ci: [0.006, 0.01]
gamma_ci: [0.12, 0.18]
param_count: nonembedding
sweep_run_id: abc123
date: 2026-12-01
config: experiments/configs/tiny.yaml
ci_level: 0.95
per_size: [{rung: w16-l1, nonembedding_params: 8465, lr_opt: 0.002}]
"""  # the agreed keys, then what else the sweep records (ignored here)


def gen(*overrides: str):
    """Two small widths, one sample per parameter, batch 32, inline LR constants."""
    return load_config(None, [f"{GEN}.widths=[16, 32]", f"{GEN}.samples.per_param=1", f"{GEN}.batch_size=32",
                              f"{GEN}.lr={{c: 0.01, gamma: 0.2}}", *overrides])


def n_of(rung) -> int:
    return param_counts(rung.model)["nonembedding"]


def whole_batches(raw: float, batch: int) -> int:
    return batch * max(1, math.floor(raw / batch + 0.5))


def test_the_width_rule_rebuilds_tiny_and_the_sweeps_rule_its_lrs():
    rules, tiny = load_config(TINY_RULES), load_config(TINY)
    assert [r.name for r in rules.ladder.rungs] == [r.name for r in tiny.ladder.rungs]
    assert [r.model for r in rules.ladder.rungs] == [r.model for r in tiny.ladder.rungs]
    assert rules.ladder.generate is None  # consumed: downstream sees plain rungs
    # tiny.yaml lists the LRs that tiny.lr.yaml's rule gives (its header says so); both must move together.
    assert [r.lr for r in rules.ladder.rungs] == [r.lr for r in tiny.ladder.rungs]
    first, last = rules.ladder.rungs[0], rules.ladder.rungs[-1]
    assert all(r.batch_size == 128 and r.samples % 128 == 0 for r in rules.ladder.rungs)
    # one sample per parameter at the smallest rung, growing as N^0.25 from there
    assert first.samples == whole_batches(n_of(first), 128) == 8448
    assert last.samples == whole_batches(n_of(first) * (n_of(last) / n_of(first)) ** 0.25, 128)


def test_rules_give_the_documented_values():
    cfg = gen()
    for rung in cfg.ladder.rungs:
        n = n_of(rung)
        assert rung.samples == whole_batches(n, 32)
        assert rung.lr == float(f"{0.01 * n ** -0.2:.4g}")
        assert rung.batch_size == 32 and rung.workers == 1
    small, big = cfg.ladder.rungs
    assert (small.name, big.name) == ("w16-l2", "w32-l2")
    # head width: the widest of [8, 16, 32, 64] leaving two heads; both towers alike
    assert (small.model.vision_head_width, small.model.text_heads, big.model.vision_head_width) == (8, 2, 16)
    assert (big.model.embed_dim, big.model.text_width, big.model.text_layers) == (32, 32, 2)

    flops = gen(f"{GEN}.samples={{train_flops: 2.0e+10}}")
    for rung in flops.ladder.rungs:  # an IsoFLOP row: equal compute, to within half a batch
        assert rung.samples == whole_batches(2.0e+10 / (3 * forward_flops(rung.model)), 32)
    batch = gen(f"{GEN}.batch_size={{size: 32, exponent: 0.5, multiple_of: 8}}")
    small, big = batch.ladder.rungs
    assert small.batch_size == 32  # the reference is the smallest rung
    assert big.batch_size == 8 * math.floor(32 * (n_of(big) / n_of(small)) ** 0.5 / 8 + 0.5)
    assert big.samples % big.batch_size == 0
    aspect = gen(f"{GEN}.widths=[16, 48, 96]", f"{GEN}.width_rule.layers={{aspect: 32, max_layers: 2}}")
    assert [r.name for r in aspect.ladder.rungs] == ["w16-l1", "w48-l2", "w96-l2"]  # 0.5 -> min 1; 1.5 -> 2; 3 -> cap
    assert gen(f"{GEN}.lr=null").ladder.rungs[0].lr is None  # no LR rule: train.lr


def test_shapes_are_taken_as_given_and_named_uniquely():
    shape = "{embed_dim: 32, vision_width: 32, vision_layers: 2, vision_head_width: 16, text_width: 32, text_heads: 2}"
    wide_text = "{vision_width: 32, vision_layers: 1, vision_head_width: 16, text_width: 64, text_layers: 3}"
    cfg = load_config(None, [f"{GEN}.shapes=[{shape}, {shape}, {wide_text}]", f"{GEN}.samples.per_param=1",
                             f"{GEN}.batch_size=16"])
    assert [r.name for r in cfg.ladder.rungs] == ["w32-l2", "w32-l2-2", "w32-l1-t64x3"]
    assert cfg.ladder.rungs[0].model.text_layers == 2  # ModelSpec's default, untouched by any rule
    assert cfg.ladder.provenance["w32-l2"]["model"] == "ladder.generate.shapes.0 as given"


def test_lr_rule_is_read_relative_to_the_config_that_names_it(tmp_path, monkeypatch):
    (tmp_path / "base" / "sweeps").mkdir(parents=True)
    (tmp_path / "base" / "sweeps" / "tiny.lr.yaml").write_text(SWEEP)
    (tmp_path / "base" / "rules.yaml").write_text(
        "ladder:\n  generate:\n    widths: [16, 32]\n    samples: {per_param: 1}\n    batch_size: 32\n"
        "    lr_rule: sweeps/tiny.lr.yaml\n")
    (tmp_path / "exp").mkdir()
    (tmp_path / "exp" / "child.yaml").write_text("base: ../base/rules.yaml\nladder:\n  name: child\n")
    monkeypatch.chdir(tmp_path / "exp")  # neither the working directory nor the child's folder counts
    cfg = load_config("child.yaml")
    n = n_of(cfg.ladder.rungs[0])
    assert cfg.ladder.rungs[0].lr == float(f"{0.0078 * n ** -0.15:.4g}")
    how = cfg.ladder.provenance["w16-l2"]["lr"]
    assert "c=0.0078, gamma=0.15" in how and "tiny.lr.yaml" in how
    assert "sweep run abc123, 2026-12-01" in how and "gamma in [0.12, 0.18]" in how
    # A file that names its own lr_rule resolves it against itself.
    (tmp_path / "exp" / "mine.lr.yaml").write_text(SWEEP.replace("abc123", "def456"))
    (tmp_path / "exp" / "own.yaml").write_text("base: ../base/rules.yaml\nladder:\n  generate:\n"
                                               "    lr_rule: mine.lr.yaml\n")
    assert "def456" in load_config(tmp_path / "exp" / "own.yaml").ladder.provenance["w16-l2"]["lr"]
    # An inline rule in the child replaces the base's file (and the other way round).
    (tmp_path / "exp" / "inline.yaml").write_text("base: ../base/rules.yaml\nladder:\n  generate:\n"
                                                  "    lr: {c: 0.01, gamma: 0.2}\n")
    assert "inline" in load_config(tmp_path / "exp" / "inline.yaml").ladder.provenance["w16-l2"]["lr"]


@pytest.mark.parametrize("text, says", [
    (None, "an existing sweep result file"),
    ("[1, 2]", "a YAML mapping"),
    ("c: [oops\n", "readable YAML"),
    (SWEEP.replace("gamma: 0.15\n", ""), "`gamma` is present"),
    (SWEEP.replace("c: 0.0078", "c: -1"), "`c` is a number > 0"),
    (SWEEP.replace("param_count: nonembedding", "param_count: total"), "`param_count` is nonembedding"),
    (SWEEP.replace("date: 2026-12-01", "date: last tuesday"), "`date` is an ISO date"),
    (SWEEP.replace("c_ci: [0.006, 0.01]", "c_ci: [0.01]"), "`c_ci` is [lo, hi]"),
    (SWEEP.replace("sweep_run_id: abc123", "sweep_run_id: ''"), "`sweep_run_id` is"),
])
def test_a_bad_lr_rule_file_names_the_key_and_the_file(tmp_path, text, says):
    fragment = tmp_path / "tiny.lr.yaml"
    if text is not None:
        fragment.write_text(text)
    (tmp_path / "rules.yaml").write_text(
        "ladder:\n  generate:\n    widths: [16]\n    samples: {per_param: 1}\n    batch_size: 32\n"
        "    lr_rule: tiny.lr.yaml\n")
    with pytest.raises(ConfigError) as err:
        load_config(tmp_path / "rules.yaml")
    assert err.value.key == "ladder.generate.lr_rule"
    assert str(fragment) in str(err.value) and says in str(err.value)


@pytest.mark.parametrize("override, key", [
    (f"{GEN}.widths.1=-3", f"{GEN}.widths.1"),
    (f"{GEN}.bogus=1", f"{GEN}.bogus"),
    (f"{GEN}.width_rule.layers=[1, 2, 3]", f"{GEN}.width_rule.layers"),  # one per width
    (f"{GEN}.width_rule.head_widths=[64]", f"{GEN}.width_rule.head_widths"),  # no 2 heads of 64 in 16
    (f"{GEN}.samples.train_flops=1.0e+10", f"{GEN}.samples.train_flops"),  # and per_param
    (f"{GEN}.samples={{exponent: 0.5}}", f"{GEN}.samples"),  # neither per_param nor train_flops
    (f"{GEN}.lr.c=-1", f"{GEN}.lr.c"),
    (f"{GEN}.lr_rule=x.lr.yaml", f"{GEN}.lr_rule"),  # and inline lr
    (f"{GEN}.shapes=[{{}}]", f"{GEN}.widths"),  # and shapes: one of the two
    (f"{GEN}.workers=3", f"{GEN}.batch_size"),  # 32 does not split over 3 workers
    # inside optional sub-sections, the key itself is named (not just the section)
    (f"{GEN}.width_rule.bogus=1", f"{GEN}.width_rule.bogus"),
    (f"{GEN}.width_rule.layers={{aspect: 32, typo: 1}}", f"{GEN}.width_rule.layers.typo"),
    (f"{GEN}.lr={{c: 0.01}}", f"{GEN}.lr.gamma"),
    (f"{GEN}.batch_size={{size: 32, bogus: 1}}", f"{GEN}.batch_size.bogus"),
    (f"{GEN}.widths=null", f"{GEN}"),  # neither shapes nor widths
])
def test_bad_rules_name_their_key(override, key):
    with pytest.raises(ConfigError) as err:
        gen(override)
    assert err.value.key == key and key in str(err.value)


def test_a_bad_shape_names_its_key():
    with pytest.raises(ConfigError) as err:
        gen(f"{GEN}.widths=null", f"{GEN}.shapes=[{{}}, {{vision_widht: 32}}]")
    assert err.value.key == f"{GEN}.shapes.1.vision_widht"


def test_listed_rungs_and_generate_together_are_refused():
    generate = [f"{GEN}.widths=[16]", f"{GEN}.samples.per_param=1", f"{GEN}.batch_size=32"]
    with pytest.raises(ConfigError) as err:
        load_config(TINY, generate)
    assert err.value.key == "ladder.generate" and "ladder.rungs" in str(err.value)
    assert [r.name for r in load_config(TINY, ["ladder.rungs=[]", *generate]).ladder.rungs] == ["w16-l2"]


def test_the_dry_run_shows_every_derived_value_and_its_source():
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert ladder_cli.main(["--config", str(TINY_RULES), "--dry-run", "--json"]) == 0
    rungs = json.loads(out.getvalue())["rungs"]
    assert len(rungs) == 8
    for r in rungs:
        assert set(r["provenance"]) == {"name", "model", "batch_size", "samples", "lr"}
        assert r["provenance"]["lr"].startswith(f"{r['lr']:g} = c*N^-gamma, c=0.372075, gamma=0.453986")
        assert r["provenance"]["samples"].startswith(f"{r['samples']:,} = ")
        assert "tiny.lr.yaml (sweep run b945dfc3043b4dd1b03b7360e445c5ef, 2026-12-02" in r["provenance"]["lr"]
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert ladder_cli.main(["--config", str(TINY_RULES), "--dry-run", "ladder.only=[0]"]) == 0
    text = out.getvalue()
    assert "derived by ladder.generate" in text and "c*N^-gamma" in text and "N_ref" in text
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert ladder_cli.main(["--config", str(TINY), "--dry-run", "--json", "ladder.only=[0]"]) == 0
    assert "provenance" not in json.loads(out.getvalue())["rungs"][0]  # listed rungs: nothing derived


def test_the_hash_covers_derived_values_and_not_their_provenance(tmp_path):
    cfg = load_config(TINY_RULES)
    rung = cfg.ladder.rungs[3]
    assert cfg.rung_hash(rung) == load_config(TINY_RULES).rung_hash(load_config(TINY_RULES).ladder.rungs[3])
    lr = load_config(TINY_RULES, [f"{GEN}.lr_rule=null", f"{GEN}.lr={{c: 0.01, gamma: 0.454}}"])
    samples = load_config(TINY_RULES, [f"{GEN}.samples.exponent=0.3"])
    assert lr.rung_hash(lr.ladder.rungs[3]) != cfg.rung_hash(rung)
    assert samples.rung_hash(samples.ladder.rungs[3]) != cfg.rung_hash(rung)
    # The same values listed by hand hash alike: provenance is not hashed.
    hand = load_config(TINY, [f"ladder.rungs.3.samples={rung.samples}", f"ladder.rungs.3.lr={rung.lr}",
                              "ladder.rungs.3.seeds=null"])
    assert hand.rung_hash(hand.ladder.rungs[3]) == cfg.rung_hash(rung)
    # The resolved config (what the parent run logs) loads back as the same ladder.
    path = tmp_path / "resolved.yaml"
    path.write_text(dump_config(cfg))
    assert load_config(path) == cfg


def test_listed_configs_load_without_torch():
    code = ("import sys; from clipscale.config import load_config; load_config(sys.argv[1]); "
            "print(sorted(m for m in ('torch', 'open_clip') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code, str(TINY)], cwd=ROOT, capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "[]"
