"""Prompt rows for the Qwen3-VL backend: loading, validation and chat messages.

A row has a question (``cfg.question_key``; each ``<image>`` marker in it is where one image goes), a
ground-truth answer (``cfg.answer_key``) and one or more images (``cfg.image_key``): the geometry3k schema
of verl and EasyR1. Sources (``cfg.dataset``):

* ``synthetic``: the PIL-drawn tasks of :mod:`npo_lab.llm.synthetic` (offline, deterministic).
* a ``.jsonl`` file: one JSON object per line (blank lines are not rows); image paths are relative to the
  file's folder. The eval split is ``cfg.eval_file`` when set, else the LAST ``cfg.eval_rows`` rows of the
  file, which are then left out of the training split.
* a folder written by ``datasets``' ``save_to_disk``: a DatasetDict gives ``cfg.split`` / ``cfg.eval_split``;
  a single Dataset is split like a JSONL file (its last ``cfg.eval_rows`` rows are the eval split).
* any other folder (a local copy of a hub dataset: its parquet shards, e.g. ``data/train-*.parquet``) and
  anything else (a Hugging Face dataset id) are loaded with ``datasets.load_dataset`` (a hub id may be
  downloaded) and split with ``cfg.split`` / ``cfg.eval_split``, which may be slices of one split
  (``train[:-512]`` / ``train[-512:]``) for a dataset that has no held-out split.

MMFineReason (the NPO paper's training data, MMFineReason-123K) has one image per row in ``image``, the
question with its ``<image>`` marker in ``question`` and the standardised answer in ``answer`` (its dataset
card; docs/llm.md, "Data"): ``image_key="image"``, ``question_key="question"``, ``answer_key="answer"``.

The train split keeps its first ``cfg.max_rows`` rows when that is > 0 and the eval split its first
``cfg.eval_rows`` rows (caps apply to rows read, before malformed ones are dropped). A malformed row raises a
``ValueError`` naming the source and the row's index (0-based), or with ``cfg.bad_rows == "skip"`` is dropped
and counted in the ``skipped_rows`` statistic.

``datasets`` is imported only when a folder or hub dataset is loaded; this module never imports transformers.
"""

from __future__ import annotations

import io
import json
import math
import os
import warnings
from collections.abc import Callable, Iterable, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal

from npo_lab.llm.config import DataConfig
from npo_lab.llm.example import IMAGE_MARKER, Example
from npo_lab.llm.synthetic import synthetic_splits
from PIL import Image, UnidentifiedImageError

_INSTALL_HINT = "pip install 'npo-lab[llm]'"


class RowError(ValueError):
    """A malformed row; the message names the source and the row's index."""


def build_messages(ex: Example, system_prompt: str) -> list[dict]:
    """Chat messages of one row: an optional system message, then the user's images and text.

    Each ``<image>`` marker in the question becomes an image part, in order; a question without markers gets
    all its image parts first. Empty text pieces are dropped.

    Raises:
        ValueError: the question has markers, but not one per image.

    >>> ex = Example(0, "<image>How many?", "3", (Image.new("RGB", (8, 8)),), {})
    >>> build_messages(ex, "")
    [{'role': 'user', 'content': [{'type': 'image'}, {'type': 'text', 'text': 'How many?'}]}]
    """
    n_markers = ex.question.count(IMAGE_MARKER)
    if n_markers and n_markers != len(ex.images):
        raise ValueError(
            f"row {ex.index}: the question has {n_markers} {IMAGE_MARKER!r} marker(s) but the row has "
            f"{len(ex.images)} image(s)"
        )
    content: list[dict] = []
    if n_markers:
        for i, piece in enumerate(ex.question.split(IMAGE_MARKER)):
            if i:
                content.append({"type": "image"})
            if piece:
                content.append({"type": "text", "text": piece})
    else:
        content = [{"type": "image"} for _ in ex.images]
        if ex.question:
            content.append({"type": "text", "text": ex.question})
    messages: list[dict] = []
    if system_prompt:
        messages.append({"role": "system", "content": system_prompt})
    messages.append({"role": "user", "content": content})
    return messages


def load_split(cfg: DataConfig, which: Literal["train", "eval"]) -> tuple[list[Example], dict[str, int]]:
    """The train or eval rows of ``cfg.dataset`` (see the module docstring for sources and caps).

    Returns:
        (examples, {"rows": rows kept, "skipped_rows": malformed rows dropped}).

    Raises:
        ValueError: a malformed row (bad_rows="error"), a split left empty, a missing split.
        FileNotFoundError: a missing JSONL file.
        ImportError: a folder or hub dataset without ``datasets`` installed.
    """
    if which not in ("train", "eval"):
        raise ValueError(f"which must be 'train' or 'eval', got {which!r}")
    is_jsonl = cfg.dataset.lower().endswith(".jsonl")
    if cfg.eval_file and not is_jsonl:
        raise ValueError(f"llm.data.eval_file is for JSONL datasets only; dataset is {cfg.dataset!r}")
    if which == "eval" and cfg.eval_rows == 0:
        return [], {"rows": 0, "skipped_rows": 0}

    if cfg.dataset == "synthetic":
        train, held_out = synthetic_splits(cfg)
        examples = held_out[: cfg.eval_rows] if which == "eval" else train[: cfg.max_rows or None]
        if not examples:
            raise ValueError(f"synthetic: the {which} split is empty (llm.data.synthetic_train/synthetic_eval)")
        return examples, {"rows": len(examples), "skipped_rows": 0}

    if is_jsonl:
        return _load_jsonl(cfg, which)
    path = Path(cfg.dataset)
    if path.is_dir() and _saved_to_disk(path):
        return _load_disk(cfg, which, path)
    if path.is_file():
        raise ValueError(
            f"{cfg.dataset}: unsupported dataset file (use a .jsonl file, a save_to_disk folder or a hub id)"
        )
    return _load_hub(cfg, which)


# ----------------------------------------------------------------------------------------------- sources


def _load_jsonl(cfg: DataConfig, which: str) -> tuple[list[Example], dict[str, int]]:
    if which == "eval" and cfg.eval_file:
        rows = _jsonl_rows(Path(cfg.eval_file))
        return _collect(cfg, which, cfg.eval_file, rows[: cfg.eval_rows], Path(cfg.eval_file).parent, _parse_json)
    rows = _jsonl_rows(Path(cfg.dataset))
    if cfg.eval_file:  # the training file is all training rows
        rows = rows[: cfg.max_rows or None]
    else:
        rows = _holdout(cfg, which, cfg.dataset, rows, len(rows))
    return _collect(cfg, which, cfg.dataset, rows, Path(cfg.dataset).parent, _parse_json)


def _jsonl_rows(path: Path) -> list[tuple[int, Any]]:
    """(row index, (line number, text)) of each non-blank line; row indices count non-blank lines."""
    if not path.is_file():
        raise FileNotFoundError(f"JSONL dataset not found: {path}")
    with open(path, encoding="utf-8") as f:
        lines = f.read().split("\n")  # not splitlines(): JSON strings may hold raw U+2028 and friends
    texts = [(n, line.rstrip("\r")) for n, line in enumerate(lines, start=1) if line.strip()]
    return list(enumerate(texts))


def _parse_json(raw: tuple[int, str]) -> Any:
    line_no, text = raw
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise RowError(f"invalid JSON (line {line_no}): {e}") from None


def _holdout(cfg: DataConfig, which: str, where: str, rows: Any, n: int) -> Any:
    """Train: all but the last ``eval_rows`` rows (then capped at max_rows); eval: the last ``eval_rows``."""
    n_train = max(n - cfg.eval_rows, 0)
    if which == "eval":
        return rows[n_train:]
    if n_train == 0 and n > 0:
        raise ValueError(
            f"{where}: all {n} rows are held out for evaluation (llm.data.eval_rows={cfg.eval_rows}); "
            "lower eval_rows or give a separate eval set"
        )
    return rows[: min(n_train, cfg.max_rows) if cfg.max_rows else n_train]


def _datasets() -> Any:
    try:
        import datasets
    except ImportError as e:
        raise ImportError(f"loading a folder or hub dataset needs the datasets package: {_INSTALL_HINT}") from e
    return datasets


def _hf_rows(ds: Any, start: int, stop: int) -> Iterator[tuple[int, Any]]:
    if stop > start:
        yield from enumerate(ds.select(range(start, stop)), start=start)


def _saved_to_disk(path: Path) -> bool:
    """Whether ``path`` is a folder written by ``save_to_disk`` (a Dataset or a DatasetDict), the files
    ``datasets.load_from_disk`` looks for; any other folder is a dataset for ``load_dataset``."""
    return (path / "dataset_dict.json").is_file() or (path / "state.json").is_file()


def _load_disk(cfg: DataConfig, which: str, path: Path) -> tuple[list[Example], dict[str, int]]:
    datasets = _datasets()
    obj = datasets.load_from_disk(str(path))
    if isinstance(obj, datasets.DatasetDict):
        split = cfg.eval_split if which == "eval" else cfg.split
        if split not in obj:
            key = "eval_split" if which == "eval" else "split"
            raise ValueError(
                f"{path}: no split {split!r} (llm.data.{key}); available: {', '.join(sorted(obj)) or 'none'}"
            )
        ds = obj[split]
        stop = min(len(ds), cfg.eval_rows if which == "eval" else cfg.max_rows or len(ds))
        return _collect(cfg, which, f"{path}[{split}]", _hf_rows(ds, 0, stop), path, None)
    n = len(obj)
    n_train = max(n - cfg.eval_rows, 0)
    if which == "eval":
        start, stop = n_train, n
    else:
        _holdout(cfg, which, str(path), [], n)  # raises when nothing is left for training
        start, stop = 0, min(n_train, cfg.max_rows) if cfg.max_rows else n_train
    return _collect(cfg, which, str(path), _hf_rows(obj, start, stop), path, None)


def _load_hub(cfg: DataConfig, which: str) -> tuple[list[Example], dict[str, int]]:
    datasets = _datasets()
    split = cfg.eval_split if which == "eval" else cfg.split
    try:
        ds = datasets.load_dataset(cfg.dataset, split=split)
    except ValueError as e:
        raise ValueError(f"{cfg.dataset}: cannot load split {split!r}: {e}") from e
    stop = min(len(ds), cfg.eval_rows if which == "eval" else cfg.max_rows or len(ds))
    base = Path(cfg.dataset) if Path(cfg.dataset).is_dir() else Path.cwd()  # relative image paths of a folder
    return _collect(cfg, which, f"{cfg.dataset}[{split}]", _hf_rows(ds, 0, stop), base, None)


# ------------------------------------------------------------------------------------------------- rows


def _collect(
    cfg: DataConfig,
    which: str,
    where: str,
    rows: Iterable[tuple[int, Any]],
    base_dir: Path,
    parse: Callable[[Any], Any] | None,
) -> tuple[list[Example], dict[str, int]]:
    """Validate rows into Examples, raising on (or counting and dropping) malformed ones."""
    examples: list[Example] = []
    skipped = 0
    first_error = ""
    for index, raw in rows:
        try:
            row = parse(raw) if parse is not None else raw
            examples.append(_example(cfg, row, index, base_dir))
        except RowError as e:
            msg = f"{where} row {index}: {e}"
            if cfg.bad_rows == "error":
                raise RowError(msg) from None
            skipped += 1
            first_error = first_error or msg
    if skipped:
        msg = f"{where}: skipped {skipped} malformed row(s) (bad_rows='skip'); first: {first_error}"
        warnings.warn(msg, stacklevel=2)
    if not examples:
        why = f" after skipping {skipped} malformed row(s)" if skipped else ""
        raise ValueError(f"{where}: the {which} split is empty{why}")
    return examples, {"rows": len(examples), "skipped_rows": skipped}


def _example(cfg: DataConfig, row: Any, index: int, base_dir: Path) -> Example:
    if not isinstance(row, dict):
        raise RowError(f"the row is not an object (got {type(row).__name__})")
    question = row.get(cfg.question_key)
    if not isinstance(question, str) or not question.strip():
        got = "" if question is None or question == "" else f" (got {type(question).__name__})"
        raise RowError(f"missing question (column {cfg.question_key!r}){got}")
    answer = row.get(cfg.answer_key)
    if answer is None or (isinstance(answer, str) and not answer.strip()):
        raise RowError(f"missing answer (column {cfg.answer_key!r})")
    if isinstance(answer, bool) or not isinstance(answer, str | int | float):
        raise RowError(f"answer must be text or a number (column {cfg.answer_key!r}), got {type(answer).__name__}")
    if cfg.image_key not in row:
        raise RowError(f"missing image (no column {cfg.image_key!r})")
    items = row[cfg.image_key]
    if not isinstance(items, list | tuple):
        items = [items]
    if not items or any(item is None for item in items):
        raise RowError(f"missing image (column {cfg.image_key!r} is {row[cfg.image_key]!r})")
    images = tuple(load_image(item, base_dir) for item in items)
    n_markers = question.count(IMAGE_MARKER)
    if n_markers and n_markers != len(images):
        raise RowError(
            f"the question has {n_markers} {IMAGE_MARKER!r} marker(s) but the row has {len(images)} image(s)"
        )
    columns = {k: v for k, v in row.items() if k != cfg.image_key}
    return Example(index=index, question=question, answer=_answer_text(answer), images=images, columns=columns)


def _answer_text(answer: str | int | float) -> str:
    """The answer as math-verify should read it: floats in positional notation (1e20 would read as 1*E + 20)."""
    if isinstance(answer, float):
        if not math.isfinite(answer):
            raise RowError(f"answer must be a finite number, got {answer!r}")
        return format(Decimal(repr(answer)).normalize(), "f")
    return str(answer)


def load_image(item: Any, base_dir: str | os.PathLike = ".") -> Image.Image:
    """A fully loaded RGB image from a path, a ``{"bytes", "path"}`` dict or a PIL image.

    Relative paths are resolved against ``base_dir``. Transparent pixels are composited onto white (as
    qwen-vl-utils does). PIL's decompression-bomb limit applies.

    Raises:
        RowError: an unsupported item, a missing file, or data that is not a readable image.
    """
    if isinstance(item, Image.Image):
        return _to_rgb(item)
    if isinstance(item, dict) and item.get("bytes") is not None:
        data, name = item["bytes"], f"image bytes ({item.get('path') or 'no path'})"
        if not isinstance(data, bytes | bytearray):
            raise RowError(f"image 'bytes' must be bytes, got {type(data).__name__}")
        src: Any = io.BytesIO(data)
    elif isinstance(item, dict) and isinstance(item.get("path"), str) and item["path"]:
        src = name = _resolve(item["path"], base_dir)
    elif isinstance(item, str | os.PathLike) and str(item):
        src = name = _resolve(item, base_dir)
    else:
        raise RowError(f"unsupported image item: {_short(item)}")
    if isinstance(src, str) and Path(src).exists() and not Path(src).is_file():  # a FIFO or device would block
        raise RowError(f"image path is not a regular file: {name}")
    try:
        with Image.open(src) as im:
            im.load()
            return _to_rgb(im)
    except FileNotFoundError:
        raise RowError(f"image file not found: {name}") from None
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as e:
        raise RowError(f"unreadable image {name}: {e}") from None


def _resolve(path: str | os.PathLike, base_dir: str | os.PathLike) -> str:
    p = Path(path).expanduser()
    return str(p if p.is_absolute() else Path(base_dir) / p)


def _to_rgb(im: Image.Image) -> Image.Image:
    if im.mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")
    if im.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = im.convert("RGBA")
        out = Image.new("RGB", rgba.size, (255, 255, 255))
        out.paste(rgba, mask=rgba.getchannel("A"))
        return out
    out = im.convert("RGB")
    if out is im:  # never hand back an image that shares a file handle with the source
        out = im.copy()
    out.load()
    return out


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
