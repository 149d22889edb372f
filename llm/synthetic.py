"""Synthetic verifiable image tasks drawn with PIL: offline, deterministic, small enough for CPU tests.

* ``count``: 1 to 6 shapes (circles, squares, triangles) in distinct colours on a light background, never
  overlapping (at least 2 px apart at 64 px, so the count is unambiguous); "How many shapes are in the image?"
* ``digits``: 2 or 3 large digits (PIL's built-in font); "What is the sum of the digits in the image?"
* ``mixed``: the two alternate (count first).

Example ``j`` of a stream is a pure function of ``(seed, stream, j)`` (``random.Random`` seeded with the
string ``f"{seed}-{stream}-{j}"``), so a longer set starts with the shorter one and a given seed always gives
byte-identical images. Shapes and digits are drawn at 4x and box-filtered down (anti-aliased edges).
Each example's ``columns`` records what was drawn (``task``, ``shapes`` or ``digits``, ``id``) next to the
``problem`` and ``answer`` columns a loaded JSONL row would have.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
from collections.abc import Collection, Iterable
from functools import lru_cache
from pathlib import Path

from npo_lab.llm.config import DataConfig
from npo_lab.llm.example import IMAGE_MARKER, Example
from PIL import Image, ImageDraw, ImageFont

TASKS = ("count", "digits", "mixed", "color")
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
) -> list[Example]:
    """``n`` examples of ``task`` ("count", "digits", "mixed" or "color") from the seed stream ``(seed, stream)``.

    Args:
        task: which task; "mixed" alternates count and digits; "color" (one large shape, name its colour's
            number) is the one a tiny model can learn to see.
        n: number of examples.
        seed: generator seed.
        size: side of the square RGB images, in pixels (>= 16).
        stream: name of the seed stream ("train", "eval", ...); different streams are independent.
        exclude: :func:`fingerprint` values to leave out (drawn examples equal to one are skipped).

    Returns:
        examples indexed 0..n-1.
    """
    if task not in TASKS:
        raise ValueError(f"synthetic task must be one of {', '.join(TASKS)}, got {task!r}")
    if n < 0 or size < 16:
        raise ValueError(f"need n >= 0 and size >= 16, got n={n}, size={size}")
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
    train = make_synthetic(cfg.synthetic_task, cfg.synthetic_train, cfg.synthetic_seed, cfg.image_size)
    seen = {fingerprint(ex) for ex in train}
    held_out = make_synthetic(
        cfg.synthetic_task, cfg.synthetic_eval, cfg.synthetic_seed, cfg.image_size, stream="eval", exclude=seen
    )
    return train, held_out


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
    if kind == "circle":
        draw.ellipse((cx - rr, cy - rr, cx + rr, cy + rr), fill=fill)
    elif kind == "square":
        draw.rectangle((cx - 0.8 * rr, cy - 0.8 * rr, cx + 0.8 * rr, cy + 0.8 * rr), fill=fill)
    else:
        draw.polygon([(cx, cy - rr), (cx - rr, cy + 0.8 * rr), (cx + rr, cy + 0.8 * rr)], fill=fill)
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
