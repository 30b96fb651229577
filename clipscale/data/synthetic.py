"""A procedural image-caption corpus that gives a tiny CLIP real learning to do on a CPU.

Scenes: one shape (8 shapes x 8 colors, 3 sizes, 9 positions, 3 backgrounds),
groups of 1-4 equal shapes, pairs of shapes with a spatial relation, rendered
digits and short rendered words. Captions come from many phrasings (frames,
synonyms, attribute order, partial mentions) because a corpus with few distinct
captions teaches a contrastive model nothing: in-batch duplicates are false
negatives (measured; ARCHITECTURE.md, "Stack facts").

Sample i is a pure function of (seed, i): its RNG is seeded with
`[TRAIN_STREAM, seed, i]`, so any shard can be regenerated on its own and
generation parallelises trivially. Eval sets draw from other streams.

`HELD_OUT_PAIRS` (color, shape) never occur in a training image or caption; the
`novel` eval task uses exactly those to measure zero-shot composition.
"""

from __future__ import annotations

import functools
import io
import json
import math
import sys
from collections.abc import Iterable, Iterator, Sequence

import numpy as np
from PIL import Image, ImageChops, ImageDraw, ImageFilter, ImageFont

from clipscale import storage
from clipscale.data.shards import ShardWriter
from clipscale.storage import StorageSettings

GENERATOR_VERSION = 1
TRAIN_STREAM = 0  # first word of every training RNG seed; eval sets use others
VAL_STREAM = 2  # the validation split: same distribution as training, its own samples (eval sets use 1)
_SS = 4  # shapes are drawn 4x larger then box-filtered down (anti-aliasing)

SHAPES = ("circle", "square", "triangle", "diamond", "star", "cross", "ring", "crescent")
PLURALS = {s: s + ("es" if s.endswith("s") else "s") for s in SHAPES}
SHAPE_SYNONYMS = {"circle": ("disk",), "square": ("block",), "diamond": ("rhombus",),
                  "cross": ("plus sign",), "ring": ("donut", "hoop"), "crescent": ("crescent moon",)}
# Base RGB; each image jitters them a little so color is a region, not a point.
COLORS = {"red": (215, 35, 35), "orange": (245, 135, 20), "yellow": (240, 220, 35), "green": (45, 170, 55),
          "cyan": (35, 200, 215), "blue": (40, 75, 230), "purple": (135, 55, 200), "pink": (245, 125, 190)}
COLOR_SYNONYMS = {"red": ("crimson",), "purple": ("violet",), "cyan": ("turquoise",), "pink": ("magenta",)}
BACKGROUNDS = {"black": (10, 45), "gray": (100, 150), "white": (210, 245)}  # grey-level ranges
SIZES = {"small": 0.18, "medium": 0.25, "large": 0.33}  # half-extent as a fraction of the image side
SHIFT_SIZES = {"tiny": 0.08, "huge": 0.44}  # only in the -shift eval renderings
SIZE_SYNONYMS = {"small": ("little",), "medium": ("medium-sized", "mid-sized"), "large": ("big",)}
POSITIONS = ("top left", "top", "top right", "left", "center", "right", "bottom left", "bottom", "bottom right")
COUNT_WORDS = ("one", "two", "three", "four")
DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
WORDS = ("cat", "dog", "sun", "sky", "car", "hat", "cup", "pen", "map", "bus", "egg", "key", "owl", "fox", "bee", "toy")

# An 8-cycle over 4 colors x 4 shapes (1 in 8 of the 64 combos). Each held-out
# color meets two held-out shapes and vice versa, so on the `novel` task color
# alone or shape alone gets 50% at best: only binding both gets it right. Every
# color and shape still occurs in training with 6 or more partners.
HELD_OUT_PAIRS: frozenset[tuple[str, str]] = frozenset({
    ("red", "circle"), ("red", "triangle"), ("yellow", "triangle"), ("yellow", "star"),
    ("blue", "star"), ("blue", "cross"), ("pink", "cross"), ("pink", "circle")})
SEEN_PAIRS: tuple[tuple[str, str], ...] = tuple(
    (c, s) for c in COLORS for s in SHAPES if (c, s) not in HELD_OUT_PAIRS)
# Scene kinds in the training mix; single shapes carry most eval tasks.
KIND_WEIGHTS = {"shape": 0.5, "count": 0.2, "pair": 0.06, "digit": 0.2, "word": 0.04}


# -- scenes: semantic attributes plus the geometry to draw them -----------------

def _pick(rng: np.random.Generator, seq: Sequence):
    return seq[int(rng.integers(len(seq)))]


def _place(rng: np.random.Generator, r: float, cell: int, jitter: float = 0.04) -> tuple[float, float]:
    """Center (x, y) in [0, 1] for grid cell 0..8, keeping a shape of half-extent r inside."""
    gy, gx = divmod(cell, 3)
    lo, hi = r, 1 - r
    x = lo + (hi - lo) * gx / 2 + rng.uniform(-jitter, jitter)
    y = lo + (hi - lo) * gy / 2 + rng.uniform(-jitter, jitter)
    return float(np.clip(x, lo, hi)), float(np.clip(y, lo, hi))


def _obj(rng, shape: str, color: str, r: float, x: float, y: float) -> dict:
    return {"shape": shape, "color": color, "r": r * rng.uniform(0.9, 1.1), "x": x, "y": y,
            "angle": float(rng.uniform(-40, 40) if shape == "crescent" else rng.uniform(-12, 12))}


def sample_scene(rng: np.random.Generator, kind: str | None = None, *, pairs: Sequence[tuple[str, str]] | None = None,
                 shift: bool = False, shift_sizes: Sequence[str] = ("tiny", "huge"),
                 kind_weights: dict[str, float] | None = None) -> dict:
    """Draw one scene. `pairs` restricts (color, shape) (default: the seen pairs);
    `shift` gives the eval-only rendering (outlines, textured backgrounds, odd sizes)."""
    if kind is None:
        weights = kind_weights or KIND_WEIGHTS
        kinds, w = list(weights), np.array(list(weights.values()), dtype=float)
        kind = kinds[int(rng.choice(len(kinds), p=w / w.sum()))]
    pairs = list(pairs or SEEN_PAIRS)
    s: dict = {"kind": kind, "background": _pick(rng, list(BACKGROUNDS))}
    if shift:
        s["outline"] = bool(rng.random() < 0.6)
        s["texture"] = _pick(rng, ["noise", "stripes", "checker", None]) if rng.random() < 0.7 else None
    if kind == "shape":
        color, shape = _pick(rng, pairs)
        size = _pick(rng, list(SIZES))
        if shift and shift_sizes and (rng.random() < 0.5 or not (s["outline"] or s["texture"])):
            size = _pick(rng, list(shift_sizes))
        r = {**SIZES, **SHIFT_SIZES}[size]
        cell = int(rng.integers(9))
        s.update(shape=shape, color=color, size=size, position=POSITIONS[cell], count=1)
        s["objects"] = [_obj(rng, shape, color, r, *_place(rng, r * 1.1, cell))]
    elif kind == "count":
        color, shape = _pick(rng, pairs)
        n = int(rng.integers(1, 5))
        size = _pick(rng, ["tiny", "small"])
        r = {"tiny": 0.09, "small": 0.12}[size] if not shift or rng.random() < 0.5 else 0.065
        cells = rng.choice(9, size=n, replace=False)
        s.update(shape=shape, color=color, count=n, size=size)
        s["objects"] = [_obj(rng, shape, color, r, *_place(rng, 0.14, int(c), 0.03)) for c in cells]
    elif kind == "pair":
        (c1, s1), (c2, s2) = (pairs[i] for i in rng.choice(len(pairs), size=2, replace=False))
        relation = _pick(rng, ["left of", "above"])
        r, off = rng.uniform(0.14, 0.19), rng.uniform(-0.1, 0.1)
        a, b = (0.27, 0.5 + off), (0.73, 0.5 - off)
        if relation == "above":
            a, b = a[::-1], b[::-1]
        s.update(shape=s1, color=c1, shape2=s2, color2=c2, relation=relation)
        s["objects"] = [_obj(rng, s1, c1, r, *a), _obj(rng, s2, c2, r, *b)]
    elif kind in ("digit", "word"):
        if rng.random() < 0.4:  # neutral ink matching the background's polarity, e.g. white on black
            color = "black" if s["background"] == "white" else "white"
            s["background"] = "white" if color == "black" else _pick(rng, ["black", "black", "gray"])
        else:
            color = _pick(rng, list(COLORS))
        text = str(int(rng.integers(10))) if kind == "digit" else _pick(rng, WORDS)
        size = _pick(rng, list(SIZES))
        # Glyph height as a fraction of the image; words are wider, so smaller.
        h = {"small": 0.42, "medium": 0.55, "large": 0.68}[size] * (0.5 if kind == "word" else 1.0)
        cell = int(rng.integers(9)) if kind == "digit" else 4
        x, y = _place(rng, h / 2 + 0.05 if kind == "digit" else 0.5, cell, 0.05)  # margin: glyph box + stroke
        s.update(color=color, size=size, position=POSITIONS[cell])
        s.update({"digit": int(text)} if kind == "digit" else {"word": text})
        s["objects"] = [{"text": text, "color": color, "h": h * rng.uniform(0.92, 1.08), "x": x, "y": y,
                         "angle": float(rng.uniform(-12, 12)), "bold": int(rng.integers(0, 2))}]
        s["lowres"] = bool(kind == "digit" and not shift and rng.random() < 0.3)
    else:
        raise ValueError(f"unknown scene kind {kind!r}; expected one of {sorted(KIND_WEIGHTS)}")
    return s


# -- rendering --------------------------------------------------------------------

_POLYS = {  # unit polygons, y down, radius ~1
    "square": [(-0.85, -0.85), (0.85, -0.85), (0.85, 0.85), (-0.85, 0.85)],
    "triangle": [(0, -1.0), (0.95, 0.75), (-0.95, 0.75)],
    "diamond": [(0, -1.0), (0.68, 0), (0, 1.0), (-0.68, 0)],
    "star": [(math.cos(math.radians(-90 + 36 * k)) * (1.0 if k % 2 == 0 else 0.42),
              math.sin(math.radians(-90 + 36 * k)) * (1.0 if k % 2 == 0 else 0.42)) for k in range(10)],
    "cross": [(-0.3, -1), (0.3, -1), (0.3, -0.3), (1, -0.3), (1, 0.3), (0.3, 0.3), (0.3, 1), (-0.3, 1),
              (-0.3, 0.3), (-1, 0.3), (-1, -0.3), (-0.3, -0.3)],
}


@functools.lru_cache(maxsize=64)
def _font(px: int) -> ImageFont.FreeTypeFont:
    return ImageFont.load_default(size=px)  # Pillow's bundled font: no files, works offline


def _mask(obj: dict, canvas: int) -> Image.Image:
    m = Image.new("L", (canvas, canvas), 0)
    d = ImageDraw.Draw(m)
    cx, cy = obj["x"] * canvas, obj["y"] * canvas
    if "text" in obj:
        px = max(4, round(obj["h"] * canvas / 0.7))  # digit glyphs are ~0.7 em tall
        d.text((cx, cy), obj["text"], fill=255, font=_font(px), anchor="mm", stroke_width=obj["bold"] * px // 14,
               stroke_fill=255)
        return m.rotate(obj["angle"], resample=Image.BILINEAR, center=(cx, cy))
    R, shape = obj["r"] * canvas, obj["shape"]
    if shape in ("circle", "ring"):
        d.ellipse([cx - R, cy - R, cx + R, cy + R], fill=255)
        if shape == "ring":
            d.ellipse([cx - 0.55 * R, cy - 0.55 * R, cx + 0.55 * R, cy + 0.55 * R], fill=0)
        return m
    a = math.radians(obj["angle"])
    ca, sa = math.cos(a), math.sin(a)
    if shape == "crescent":  # a disk minus a shifted disk, turned by the angle
        d.ellipse([cx - R, cy - R, cx + R, cy + R], fill=255)
        ox, oy = cx + 0.5 * R * ca, cy + 0.5 * R * sa
        d.ellipse([ox - 0.85 * R, oy - 0.85 * R, ox + 0.85 * R, oy + 0.85 * R], fill=0)
        return m
    d.polygon([(cx + R * (x * ca - y * sa), cy + R * (x * sa + y * ca)) for x, y in _POLYS[shape]], fill=255)
    return m


def _background(s: dict, size: int, rng: np.random.Generator) -> np.ndarray:
    lo, hi = BACKGROUNDS[s["background"]]
    base = rng.uniform(lo, hi) + rng.uniform(-8, 8, size=3)
    img = np.broadcast_to(base, (size, size, 3)).astype(np.float32)
    texture = s.get("texture")
    if texture == "noise":
        img = img + rng.normal(0, 40, size=(size, size, 1))
    elif texture in ("stripes", "checker"):
        other = rng.uniform(0, 255)
        yy, xx = np.mgrid[0:size, 0:size]
        period = rng.uniform(3, 7)
        if texture == "stripes":
            t = math.radians(rng.uniform(0, 180))
            on = ((xx * math.cos(t) + yy * math.sin(t)) // (period / 2)) % 2 == 1
        else:
            on = ((xx // period) + (yy // period)) % 2 == 1
        img = np.where(on[..., None], other, img)
    return img


def render(scene: dict, size: int, rng: np.random.Generator) -> np.ndarray:
    """Scene -> uint8 HxWx3 image."""
    img = _background(scene, size, rng)
    canvas = size * _SS
    for obj in scene["objects"]:
        m = _mask(obj, canvas)
        if scene.get("outline"):  # sketch: keep only a ~1.5 px rim of the filled mask
            m = ImageChops.subtract(m, m.filter(ImageFilter.MinFilter(2 * (_SS * 3 // 4) + 1)))
        alpha = np.asarray(m.resize((size, size), Image.BOX), dtype=np.float32)[..., None] / 255.0
        name = obj["color"]
        base = COLORS.get(name) or ((245, 245, 245) if name == "white" else (15, 15, 15))
        color = np.clip(np.array(base) + rng.uniform(-18, 18, size=3), 0, 255)
        img = img * (1 - alpha) + color * alpha
    out = np.clip(img, 0, 255).round().astype(np.uint8)
    if scene.get("lowres"):  # a coarse scan, like 8x8 handwritten-digit datasets
        k = int(rng.integers(7, 13))
        small = Image.fromarray(out).resize((k, k), Image.BOX)
        out = np.asarray(small.resize((size, size), Image.BILINEAR))
    return out


def png_bytes(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


def attrs(scene: dict) -> dict:
    """The semantic attributes of a scene (its drawing geometry left out)."""
    return {k: v for k, v in scene.items() if k != "objects"}


# -- captions -----------------------------------------------------------------------

FRAMES = ("{}", "{}", "a photo of {}", "a picture of {}", "an image of {}", "a drawing of {}", "a rendering of {}",
          "there is {}", "this image shows {}", "a simple graphic of {}", "a close-up of {}")
PLURAL_FRAMES = ("{}", "{}", "a photo of {}", "a picture of {}", "an image with {}", "a drawing of {}",
                 "there are {}", "this image shows {}")
GENERIC_NOUNS = ("shape", "object", "thing", "figure")
# Share of captions in one fixed, complete phrasing. Tiny text towers parse a consistent
# caption far sooner: on shape scenes a 64x2 ViT CLIP reached loss 1.1 with fixed captions
# against 3.4 with only varied ones after 312 steps of 128, and learned shape only with
# the former. The rest stay varied (frames, synonyms, order, partial mentions) so prompts
# in other wordings still mean something; attribute combinations keep duplicates rare.
P_CANONICAL = 0.6


def _art(phrase: str) -> str:
    return ("an " if phrase[0] in "aeiou8" else "a ") + phrase


def _syn(rng: np.random.Generator, word: str, table: dict, p_canonical: float) -> str:
    alts = table.get(word, ())
    return word if not alts or rng.random() < p_canonical else _pick(rng, alts)


def _join(*parts: str | None) -> str:
    return " ".join(p for p in parts if p)


def _extras(rng: np.random.Generator, s: dict, p_pos: float, p_bg: float) -> list[str]:
    out = []
    if s.get("position") and rng.random() < p_pos:
        pos = s["position"]
        if rng.random() < 0.25:
            pos = pos.replace("top", "upper").replace("bottom", "lower").replace("center", "middle")
        out.append(_pick(rng, ("in the {}", "in the {}", "at the {}", "in the {} of the image", "in the {} part")).format(pos))
    if rng.random() < p_bg:
        out.append(_pick(rng, ("on a {} background", "against a {} background", "on {}")).format(s["background"]))
    if len(out) == 2 and rng.random() < 0.3:
        out.reverse()
    return out


def _noun_phrase(rng: np.random.Generator, shape: str, color: str, size: str | None, p_size: float = 0.35) -> str:
    # Captions that leave out the color make shape the only way to find their image in a
    # batch; without them a model gets most of the contrastive loss from color alone.
    say_shape, say_color = rng.random() < 0.9, rng.random() < 0.6
    if not (say_shape or say_color):
        say_shape = say_color = True
    noun = _syn(rng, shape, SHAPE_SYNONYMS, 0.9) if say_shape else _pick(rng, GENERIC_NOUNS)
    col = _syn(rng, color, COLOR_SYNONYMS, 0.85) if say_color else None
    sz = _syn(rng, size, SIZE_SYNONYMS, 0.7) if size and rng.random() < p_size else None
    form = rng.random()
    if col and form < 0.15:
        return f"{_art(_join(sz, noun))} {_pick(rng, ('colored', 'in'))} {col}"
    if (col or sz) and form < 0.3:
        return f"{_art(noun)} that is {' and '.join(p for p in (sz, col) if p)}"
    return _art(_join(*((sz, col) if rng.random() < 0.8 else (col, sz)), noun))


def _count_phrase(rng: np.random.Generator, s: dict) -> str:
    n, shape, color = s["count"], s["shape"], _syn(rng, s["color"], COLOR_SYNONYMS, 0.85)
    if n == 1:
        return _join(_pick(rng, ("one", "one", "a single", "just one")), color if rng.random() < 0.85 else None,
                     _syn(rng, shape, SHAPE_SYNONYMS, 0.8) if rng.random() < 0.85 else _pick(rng, GENERIC_NOUNS))
    word = COUNT_WORDS[n - 1] if rng.random() < 0.85 else {2: "a pair of", 3: "a trio of", 4: "a group of four"}[n]
    nouns = PLURALS[shape] if rng.random() < 0.85 else _pick(rng, ("shapes", "objects", "things"))
    form = rng.random()
    if form < 0.15:
        return f"{word} {nouns}, all {color}"
    if form < 0.3 and nouns == PLURALS[shape]:
        return f"{word} {_pick(rng, ('shapes', 'objects'))}, all {color} {nouns}"
    return _join(word, color if rng.random() < 0.85 else None, nouns)


def _pair_phrase(rng: np.random.Generator, s: dict) -> str:
    a = _noun_phrase(rng, s["shape"], s["color"], None)
    b = _noun_phrase(rng, s["shape2"], s["color2"], None)
    forms = ({"left of": ("{a} to the left of {b}", "{b} to the right of {a}", "{a} and {b}", "{a} next to {b}",
                          "{a} on the left and {b} on the right"),
              "above": ("{a} above {b}", "{b} below {a}", "{a} and {b}", "{b} under {a}",
                        "{a} at the top and {b} at the bottom")})[s["relation"]]
    return _pick(rng, forms).format(a=a, b=b)


def _text_phrase(rng: np.random.Generator, s: dict) -> str:
    color = _syn(rng, s["color"], COLOR_SYNONYMS, 0.85) if rng.random() < 0.75 else None
    size = _syn(rng, s["size"], SIZE_SYNONYMS, 0.7) if rng.random() < 0.3 else None
    if s["kind"] == "word":
        w = s["word"]
        head = _pick(rng, ('the word "{}"', 'the text "{}"', "a sign that says {}", "the letters {}", "the word {}")).format(w)
        return head + (f" {_pick(rng, ('in', 'written in'))} {color}" + _pick(rng, ("", " letters")) if color else "")
    d = str(s["digit"]) if rng.random() < 0.75 else DIGIT_WORDS[s["digit"]]
    form = rng.random()
    if form < 0.35:
        return f"the {_join(size, color, _pick(rng, ('digit', 'number', 'numeral')))} {d}"
    if form < 0.6:
        return _art(_join(size, color, d))
    return f"the {_pick(rng, ('digit', 'number'))} {d}" + (f" {_pick(rng, ('in', 'written in'))} {color}" if color else "")


def _canonical(s: dict) -> str:
    """The one fixed phrasing: every attribute, always in the same order."""
    kind, bg = s["kind"], f"on a {s['background']} background"
    if kind == "shape":
        return f"a {s['size']} {s['color']} {s['shape']} in the {s['position']} {bg}"
    if kind == "count":
        noun = s["shape"] if s["count"] == 1 else PLURALS[s["shape"]]
        return f"{COUNT_WORDS[s['count'] - 1]} {s['size']} {s['color']} {noun} {bg}"
    if kind == "pair":
        rel = "to the left of" if s["relation"] == "left of" else "above"
        return f"a {s['color']} {s['shape']} {rel} a {s['color2']} {s['shape2']} {bg}"
    if kind == "digit":
        return f"the {s['size']} {s['color']} digit {s['digit']} in the {s['position']} {bg}"
    return f'the word "{s["word"]}" in {s["size"]} {s["color"]} letters {bg}'


def caption(scene: dict, rng: np.random.Generator) -> str:
    """A fixed full phrasing (share P_CANONICAL) or one of many partial ones."""
    if rng.random() < P_CANONICAL:
        return _canonical(scene)
    kind = scene["kind"]
    if kind == "shape":
        body = _noun_phrase(rng, scene["shape"], scene["color"], scene["size"])
        extras = _extras(rng, scene, 0.45, 0.15)
    elif kind == "count":
        body, extras = _count_phrase(rng, scene), _extras(rng, scene, 0.0, 0.2)
    elif kind == "pair":
        body, extras = _pair_phrase(rng, scene), _extras(rng, scene, 0.0, 0.2)
    else:
        body, extras = _text_phrase(rng, scene), _extras(rng, scene, 0.4, 0.35)
    if extras and rng.random() < 0.15:
        text = f"{extras[0]}, {_join(body, *extras[1:])}"
    else:
        text = _pick(rng, PLURAL_FRAMES if kind == "count" and scene["count"] > 1 else FRAMES).format(_join(body, *extras))
    if scene.get("lowres") and rng.random() < 0.5:
        text = f"{_pick(rng, ('a blurry', 'a pixelated', 'a low-resolution'))} image: {text}"
    return text + ("." if rng.random() < 0.5 else "")


# -- generation ---------------------------------------------------------------------

def make_sample(i: int, seed: int, image_size: int = 32, kind_weights: dict[str, float] | None = None,
                stream: int = TRAIN_STREAM) -> dict:
    """Sample i of the corpus with this seed (training's stream, or `VAL_STREAM` for the validation
    split): a pure function of its arguments. `kind_weights` overrides the scene mix (default `KIND_WEIGHTS`)."""
    if seed < 0 or i < 0:
        raise ValueError(f"seed and sample index must be >= 0, got seed={seed}, i={i}")
    rng = np.random.default_rng([int(stream), int(seed), int(i)])
    scene = sample_scene(rng, kind_weights=kind_weights)
    image = render(scene, image_size, rng)
    return {"__key__": f"{i:09d}", "png": png_bytes(image), "txt": caption(scene, rng), "json": attrs(scene)}


def generate(n: int, seed: int, image_size: int = 32, start: int = 0,
             kind_weights: dict[str, float] | None = None, stream: int = TRAIN_STREAM) -> Iterator[dict]:
    """Samples start .. start+n-1 of the corpus `seed`, in order."""
    for i in range(start, start + n):
        yield make_sample(i, seed, image_size, kind_weights, stream)


def write_corpus(out_uri: str, samples: int | Iterable[dict], shard_size: int = 1000, seed: int = 0,
                 image_size: int = 32, progress: bool = True, settings: StorageSettings | None = None,
                 prefix: str = "shard", kind_weights: dict[str, float] | None = None,
                 stream: int = TRAIN_STREAM) -> dict[str, int]:
    """Write `samples` (a count, generated here, or ready samples) as webdataset shards plus
    `sizes.json` and a `corpus.json` that records how to regenerate them; returns the sizes."""
    from tqdm import tqdm

    total = samples if isinstance(samples, int) else None
    rows = generate(samples, seed, image_size, kind_weights=kind_weights, stream=stream) \
        if isinstance(samples, int) else samples
    with ShardWriter(out_uri, shard_size, prefix, settings) as writer:
        for sample in tqdm(rows, total=total, disable=not progress, file=sys.stderr, unit="sample",
                           desc=f"synth -> {out_uri}", mininterval=1.0):
            writer.write(sample)
    info = {"generator": "clipscale.data.synthetic", "version": GENERATOR_VERSION, "seed": seed, "stream": stream,
            "image_size": image_size, "samples": sum(writer.sizes.values()), "kind_weights": kind_weights or KIND_WEIGHTS,
            "held_out_pairs": sorted(map(list, HELD_OUT_PAIRS))}
    storage.write_bytes(storage.join(out_uri, "corpus.json"), json.dumps(info, indent=1).encode(), settings)
    return writer.sizes
