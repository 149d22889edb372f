"""Synthetic verifiable image tasks drawn with PIL: offline, deterministic, small enough for CPU tests.

* ``count``: 1 to 6 shapes (circles, squares, triangles) in distinct colours on a light background, never
  overlapping (at least 2 px apart at 64 px, so the count is unambiguous); "How many shapes are in the image?"
* ``digits``: 2 or 3 large digits (PIL's built-in font); "What is the sum of the digits in the image?"
* ``mixed``: the two alternate (count first).
* ``color``: one large shape; name its colour by its number (1-5).
* ``reason``: read the image, then take one small step of reasoning; the kinds (``REASON_KINDS``) alternate in
  the order given, and each question is drawn from several phrasings:

  - ``color_add``: one large shape; "the number of its colour (1 red ... 5 purple) plus m", m in 1..max_addend;
  - ``larger_color``: two shapes of different colours and clearly different sizes (the smaller one's radius is
    45-60 % of the larger one's), in the two halves of the image; the number of the larger one's colour;
  - ``count_add``: 1 to 4 large shapes, at most one in each quadrant of the image; "how many shapes, plus m";
  - ``compare``: two different large digits, one in each half; the larger of the two.

  A 64-pixel image is 4 image tokens for the tiny model (one per quadrant), so every fact a question needs is
  carried by whole quadrants: large shapes, one per quadrant or half. Answers are whole numbers.

Example ``j`` of a stream is a pure function of ``(seed, stream, j)`` (``random.Random`` seeded with the
string ``f"{seed}-{stream}-{j}"``), so a longer set starts with the shorter one and a given seed always gives
byte-identical images. Shapes and digits are drawn at 4x and box-filtered down (anti-aliased edges).
Each example's ``columns`` records what was drawn (``task``, ``shapes`` or ``digits``, ``id``; for ``reason``
also ``kind`` and ``addend``) next to the ``problem`` and ``answer`` columns a loaded JSONL row would have.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
from collections.abc import Collection, Iterable, Sequence
from functools import lru_cache
from pathlib import Path

from npo_lab.llm.config import REASON_KINDS, DataConfig
from npo_lab.llm.example import IMAGE_MARKER, Example
from PIL import Image, ImageDraw, ImageFont

TASKS = ("count", "digits", "mixed", "color", "reason")
COUNT_QUESTION = IMAGE_MARKER + "How many shapes are in the image?"
DIGITS_QUESTION = IMAGE_MARKER + "What is the sum of the digits in the image?"
COLOR_CHOICES = ("red", "blue", "green", "orange", "purple")
COLOR_QUESTION = (
    IMAGE_MARKER
    + "What colour is the shape? Answer with its number: "
    + ", ".join(f"{i} {c}" for i, c in enumerate(COLOR_CHOICES, 1))
    + "."
)
SHAPES = ("circle", "square", "triangle")
COLOR_LEGEND = ", ".join(f"{i} {c}" for i, c in enumerate(COLOR_CHOICES, 1))
"""'1 red, 2 blue, 3 green, 4 orange, 5 purple': the colour numbers every colour question states."""
REASON_QUESTIONS: dict[str, tuple[str, ...]] = {
    "color_add": (
        "The colours are numbered {legend}. What is the number of the shape's colour plus {m}?",
        "Take the number of the colour of the shape ({legend}) and add {m}.",
        "Colour numbers: {legend}. Add {m} to the number of the shape's colour.",
    ),
    "larger_color": (
        "What colour is the larger shape? Answer with its number: {legend}.",
        "The colours are numbered {legend}. Give the number of the colour of the bigger shape.",
        "Which colour does the largest shape have? Colour numbers: {legend}.",
    ),
    "count_add": (
        "How many shapes are in the image? Add {m} to that number.",
        "Count the shapes, then add {m}.",
        "What is the number of shapes in the picture plus {m}?",
    ),
    "compare": (
        "Which of the two numbers in the image is larger?",
        "Two digits are shown. Give the larger one.",
        "What is the bigger of the two numbers in the picture?",
    ),
}
"""Several phrasings of each kind's question (one is drawn per example); ``{m}`` is the addend."""
# saturated colours, all far from the light backgrounds and from each other
PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "blue": (30, 70, 220),
    "green": (20, 150, 50),
    "orange": (245, 130, 0),
    "purple": (130, 40, 190),
    "brown": (120, 70, 20),
    "teal": (0, 140, 140),
    "magenta": (220, 0, 170),
    "black": (20, 20, 20),
    "olive": (120, 130, 0),
}
_SS = 4  # supersampling factor
_MAX_SHAPES = 6


def make_synthetic(
    task: str,
    n: int,
    seed: int,
    size: int = 64,
    *,
    stream: str = "train",
    exclude: Collection[bytes] = (),
    kinds: Sequence[str] = REASON_KINDS,
    max_addend: int = 4,
) -> list[Example]:
    """``n`` examples of ``task`` (one of ``TASKS``) from the seed stream ``(seed, stream)``.

    Args:
        task: which task; "mixed" alternates count and digits; "color" (one large shape, name its colour's
            number); "reason" (read the image, then one small step of reasoning: the ``kinds``, in turn).
        n: number of examples.
        seed: generator seed.
        size: side of the square RGB images, in pixels (>= 16).
        stream: name of the seed stream ("train", "eval", ...); different streams are independent.
        exclude: :func:`fingerprint` values to leave out (drawn examples equal to one are skipped).
        kinds: reason only: the question kinds (``REASON_KINDS``), taken in turn.
        max_addend: reason only: the addend m of color_add and count_add is drawn from 1..max_addend.

    Returns:
        examples indexed 0..n-1.

    >>> [ex.columns["kind"] for ex in make_synthetic("reason", 3, seed=0, kinds=("compare", "count_add"))]
    ['compare', 'count_add', 'compare']
    """
    if task not in TASKS:
        raise ValueError(f"synthetic task must be one of {', '.join(TASKS)}, got {task!r}")
    if n < 0 or size < 16:
        raise ValueError(f"need n >= 0 and size >= 16, got n={n}, size={size}")
    bad = [k for k in kinds if k not in REASON_KINDS]
    if task == "reason" and (bad or not kinds):
        raise ValueError(f"reason kinds must be a non-empty list of {', '.join(REASON_KINDS)}, got {list(kinds)}")
    if max_addend < 1:
        raise ValueError(f"max_addend must be >= 1, got {max_addend}")
    out: list[Example] = []
    j = 0
    while len(out) < n:
        kind = task if task != "mixed" else ("count", "digits")[len(out) % 2]
        rng = random.Random(f"{seed}-{stream}-{j}")
        uid = f"{seed}-{stream}-{j}"
        j += 1
        if kind == "count":
            image, answer, record = _draw_count(rng, size)
            question = COUNT_QUESTION
        elif kind == "color":
            image, answer, record = _draw_color(rng, size)
            question = COLOR_QUESTION
        elif kind == "reason":
            image, answer, record, question = _draw_reason(rng, size, kinds[len(out) % len(kinds)], max_addend)
        else:
            image, answer, record = _draw_digits(rng, size)
            question = DIGITS_QUESTION
        columns = {"problem": question, "answer": answer, "task": kind, **record, "id": uid}
        ex = Example(index=len(out), question=question, answer=answer, images=(image,), columns=columns)
        if exclude and fingerprint(ex) in exclude:
            continue
        out.append(ex)
    return out


def synthetic_splits(cfg: DataConfig) -> tuple[list[Example], list[Example]]:
    """(train, eval) synthetic sets: streams "train" and "eval" of ``cfg.synthetic_seed``.

    The eval set skips any example equal (question and image bytes) to a training one, so the two never
    overlap.
    """
    kw = dict(kinds=reason_kinds(cfg), max_addend=cfg.reason_max_addend)
    train = make_synthetic(cfg.synthetic_task, cfg.synthetic_train, cfg.synthetic_seed, cfg.image_size, **kw)
    seen = {fingerprint(ex) for ex in train}
    held_out = make_synthetic(
        cfg.synthetic_task, cfg.synthetic_eval, cfg.synthetic_seed, cfg.image_size, stream="eval", exclude=seen, **kw
    )
    return train, held_out


def reason_kinds(cfg: DataConfig) -> tuple[str, ...]:
    """The kinds listed in ``cfg.reason_kinds`` (comma-separated), in order."""
    return tuple(k.strip() for k in cfg.reason_kinds.split(",") if k.strip())


def fingerprint(ex: Example) -> bytes:
    """SHA-256 of an example's question and images (mode, size and pixel bytes)."""
    h = hashlib.sha256(ex.question.encode())
    for im in ex.images:
        h.update(f"|{im.mode}|{im.size}|".encode())
        h.update(im.tobytes())
    return h.digest()


def write_jsonl(
    examples: Iterable[Example],
    folder: str | Path,
    *,
    image_key: str = "images",
    question_key: str = "problem",
    answer_key: str = "answer",
) -> Path:
    """Write examples as PNG files plus ``data.jsonl`` (the geometry3k schema of verl and EasyR1).

    Each line holds the image paths (relative to the JSONL file), the question with one ``<image>`` marker per
    image (added at the start when the question has none), the answer, and the example's other columns.

    Returns:
        the path of ``data.jsonl``.
    """
    folder = Path(folder)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    path = folder / "data.jsonl"
    with open(path, "w", encoding="utf-8") as f:
        for pos, ex in enumerate(examples):
            n_markers = ex.question.count(IMAGE_MARKER)
            if n_markers not in (0, len(ex.images)):
                raise ValueError(f"row {ex.index}: {n_markers} {IMAGE_MARKER!r} markers for {len(ex.images)} images")
            question = ex.question if n_markers else IMAGE_MARKER * len(ex.images) + ex.question
            paths = []
            for k, im in enumerate(ex.images):
                rel = f"images/{pos:06d}_{k}.png"
                im.save(folder / rel, format="PNG")
                paths.append(rel)
            row = {image_key: paths, question_key: question, answer_key: ex.answer}
            row.update({c: v for c, v in ex.columns.items() if c not in row})
            f.write(json.dumps(row) + "\n")
    return path


# ------------------------------------------------------------------------------------------------ drawing


def _background(rng: random.Random) -> tuple[int, int, int]:
    return (rng.randint(228, 255), rng.randint(228, 255), rng.randint(228, 255))


def _place(rng: random.Random, k: int, size: int) -> list[tuple[float, float, float]]:
    """``k`` non-overlapping discs (x, y, r) inside the image, at least ``gap`` pixels apart."""
    gap = max(1.5, size / 32)
    scale = 1.0
    for _ in range(100):
        discs: list[tuple[float, float, float]] = []
        for _ in range(k):
            r = max(1.5, rng.uniform(0.09, 0.15) * size * scale)
            for _ in range(100):
                x, y = rng.uniform(r + 1, size - 1 - r), rng.uniform(r + 1, size - 1 - r)
                if all(math.hypot(x - px, y - py) >= r + pr + gap for px, py, pr in discs):
                    discs.append((x, y, r))
                    break
            else:
                break
        if len(discs) == k:
            return discs
        scale *= 0.9
    raise RuntimeError(f"could not place {k} shapes in a {size}px image")  # pragma: no cover


def _draw_count(rng: random.Random, size: int) -> tuple[Image.Image, str, dict]:
    k = rng.randint(1, _MAX_SHAPES)
    colours = rng.sample(sorted(PALETTE), k)
    kinds = [rng.choice(SHAPES) for _ in range(k)]
    discs = _place(rng, k, size)
    canvas = Image.new("RGB", (size * _SS, size * _SS), _background(rng))
    draw = ImageDraw.Draw(canvas)
    shapes = []
    for kind, colour, (x, y, r) in zip(kinds, colours, discs):
        fill = PALETTE[colour]
        cx, cy, rr = x * _SS, y * _SS, r * _SS
        if kind == "circle":
            draw.ellipse((cx - 0.9 * rr, cy - 0.9 * rr, cx + 0.9 * rr, cy + 0.9 * rr), fill=fill)
        elif kind == "square":
            draw.rectangle((cx - 0.7 * rr, cy - 0.7 * rr, cx + 0.7 * rr, cy + 0.7 * rr), fill=fill)
        else:
            turn = rng.uniform(0, 2 * math.pi / 3)
            pts = [
                (cx + rr * math.sin(turn + a), cy - rr * math.cos(turn + a))
                for a in (0, 2 * math.pi / 3, 4 * math.pi / 3)
            ]
            draw.polygon(pts, fill=fill)
        shapes.append({"shape": kind, "color": colour, "center": [round(x, 2), round(y, 2)], "radius": round(r, 2)})
    return canvas.resize((size, size), Image.Resampling.BOX), str(k), {"shapes": shapes}


def _draw_color(rng: random.Random, size: int) -> tuple[Image.Image, str, dict]:
    """One large shape in one of COLOR_CHOICES; the answer is the colour's number (1-based)."""
    k = rng.randrange(len(COLOR_CHOICES))
    kind = rng.choice(SHAPES)
    canvas = Image.new("RGB", (size * _SS, size * _SS), _background(rng))
    draw = ImageDraw.Draw(canvas)
    fill = PALETTE[COLOR_CHOICES[k]]
    c, rr = size * _SS / 2, size * _SS * rng.uniform(0.3, 0.42)
    cx, cy = c + rng.uniform(-0.05, 0.05) * size * _SS, c + rng.uniform(-0.05, 0.05) * size * _SS
    _shape(draw, kind, cx, cy, rr, fill)
    image = canvas.resize((size, size), Image.Resampling.BOX)
    return image, str(k + 1), {"shape": kind, "color": COLOR_CHOICES[k]}


@lru_cache(maxsize=10)
def _glyph(digit: int) -> Image.Image:
    """Tight 'L' mask of one digit from PIL's built-in font (scalable when FreeType is available)."""
    try:
        font: ImageFont.FreeTypeFont | ImageFont.ImageFont = ImageFont.load_default(size=96)
    except (ImportError, OSError):  # Pillow without FreeType: the small bitmap font, scaled up by the caller
        font = ImageFont.load_default()
    left, top, right, bottom = font.getbbox(str(digit))
    mask = Image.new("L", (int(right - left), int(bottom - top)), 0)
    ImageDraw.Draw(mask).text((-left, -top), str(digit), fill=255, font=font)
    return mask


def _draw_digits(rng: random.Random, size: int) -> tuple[Image.Image, str, dict]:
    n = rng.choice((2, 3))
    digits = [rng.randint(0, 9) for _ in range(n)]
    side = size * _SS
    canvas = Image.new("RGB", (side, side), _background(rng))
    cell = side / n
    height = side * (0.5 if n == 2 else 0.42)
    for i, d in enumerate(digits):
        mask = _glyph(d)
        h = height * rng.uniform(0.85, 1.0)
        w = min(mask.width * h / mask.height, 0.8 * cell)
        h = min(h, w * mask.height / mask.width)
        mask = mask.resize((max(1, round(w)), max(1, round(h))), Image.Resampling.LANCZOS)
        x = round(i * cell + rng.uniform(0.05 * cell, 0.95 * cell - mask.width))
        y = round(rng.uniform(0.1 * side, 0.9 * side - mask.height))
        fill = PALETTE[rng.choice(sorted(PALETTE))]
        canvas.paste(Image.new("RGB", mask.size, fill), (x, y), mask)
    return canvas.resize((size, size), Image.Resampling.BOX), str(sum(digits)), {"digits": digits}


# ------------------------------------------------------------------------------------------ reason task


def _draw_reason(rng: random.Random, size: int, kind: str, max_addend: int) -> tuple[Image.Image, str, dict, str]:
    """One example of a ``reason`` kind: (image, answer, record, question)."""
    template = rng.choice(REASON_QUESTIONS[kind])
    m = rng.randint(1, max_addend)
    side = size * _SS
    canvas = Image.new("RGB", (side, side), _background(rng))
    draw = ImageDraw.Draw(canvas)
    if kind == "color_add":
        k = rng.randrange(len(COLOR_CHOICES))
        shape = rng.choice(SHAPES)
        jitter = [side / 2 + rng.uniform(-0.05, 0.05) * side for _ in range(2)]
        _shape(draw, shape, jitter[0], jitter[1], side * rng.uniform(0.3, 0.42), PALETTE[COLOR_CHOICES[k]])
        answer, record = k + 1 + m, {"shapes": [{"shape": shape, "color": COLOR_CHOICES[k]}]}
    elif kind == "larger_color":
        big, small = rng.sample(range(len(COLOR_CHOICES)), 2)
        r_big = side * rng.uniform(0.19, 0.23)
        r_small = r_big * rng.uniform(0.45, 0.6)
        vertical = rng.random() < 0.5  # the two halves: left/right or top/bottom
        halves = [0, 1]
        rng.shuffle(halves)  # which half holds the larger shape
        shapes = []
        for colour, r, half in ((big, r_big, halves[0]), (small, r_small, halves[1])):
            along = side * (0.25 + 0.5 * half) + rng.uniform(-0.03, 0.03) * side
            across = side / 2 + rng.uniform(-0.25, 0.25) * (side - 2 * r)
            cx, cy = (across, along) if vertical else (along, across)
            shape = rng.choice(SHAPES)
            _shape(draw, shape, cx, cy, r, PALETTE[COLOR_CHOICES[colour]])
            shapes.append({"shape": shape, "color": COLOR_CHOICES[colour], "radius": round(r / _SS, 2)})
        answer, record = big + 1, {"shapes": shapes}
    elif kind == "count_add":
        k = rng.randint(1, 4)
        quadrants = rng.sample(range(4), k)
        colours = rng.sample(COLOR_CHOICES, k)
        shapes = []
        for q, colour in zip(quadrants, colours):
            r = side * rng.uniform(0.14, 0.2)
            cx = side * (0.25 + 0.5 * (q % 2)) + rng.uniform(-0.04, 0.04) * side
            cy = side * (0.25 + 0.5 * (q // 2)) + rng.uniform(-0.04, 0.04) * side
            shape = rng.choice(SHAPES)
            _shape(draw, shape, cx, cy, r, PALETTE[colour])
            shapes.append({"shape": shape, "color": colour, "quadrant": q})
        answer, record = k + m, {"shapes": shapes}
    else:  # compare
        a, b = rng.sample(range(10), 2)
        for i, d in enumerate((a, b)):
            mask = _glyph(d)
            h = side * rng.uniform(0.55, 0.7)
            w = min(mask.width * h / mask.height, 0.42 * side)
            h = min(h, w * mask.height / mask.width)
            mask = mask.resize((max(1, round(w)), max(1, round(h))), Image.Resampling.LANCZOS)
            x = round(i * side / 2 + (side / 2 - mask.width) * rng.uniform(0.3, 0.7))
            y = round((side - mask.height) * rng.uniform(0.3, 0.7))
            canvas.paste(Image.new("RGB", mask.size, PALETTE[rng.choice(COLOR_CHOICES)]), (x, y), mask)
        answer, record = max(a, b), {"digits": [a, b]}
    question = IMAGE_MARKER + template.format(legend=COLOR_LEGEND, m=m)
    uses_m = "{m}" in template
    record = {"kind": kind, **record, "addend": m if uses_m else None}
    return canvas.resize((size, size), Image.Resampling.BOX), str(answer), record, question


def _shape(draw: ImageDraw.ImageDraw, kind: str, cx: float, cy: float, rr: float, fill: tuple[int, int, int]) -> None:
    """A filled circle, square or (upright) triangle of 'radius' ``rr`` centred on (cx, cy), in canvas pixels."""
    if kind == "circle":
        draw.ellipse((cx - rr, cy - rr, cx + rr, cy + rr), fill=fill)
    elif kind == "square":
        draw.rectangle((cx - 0.8 * rr, cy - 0.8 * rr, cx + 0.8 * rr, cy + 0.8 * rr), fill=fill)
    else:
        draw.polygon([(cx, cy - rr), (cx - rr, cy + 0.8 * rr), (cx + rr, cy + 0.8 * rr)], fill=fill)
