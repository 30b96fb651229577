"""Rungs by rule: `ladder.generate` derives a ladder's rungs from model shapes and four rules.

    ladder:
      generate:
        widths: [16, 32, 64]                           # or shapes: [{model spec}, ...]
        width_rule: {layers: 2, head_widths: [8, 16, 32], min_heads: 2}
        samples: {per_param: 20}                       # or {train_flops: 1e12}
        batch_size: 128                                # or {size: 128, exponent: 0.5}
        lr: {c: 7.84e-3, gamma: 0.151}                 # or lr_rule: tiny.lr.yaml (a sweep's fit)

`load_config` replaces the section by the plain `ladder.rungs` it derives, so everything
downstream (plan, hashes, trials) sees ordinary rungs whose hash covers every derived value.
Where each value came from goes to `ladder.provenance` (rung -> field -> text), which `--dry-run`
shows and no hash reads.

N is always the non-embedding parameter count (`clipscale.model.param_counts`), the count
the scaling fits use. The split into shapes, duration, batch and learning rate, each a function
of N, follows the run configurator of OLMo-core's model ladder (allenai/OLMo-core,
src/olmo_core/model_ladder/); the rules here are written for CLIP's two towers.

This module imports no torch: `derive` imports clipscale.model (open_clip) when it runs, so a
config without `generate` loads without it.
"""

from __future__ import annotations

import dataclasses
import datetime
import math
import os
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from clipscale.errors import ConfigError
from clipscale.model_spec import ModelSpec


@dataclass
class DepthRule:
    """Layers from width by an aspect ratio, width per layer (Kaplan et al. 2020's d_model / n_layer)."""

    aspect: int
    min_layers: int = 1
    max_layers: int = 0  # 0: no cap

    def layers(self, width: int) -> int:
        n = math.floor(width / self.aspect + 0.5)  # halves round up (Python's round() goes to even)
        n = max(n, self.min_layers)
        return min(n, self.max_layers) if self.max_layers else n


@dataclass
class WidthRule:
    """How one width becomes a ViT CLIP: both towers that width and depth, as in tiny.yaml."""

    layers: int | list[int] | DepthRule = 2  # every width; one per width; or by aspect ratio
    # The head width is the widest of these that splits the width into >= min_heads heads.
    head_widths: list[int] = field(default_factory=lambda: [8, 16, 32, 64])
    min_heads: int = 2
    min_embed_dim: int = 0  # embed_dim = max(width, min_embed_dim)
    image_size: int = 32
    patch_size: int = 4
    context_length: int = 32
    vocab_size: int = 49408


@dataclass
class SamplesRule:
    """A rung's sample budget: `per_param` or `train_flops`, not both."""

    # samples = per_param * N_ref * (N / N_ref)^exponent: with exponent 1 (the default) simply
    # per_param * N, the same samples per parameter at every size (Hoffmann et al. 2022's D ~ N);
    # below 1, larger rungs see fewer samples per parameter.
    per_param: float | None = None
    exponent: float | None = None  # None: 1
    reference_params: int = 0  # N_ref; 0: the ladder's smallest rung
    train_flops: float | None = None  # every rung this much compute: samples = C / (3 x forward FLOPs per sample)


@dataclass
class BatchRule:
    """Global batch = size * (N / N_ref)^exponent, rounded to a multiple of `multiple_of` and of workers."""

    size: int
    exponent: float = 0.0  # 0: every rung `size`; OLMo-core's ladder grows batch as N^(2/3)
    reference_params: int = 0  # N_ref; 0: the ladder's smallest rung
    multiple_of: int = 1


@dataclass
class LRConstants:
    """lr = c * N^-gamma."""

    c: float
    gamma: float


@dataclass
class GenerateConfig:
    """`ladder.generate`: the rungs by rule. Shapes from `shapes` or from `widths` + `width_rule`."""

    samples: SamplesRule
    batch_size: int | BatchRule
    shapes: list[ModelSpec] | None = None
    widths: list[int] | None = None
    width_rule: WidthRule | None = None  # with widths; None: WidthRule's defaults
    lr: LRConstants | None = None  # inline constants; or
    lr_rule: str | None = None  # a sweep's result file, relative to the config file that names it
    workers: int = 1

    def validate(self, p: str) -> None:
        _one_of(p, "shapes", self.shapes, "widths", self.widths)
        if self.shapes is not None and self.width_rule is not None:
            raise ConfigError(f"{p}.width_rule", "set", f"unset with {p}.shapes (it shapes {p}.widths only)")
        if self.shapes is None and self.widths is None:
            raise ConfigError(p, "no shapes or widths", "shapes (a list of model specs) or widths (with width_rule)")
        if not (self.shapes or self.widths):
            raise ConfigError(f"{p}.{'shapes' if self.shapes is not None else 'widths'}", [], "at least one entry")
        if self.lr is not None and self.lr_rule is not None:
            raise ConfigError(f"{p}.lr_rule", self.lr_rule,
                              f"unset when {p}.lr gives c and gamma inline: one source of LR constants "
                              f"(set the other to null)")
        if self.lr is not None:
            _positive(f"{p}.lr.c", self.lr.c)
            _finite(f"{p}.lr.gamma", self.lr.gamma)
        _positive(f"{p}.workers", self.workers)
        for i, w in enumerate(self.widths or []):
            _positive(f"{p}.widths.{i}", w)
        layers = (self.width_rule or WidthRule()).layers
        if self.widths and isinstance(layers, list) and len(layers) != len(self.widths):
            raise ConfigError(f"{p}.width_rule.layers", layers,
                              f"one layer count per width ({len(self.widths)} entries, as {p}.widths)")
        self._validate_samples(f"{p}.samples")
        self._validate_batch(f"{p}.batch_size")

    def _validate_samples(self, p: str) -> None:
        s = self.samples
        _one_of(p, "per_param", s.per_param, "train_flops", s.train_flops)
        if s.per_param is None and s.train_flops is None:
            raise ConfigError(p, {}, "one of per_param (samples per non-embedding parameter) or train_flops")
        if s.train_flops is not None and (s.exponent is not None or s.reference_params):
            raise ConfigError(f"{p}.{'exponent' if s.exponent is not None else 'reference_params'}",
                              s.exponent if s.exponent is not None else s.reference_params,
                              f"unset with {p}.train_flops (they shape per_param only)")
        for key in ("per_param", "train_flops"):
            if getattr(s, key) is not None:
                _positive(f"{p}.{key}", getattr(s, key))
        _finite(f"{p}.exponent", s.exponent if s.exponent is not None else 1.0)
        _non_negative(f"{p}.reference_params", s.reference_params)

    def _validate_batch(self, p: str) -> None:
        b = self.batch_size
        if isinstance(b, int):
            _positive(p, b)
            if b % self.workers:
                raise ConfigError(p, b, f"a multiple of {p.rsplit('.', 1)[0]}.workers ({self.workers})")
            return
        _positive(f"{p}.size", b.size)
        _positive(f"{p}.multiple_of", b.multiple_of)
        _finite(f"{p}.exponent", b.exponent)
        _non_negative(f"{p}.reference_params", b.reference_params)


@dataclass
class DerivedRung:
    """One rung's values (RungConfig's fields) and, per value, where it came from."""

    name: str
    model: ModelSpec
    samples: int
    batch_size: int
    workers: int
    lr: float | None
    provenance: dict[str, str]


@dataclass
class LRSweepResult:
    """A learning-rate sweep's fit lr_opt(N) = c * N^-gamma: the YAML fragment experiments/sweep_lr.py
    writes. Other keys in the file are ignored, so the sweep may record more."""

    c: float
    gamma: float
    sweep_run_id: str
    date: str  # ISO
    config: str  # the sweep's config path
    c_ci: list[float] | None = None  # [lo, hi]
    gamma_ci: list[float] | None = None
    param_count: str = "nonembedding"  # what N counted; the rule's N is non-embedding parameters


def load_generate(raw: Any, p: str = "ladder.generate") -> GenerateConfig:
    """The section as typed dataclasses, through the config's own loader (`from_dict`)."""
    return _load(GenerateConfig, raw, p)


def _load(cls: type, raw: Any, p: str):
    """`from_dict`, but a mapping (or list of mappings) under a union field (`X | None`, `int | X`,
    `list[X] | None`) is loaded as X first: a mistake inside it is then named by its own key,
    where the union would only say `expected X or NoneType` about the whole value."""
    from clipscale.config import from_dict  # the one typed loader (clipscale.config imports this module)

    if not isinstance(raw, dict) or cls is ModelSpec:
        return from_dict(cls, raw, p)
    out, hints = dict(raw), typing.get_type_hints(cls)
    for key, value in raw.items():
        options = typing.get_args(hints.get(key)) if key in hints else ()
        inner = [t for t in options if dataclasses.is_dataclass(t)]
        lists = [a for t in options if typing.get_origin(t) is list for a in typing.get_args(t)
                 if dataclasses.is_dataclass(a)]
        if isinstance(value, dict) and len(inner) == 1:
            out[key] = _load(inner[0], value, f"{p}.{key}")
        elif isinstance(value, list) and len(lists) == 1:
            out[key] = [_load(lists[0], v, f"{p}.{key}.{i}") for i, v in enumerate(value)]
    return from_dict(cls, out, p)


# ---- the rules ---------------------------------------------------------------------------


def derive(gen: GenerateConfig, p: str = "ladder.generate") -> list[DerivedRung]:
    """The rungs `gen` describes, in the order its shapes are listed."""
    gen.validate(p)
    # open_clip and torch only now: hand-listed configs load without them.
    from clipscale.model import forward_flops, param_counts

    shapes = _shapes(gen, p)
    counts = [param_counts(spec)["nonembedding"] for spec, _ in shapes]
    smallest = min(counts)
    lr = _lr_constants(gen, p)
    out = []
    for (spec, how), name, n in zip(shapes, _names([s for s, _ in shapes]), counts):
        batch, batch_how = _batch(gen.batch_size, gen.workers, n, smallest, f"{p}.batch_size")
        samples, samples_how = _samples(gen.samples, n, smallest, batch, lambda s=spec: forward_flops(s))
        rung_lr, lr_how = _lr(lr, n)
        out.append(DerivedRung(name, spec, samples, batch, gen.workers, rung_lr, {
            "name": f"{name} (from the shape)", "model": how, "batch_size": batch_how,
            "samples": samples_how, "lr": lr_how}))
    return out


def _shapes(gen: GenerateConfig, p: str) -> list[tuple[ModelSpec, str]]:
    if gen.shapes:
        return [(spec, f"{p}.shapes.{i} as given") for i, spec in enumerate(gen.shapes)]
    rule = gen.width_rule or WidthRule()
    return [_from_width(w, i, rule, p) for i, w in enumerate(gen.widths or [])]


def _from_width(width: int, i: int, rule: WidthRule, p: str) -> tuple[ModelSpec, str]:
    layers, layers_how = _layers(rule.layers, width, i, f"{p}.width_rule.layers")
    fits = [h for h in rule.head_widths if h > 0 and width % h == 0 and width // h >= rule.min_heads]
    if not fits:
        raise ConfigError(f"{p}.width_rule.head_widths", rule.head_widths,
                          f"a head width that splits width {width} ({p}.widths.{i}) into at least "
                          f"{rule.min_heads} heads (width_rule.min_heads)")
    head = max(fits)
    spec = ModelSpec(embed_dim=max(width, rule.min_embed_dim), image_size=rule.image_size, vision_width=width,
                     vision_layers=layers, vision_head_width=head, patch_size=rule.patch_size,
                     context_length=rule.context_length, text_width=width, text_heads=width // head,
                     text_layers=layers, vocab_size=rule.vocab_size).validate(f"{p}.widths.{i}")
    how = (f"width {width} ({p}.widths.{i}), layers {layers} ({layers_how}), head width {head} (the widest of "
           f"{rule.head_widths} giving >= {rule.min_heads} heads), embed_dim {spec.embed_dim} "
           f"(max(width, {rule.min_embed_dim})); both towers")
    return spec, how


def _layers(rule: int | list[int] | DepthRule, width: int, i: int, p: str) -> tuple[int, str]:
    if isinstance(rule, DepthRule):
        _positive(f"{p}.aspect", rule.aspect)
        n = rule.layers(width)
        if n < 1:
            raise ConfigError(f"{p}.min_layers", rule.min_layers, "at least 1")
        return n, (f"round({width} / aspect {rule.aspect}) within [{rule.min_layers}, "
                   f"{rule.max_layers or 'no cap'}]")
    if isinstance(rule, list):  # as long as the widths (GenerateConfig.validate)
        _positive(f"{p}.{i}", rule[i])
        return rule[i], f"{p}.{i}"
    _positive(p, rule)
    return rule, f"{p}, every width"


def _names(specs: list[ModelSpec]) -> list[str]:
    """`w32-l2` (ViT) or `rn64-l3x4x6x3` (ResNet), `-t<width>x<layers>` when the text tower differs;
    a shape listed twice gets `-2`, `-3`, ..."""
    names: list[str] = []
    for spec in specs:
        resnet = isinstance(spec.vision_layers, list)
        layers = "x".join(map(str, spec.vision_layers)) if resnet else str(spec.vision_layers)
        name = f"{'rn' if resnet else 'w'}{spec.vision_width}-l{layers}"
        if resnet or (spec.text_width, spec.text_layers) != (spec.vision_width, spec.vision_layers):
            name += f"-t{spec.text_width}x{spec.text_layers}"
        unique, k = name, 1
        while unique in names:
            k += 1
            unique = f"{name}-{k}"
        names.append(unique)
    return names


def _batch(rule: int | BatchRule, workers: int, n: int, smallest: int, p: str) -> tuple[int, str]:
    if isinstance(rule, int):
        return rule, f"{rule} (fixed: {p})"
    ref = rule.reference_params or smallest
    step = math.lcm(rule.multiple_of, workers)  # whole batches per worker, as RungConfig requires
    raw = rule.size * (n / ref) ** rule.exponent
    batch = step * max(1, math.floor(raw / step + 0.5))
    return batch, (f"{batch} = {rule.size} x (N / N_ref)^{rule.exponent:g} = {raw:.1f}, rounded to a multiple of "
                   f"{step}; N = {n:,}, N_ref = {ref:,}{_ref_note(rule.reference_params)} ({p})")


def _samples(rule: SamplesRule, n: int, smallest: int, batch: int, flops) -> tuple[int, str]:
    """Whole global batches (the nearest count, at least one), so the budget is what trains."""
    if rule.train_flops is not None:
        f = flops()
        raw = rule.train_flops / (3 * f)
        formula, detail = f"C / (3 x F) = {rule.train_flops:.4g} / (3 x {f:,})", "F = forward FLOPs per sample"
        source = "ladder.generate.samples.train_flops"
    elif rule.exponent is None or rule.exponent == 1:
        raw = rule.per_param * n
        formula, detail, source = f"{rule.per_param:g} x N", f"N = {n:,}", "ladder.generate.samples.per_param"
    else:
        ref = rule.reference_params or smallest
        raw = rule.per_param * ref * (n / ref) ** rule.exponent
        formula = f"{rule.per_param:g} x N_ref x (N / N_ref)^{rule.exponent:g}"
        detail, source = f"N = {n:,}, N_ref = {ref:,}{_ref_note(rule.reference_params)}", "ladder.generate.samples"
    samples = batch * max(1, math.floor(raw / batch + 0.5))
    return samples, f"{samples:,} = {formula} = {raw:,.0f}, rounded to whole batches of {batch}; {detail} ({source})"


def _ref_note(given: int) -> str:
    return "" if given else " (the smallest rung's)"


@dataclass
class _LRSource:
    c: float
    gamma: float
    where: str


def _lr_constants(gen: GenerateConfig, p: str) -> _LRSource | None:
    if gen.lr is not None:
        return _LRSource(gen.lr.c, gen.lr.gamma, f"(inline: {p}.lr)")
    if gen.lr_rule is None:
        return None
    fit = read_lr_rule(gen.lr_rule, f"{p}.lr_rule")
    ci = "".join(f", {k} in [{v[0]:g}, {v[1]:g}]" for k, v in (("c", fit.c_ci), ("gamma", fit.gamma_ci)) if v)
    where = f"from {_shown(gen.lr_rule)} (sweep run {fit.sweep_run_id}, {fit.date}; swept {fit.config}{ci})"
    return _LRSource(fit.c, fit.gamma, where)


def _lr(source: _LRSource | None, n: int) -> tuple[float | None, str]:
    if source is None:
        return None, "train.lr (no ladder.generate.lr or lr_rule)"
    # Four significant figures: more is noise for a learning rate, and it keeps the rung's hash
    # from turning on the last bits of a pow().
    lr = float(f"{source.c * n ** -source.gamma:.4g}")
    return lr, f"{lr:g} = c*N^-gamma, c={source.c:g}, gamma={source.gamma:g}, N={n:,} {source.where}"


def _shown(path: str) -> str:
    """A path as a reader wants it: relative to the working directory when it lies below it."""
    rel = os.path.relpath(path)
    return path if rel.startswith("..") else rel


# ---- the sweep's fragment ------------------------------------------------------------------


def read_lr_rule(path: str, key: str = "ladder.generate.lr_rule") -> LRSweepResult:
    """The sweep result at `path`; any problem is a ConfigError naming `key` and the file."""
    file = Path(path)
    if not file.is_file():
        raise ConfigError(key, path, "an existing sweep result file (a path relative to the config that names it)")
    try:
        data = yaml.safe_load(file.read_text())
    except (yaml.YAMLError, OSError, UnicodeDecodeError) as e:
        raise ConfigError(key, path, f"a readable YAML sweep result ({e})") from None
    if not isinstance(data, dict):
        raise ConfigError(key, path, "a YAML mapping with c, gamma, sweep_run_id, date and config")

    def bad(name: str, what: str):
        return ConfigError(key, path, f"a sweep result whose `{name}` is {what} (got {data.get(name)!r})")

    for name in ("c", "gamma", "sweep_run_id", "date", "config"):
        if data.get(name) is None:
            raise bad(name, "present")
    if not _is_number(data["c"]) or data["c"] <= 0:
        raise bad("c", "a number > 0")
    if not _is_number(data["gamma"]):
        raise bad("gamma", "a number")
    for name in ("c_ci", "gamma_ci"):
        v = data.get(name)
        if v is not None and not (isinstance(v, list) and len(v) == 2 and all(map(_is_number, v)) and v[0] <= v[1]):
            raise bad(name, "[lo, hi], two numbers with lo <= hi")
    if data.get("param_count", "nonembedding") != "nonembedding":
        raise bad("param_count", "nonembedding (the rule's N is non-embedding parameters)")
    for name in ("sweep_run_id", "config"):
        if not isinstance(data[name], str) or not data[name]:
            raise bad(name, "a non-empty string")
    return LRSweepResult(float(data["c"]), float(data["gamma"]), data["sweep_run_id"], _iso_date(data["date"], bad),
                         data["config"], _floats(data.get("c_ci")), _floats(data.get("gamma_ci")))


def _iso_date(value: Any, bad) -> str:
    # YAML reads an unquoted 2026-12-01 as a date, and 2026-12-01T10:00:00 as a datetime.
    if isinstance(value, (datetime.date, datetime.datetime)):
        return value.isoformat()
    try:
        datetime.datetime.fromisoformat(str(value))
    except ValueError:
        raise bad("date", "an ISO date (2026-12-01)") from None
    return str(value)


def _floats(v: list | None) -> list[float] | None:
    return None if v is None else [float(x) for x in v]


# ---- config-file plumbing, called by clipscale.config._read_yaml ---------------------------

# Paths a config names relative to itself; resolved where the file that holds the key is known.
_RELATIVE_TO_FILE = (("ladder", "generate", "lr_rule"),)

# Keys that say one thing two ways. A file that sets one replaces whichever its base set, so a
# config can take tiny.yaml as its base and generate its rungs instead of listing them.
_ALTERNATIVES = (
    (("ladder",), ("rungs",), ("generate",)),
    (("ladder", "generate"), ("shapes",), ("widths", "width_rule")),
    (("ladder", "generate"), ("lr",), ("lr_rule",)),
    (("ladder", "generate", "samples"), ("per_param", "exponent", "reference_params"), ("train_flops",)),
)


def _at(data: Any, keys: tuple[str, ...]) -> Any:
    for k in keys:
        data = data.get(k) if isinstance(data, dict) else None
    return data


def anchor_paths(data: Any, config_file: Path) -> None:
    """Make the file-relative paths in one config file's mapping absolute, against that file."""
    for keys in _RELATIVE_TO_FILE:
        node = _at(data, keys[:-1])
        if isinstance(node, dict) and isinstance(node.get(keys[-1]), str) and node[keys[-1]]:
            node[keys[-1]] = str((config_file.parent / node[keys[-1]]).resolve())


def drop_replaced(base: dict, over: dict) -> dict:
    """`base` without the keys whose alternative `over` sets (see _ALTERNATIVES)."""
    for where, *options in _ALTERNATIVES:
        b, o = _at(base, where), _at(over, where)
        if not (isinstance(b, dict) and isinstance(o, dict)):
            continue
        for option in (opt for opt in options if any(k in o for k in opt)):
            for key in (k for other in options if other is not option for k in other):
                b.pop(key, None)
    return base


# ---- checks --------------------------------------------------------------------------------


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _positive(key: str, v: Any) -> None:
    if not _is_number(v) or v <= 0:
        raise ConfigError(key, v, "a number > 0")


def _non_negative(key: str, v: Any) -> None:
    if not _is_number(v) or v < 0:
        raise ConfigError(key, v, "a number >= 0 (0: the ladder's smallest rung)")


def _finite(key: str, v: Any) -> None:
    if not _is_number(v):
        raise ConfigError(key, v, "a finite number")


def _one_of(p: str, a: str, va: Any, b: str, vb: Any) -> None:
    if va is not None and vb is not None:
        raise ConfigError(f"{p}.{b}", "set", f"unset when {p}.{a} is set: one of {a} or {b} (set the other to null)")
