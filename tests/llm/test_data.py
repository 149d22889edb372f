"""Prompt data of the Qwen3-VL backend: the synthetic task, JSONL and datasets loading, validation, messages."""

from __future__ import annotations

import dataclasses
import json
import sys
from collections import deque
from pathlib import Path

import pytest
from npo_lab.llm.config import DataConfig
from npo_lab.llm.data import Example, build_messages, load_image, load_split
from npo_lab.llm.synthetic import PALETTE, fingerprint, make_synthetic, synthetic_splits, write_jsonl
from PIL import Image

pytestmark = pytest.mark.llm


def _pixels(im: Image.Image) -> bytes:
    assert im.mode == "RGB"
    return im.tobytes()


def _components(im: Image.Image, background: tuple[int, int, int], threshold: int = 60) -> int:
    """4-connected components of pixels that differ from the background by more than ``threshold``."""
    w, h = im.size
    px = im.load()
    fg = {
        (x, y) for x in range(w) for y in range(h) if max(abs(a - b) for a, b in zip(px[x, y], background)) > threshold
    }
    n = 0
    while fg:
        n += 1
        todo = deque([fg.pop()])
        while todo:
            x, y = todo.popleft()
            for q in ((x + 1, y), (x - 1, y), (x, y + 1), (x, y - 1)):
                if q in fg:
                    fg.remove(q)
                    todo.append(q)
    return n


def _write_png(path: Path, colour=(200, 10, 10), size=(8, 6), mode="RGB") -> Path:
    Image.new(mode, size, colour).save(path)
    return path


# ------------------------------------------------------------------------------------------------- synthetic


def test_synthetic_is_deterministic_and_seeded():
    a = make_synthetic("mixed", 12, seed=3, size=48)
    b = make_synthetic("mixed", 12, seed=3, size=48)
    c = make_synthetic("mixed", 12, seed=4, size=48)
    assert [(e.question, e.answer, _pixels(e.images[0])) for e in a] == [
        (e.question, e.answer, _pixels(e.images[0])) for e in b
    ]
    assert [e.columns for e in a] == [e.columns for e in b]
    assert {fingerprint(e) for e in a}.isdisjoint(fingerprint(e) for e in c)
    assert [e.index for e in a] == list(range(12))
    assert all(e.images[0].size == (48, 48) for e in a)
    # a longer set starts with the shorter one
    assert [fingerprint(e) for e in make_synthetic("mixed", 20, seed=3, size=48)[:12]] == [fingerprint(e) for e in a]


def test_synthetic_mixed_alternates_and_bad_task():
    ex = make_synthetic("mixed", 6, seed=0)
    assert [e.columns["task"] for e in ex] == ["count", "digits"] * 3
    assert [e.question for e in ex[:2]] == [
        "<image>How many shapes are in the image?",
        "<image>What is the sum of the digits in the image?",
    ]
    with pytest.raises(ValueError, match="synthetic task"):
        make_synthetic("colours", 2, seed=0)


def test_synthetic_splits_are_disjoint():
    cfg = DataConfig(synthetic_task="count", synthetic_train=96, synthetic_eval=48, synthetic_seed=5, image_size=32)
    train, held_out = synthetic_splits(cfg)
    assert (len(train), len(held_out)) == (96, 48)
    assert {fingerprint(e) for e in train}.isdisjoint(fingerprint(e) for e in held_out)
    assert {e.columns["id"].split("-")[1] for e in held_out} == {"eval"}
    # the exclusion really skips: excluding the first three examples of a stream leaves the rest, in order
    full = make_synthetic("count", 8, seed=5, size=32, stream="eval")
    rest = make_synthetic("count", 5, seed=5, size=32, stream="eval", exclude={fingerprint(e) for e in full[:3]})
    assert [fingerprint(e) for e in rest] == [fingerprint(e) for e in full[3:]]


def test_count_answers_match_the_drawing():
    ex = make_synthetic("count", 40, seed=1, size=64)
    answers = [int(e.answer) for e in ex]
    assert all(1 <= a <= 6 for a in answers) and len(set(answers)) >= 4
    for e in ex:
        shapes = e.columns["shapes"]
        assert int(e.answer) == len(shapes)
        assert len({s["color"] for s in shapes}) == len(shapes)  # distinct colours
        im = e.images[0]
        for s in shapes:  # each shape is visible at its centre, in its own colour (nothing drawn over it)
            centre = im.getpixel((int(s["center"][0]), int(s["center"][1])))
            assert max(abs(a - b) for a, b in zip(centre, PALETTE[s["color"]])) < 40, (e.index, s)
        background = im.getpixel((0, 0))  # shapes stay 1 px off the border
        assert _components(im, background) == len(shapes), e.index


def test_digit_answers_are_sums():
    ex = make_synthetic("digits", 30, seed=2, size=64)
    assert len({e.answer for e in ex}) >= 6
    for e in ex:
        digits = e.columns["digits"]
        assert len(digits) in (2, 3) and all(0 <= d <= 9 for d in digits)
        assert e.answer == str(sum(digits))
        im = e.images[0]
        background = im.getpixel((0, 0))
        n = len(digits)
        for i in range(n):  # every digit's cell has ink
            band = im.crop((i * 64 // n, 0, (i + 1) * 64 // n, 64))
            assert _components(band, background) >= 1, (e.index, i)


def test_load_split_synthetic_caps():
    cfg = DataConfig(synthetic_train=10, synthetic_eval=6, eval_rows=4, max_rows=7, image_size=32)
    train, stats = load_split(cfg, "train")
    held_out, eval_stats = load_split(cfg, "eval")
    assert stats == {"rows": 7, "skipped_rows": 0} and eval_stats == {"rows": 4, "skipped_rows": 0}
    assert {fingerprint(e) for e in train}.isdisjoint(fingerprint(e) for e in held_out)


# ------------------------------------------------------------------------------------------------ JSONL


def test_write_jsonl_round_trip(tmp_path):
    ex = make_synthetic("mixed", 9, seed=7, size=40)
    path = write_jsonl(ex, tmp_path / "set")
    row = json.loads(path.read_text().splitlines()[0])
    assert row["images"] == ["images/000000_0.png"] and row["problem"].startswith("<image>")
    assert (tmp_path / "set" / row["images"][0]).is_file()

    loaded, stats = load_split(DataConfig(dataset=str(path), eval_rows=0), "train")
    assert stats == {"rows": 9, "skipped_rows": 0}
    for a, b in zip(ex, loaded):
        assert (b.index, b.question, b.answer, b.columns) == (a.index, a.question, a.answer, a.columns)
        assert _pixels(b.images[0]) == _pixels(a.images[0])
        assert build_messages(a, "s") == build_messages(b, "s")

    # eval = the last eval_rows rows, left out of training; max_rows caps the rest
    cfg = DataConfig(dataset=str(path), eval_rows=3, max_rows=4)
    train, _ = load_split(cfg, "train")
    held_out, _ = load_split(cfg, "eval")
    assert [e.index for e in train] == [0, 1, 2, 3] and [e.index for e in held_out] == [6, 7, 8]
    assert [e.answer for e in held_out] == [e.answer for e in ex[6:]]
    train_all, _ = load_split(DataConfig(dataset=str(path), eval_rows=3), "train")
    assert len(train_all) == 6

    # a separate eval file: training keeps every row; eval is capped at eval_rows
    other = write_jsonl(make_synthetic("count", 5, seed=8, size=40), tmp_path / "other")
    cfg = DataConfig(dataset=str(path), eval_file=str(other), eval_rows=4)
    assert len(load_split(cfg, "train")[0]) == 9
    held_out, _ = load_split(cfg, "eval")
    assert len(held_out) == 4 and all(e.columns["id"].startswith("8-train-") for e in held_out)

    with pytest.raises(ValueError, match="held out"):
        load_split(DataConfig(dataset=str(path), eval_rows=9), "train")


def test_write_jsonl_adds_markers(tmp_path):
    im = Image.new("RGB", (5, 5), (1, 2, 3))
    ex = Example(0, "What colour?", "blue", (im, im), {"extra": [1, 2]})
    path = write_jsonl([ex], tmp_path)
    row = json.loads(path.read_text())
    assert row == {
        "images": ["images/000000_0.png", "images/000000_1.png"],
        "problem": "<image><image>What colour?",
        "answer": "blue",
        "extra": [1, 2],
    }


# ------------------------------------------------------------------------------------------------ datasets


def test_datasets_round_trip(tmp_path):
    datasets = pytest.importorskip("datasets")
    ex = make_synthetic("mixed", 10, seed=9, size=32)

    def to_ds(rows):
        features = datasets.Features(
            {
                "images": datasets.Sequence(datasets.Image()),
                "problem": datasets.Value("string"),
                "answer": datasets.Value("string"),
            }
        )
        data = {
            "images": [list(e.images) for e in rows],
            "problem": [e.question for e in rows],
            "answer": [e.answer for e in rows],
        }
        return datasets.Dataset.from_dict(data, features=features)

    folder = tmp_path / "dd"
    datasets.DatasetDict({"train": to_ds(ex[:7]), "test": to_ds(ex[7:])}).save_to_disk(str(folder))
    cfg = DataConfig(dataset=str(folder))
    train, stats = load_split(cfg, "train")
    held_out, _ = load_split(cfg, "eval")
    assert stats == {"rows": 7, "skipped_rows": 0} and len(held_out) == 3
    for a, b in zip(ex, train + held_out):
        assert (b.question, b.answer) == (a.question, a.answer)
        assert _pixels(b.images[0]) == _pixels(a.images[0])
        assert set(b.columns) == {"problem", "answer"}

    with pytest.raises(ValueError, match="no split 'validation'.*available: test, train"):
        load_split(DataConfig(dataset=str(folder), eval_split="validation"), "eval")

    # undecoded images ({'bytes', 'path'} dicts) and a single Dataset, split like a JSONL file
    single = tmp_path / "single"
    ds = to_ds(ex).cast_column("images", datasets.Sequence(datasets.Image(decode=False)))
    assert isinstance(ds[0]["images"][0], dict)
    ds.save_to_disk(str(single))
    cfg = DataConfig(dataset=str(single), eval_rows=4)
    train, _ = load_split(cfg, "train")
    held_out, _ = load_split(cfg, "eval")
    assert [e.index for e in train] == list(range(6)) and [e.index for e in held_out] == [6, 7, 8, 9]
    assert _pixels(held_out[-1].images[0]) == _pixels(ex[-1].images[0])


# ------------------------------------------------------------------------------------------------ messages


def test_build_messages():
    a, b = Image.new("RGB", (4, 4)), Image.new("RGB", (4, 4), (9, 9, 9))
    ex = Example(5, "Compare <image> with <image>.", "1", (a, b), {})
    assert build_messages(ex, "Be brief.") == [
        {"role": "system", "content": "Be brief."},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "Compare "},
                {"type": "image"},
                {"type": "text", "text": " with "},
                {"type": "image"},
                {"type": "text", "text": "."},
            ],
        },
    ]
    plain = Example(6, "Sum?", "1", (a, b), {})
    assert build_messages(plain, "") == [
        {"role": "user", "content": [{"type": "image"}, {"type": "image"}, {"type": "text", "text": "Sum?"}]}
    ]
    with pytest.raises(ValueError, match=r"row 7: .*2 '<image>' marker\(s\) but the row has 1 image"):
        build_messages(Example(7, "<image><image>?", "1", (a,), {}), "")


# ------------------------------------------------------------------------------------------------ validation


def _good(name: str = "ok.png") -> dict:
    return {"images": [name], "problem": "<image>How many?", "answer": 3}


BAD_ROWS = {
    "no image column": ({"problem": "q", "answer": "1"}, "missing image"),
    "empty image list": ({"images": [], "problem": "q", "answer": "1"}, "missing image"),
    "null image": ({"images": None, "problem": "q", "answer": "1"}, "missing image"),
    "missing answer": ({"images": ["ok.png"], "problem": "q"}, "missing answer \\(column 'answer'\\)"),
    "empty answer": ({"images": ["ok.png"], "problem": "q", "answer": " "}, "missing answer"),
    "null answer": ({"images": ["ok.png"], "problem": "q", "answer": None}, "missing answer"),
    "missing question": ({"images": ["ok.png"], "answer": "1"}, "missing question \\(column 'problem'\\)"),
    "empty question": ({"images": ["ok.png"], "problem": "", "answer": "1"}, "missing question"),
    "bad json": ('{"images": ["ok.png"], "problem": ', "invalid JSON \\(line 3\\)"),
    "not an object": ([1, 2], "not an object"),
    "image not found": ({"images": ["nope.png"], "problem": "q", "answer": "1"}, "not found: .*nope.png"),
    "not an image": ({"images": ["notes.txt"], "problem": "q", "answer": "1"}, "unreadable image .*notes.txt"),
    "marker mismatch": ({"images": ["ok.png"], "problem": "<image><image>q", "answer": "1"}, "2 '<image>' marker"),
}


def _jsonl(tmp_path: Path, rows: list) -> Path:
    _write_png(tmp_path / "ok.png")
    (tmp_path / "notes.txt").write_text("not a picture")
    lines = [r if isinstance(r, str) else json.dumps(r) for r in rows]
    path = tmp_path / "data.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.parametrize("kind", list(BAD_ROWS))
def test_malformed_row_names_its_index(tmp_path, kind):
    bad, match = BAD_ROWS[kind]
    path = _jsonl(tmp_path, [_good(), _good(), bad, _good()])
    with pytest.raises(ValueError, match=f"data.jsonl row 2: (.*){match}"):
        load_split(DataConfig(dataset=str(path), eval_rows=0), "train")


def test_bad_rows_skip_keeps_good_rows(tmp_path):
    rows = [_good(), BAD_ROWS["missing answer"][0], _good(), BAD_ROWS["bad json"][0], BAD_ROWS["not an image"][0]]
    path = _jsonl(tmp_path, rows + [_good()])
    cfg = DataConfig(dataset=str(path), eval_rows=0, bad_rows="skip")
    with pytest.warns(UserWarning, match="skipped 3 malformed row"):
        examples, stats = load_split(cfg, "train")
    assert stats == {"rows": 3, "skipped_rows": 3}
    assert [e.index for e in examples] == [0, 2, 5]
    assert examples[0].answer == "3" and examples[0].columns == {"problem": "<image>How many?", "answer": 3}
    assert _pixels(examples[0].images[0]) == _pixels(Image.new("RGB", (8, 6), (200, 10, 10)))

    only_bad = _jsonl(tmp_path, [BAD_ROWS["missing answer"][0]])
    with pytest.warns(UserWarning), pytest.raises(ValueError, match="train split is empty after skipping 1"):
        load_split(DataConfig(dataset=str(only_bad), eval_rows=0, bad_rows="skip"), "train")


def test_blank_lines_and_absolute_paths(tmp_path):
    png = _write_png(tmp_path / "abs.png", colour=(1, 2, 3))
    path = tmp_path / "d.jsonl"
    row = {"images": str(png.resolve()), "problem": "q", "answer": 2.5}
    path.write_text("\n" + json.dumps(row) + "\n\n" + json.dumps(row) + "\n")
    examples, _ = load_split(DataConfig(dataset=str(path), eval_rows=1), "train")
    assert len(examples) == 1 and examples[0].answer == "2.5" and examples[0].images[0].getpixel((0, 0)) == (1, 2, 3)


def test_load_image_items(tmp_path, monkeypatch):
    rgba = Image.new("RGBA", (4, 4), (255, 0, 0, 0))
    rgba.putpixel((0, 0), (0, 0, 255, 255))
    path = tmp_path / "a.png"
    rgba.save(path)
    for item in (str(path), {"bytes": path.read_bytes(), "path": None}, {"bytes": None, "path": "a.png"}, rgba):
        im = load_image(item, tmp_path)
        assert im.mode == "RGB" and im.getpixel((0, 0)) == (0, 0, 255) and im.getpixel((1, 1)) == (255, 255, 255)
    with pytest.raises(ValueError, match="unsupported image item"):
        load_image(42, tmp_path)
    # PIL's decompression-bomb limit stays on
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 4)
    with pytest.raises(ValueError, match="unreadable image"):
        load_image(str(_write_png(tmp_path / "big.png", size=(16, 16))))


def test_source_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.jsonl"):
        load_split(DataConfig(dataset=str(tmp_path / "missing.jsonl")), "train")
    (tmp_path / "x.csv").write_text("a,b\n")
    with pytest.raises(ValueError, match="unsupported dataset file"):
        load_split(DataConfig(dataset=str(tmp_path / "x.csv")), "train")
    with pytest.raises(ValueError, match="eval_file is for JSONL"):
        load_split(DataConfig(eval_file="e.jsonl"), "eval")
    assert load_split(DataConfig(eval_rows=0, synthetic_eval=2), "eval") == ([], {"rows": 0, "skipped_rows": 0})


def test_hub_dataset_is_loaded_by_split(tmp_path, monkeypatch):
    datasets = pytest.importorskip("datasets")
    ex = make_synthetic("count", 6, seed=1, size=24)
    ds = datasets.Dataset.from_dict(
        {"image": [e.images[0] for e in ex], "question": [e.question for e in ex], "solution": [e.answer for e in ex]},
        features=datasets.Features(
            {"image": datasets.Image(), "question": datasets.Value("string"), "solution": datasets.Value("string")}
        ),
    )
    calls = []

    def fake_load_dataset(name, split):
        calls.append((name, split))
        return ds

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    cfg = DataConfig(
        dataset="someone/images", image_key="image", question_key="question", answer_key="solution", max_rows=4
    )
    train, stats = load_split(cfg, "train")
    held_out, _ = load_split(dataclasses.replace(cfg, eval_rows=2, eval_split="val"), "eval")
    assert calls == [("someone/images", "train"), ("someone/images", "val")]
    assert stats["rows"] == 4 and len(held_out) == 2
    assert [e.answer for e in train] == [e.answer for e in ex[:4]]
    assert _pixels(train[3].images[0]) == _pixels(ex[3].images[0])

    monkeypatch.setitem(sys.modules, "datasets", None)  # as if the [llm] extra were missing
    with pytest.raises(ImportError, match=r"pip install 'npo-lab\[llm\]'"):
        load_split(cfg, "train")


def test_color_task_answer_is_the_number_of_the_drawn_colour():
    from npo_lab.llm.synthetic import COLOR_CHOICES, COLOR_QUESTION

    exs = make_synthetic("color", 30, seed=3, size=64)
    assert {ex.answer for ex in exs} == {str(i) for i in range(1, len(COLOR_CHOICES) + 1)}  # every choice occurs
    for ex in exs:
        assert ex.question == COLOR_QUESTION
        colour = COLOR_CHOICES[int(ex.answer) - 1]
        assert ex.columns["color"] == colour
        centre = ex.images[0].getpixel((32, 36))  # inside the shape whatever its kind
        assert max(abs(a - b) for a, b in zip(centre, PALETTE[colour])) < 10, (ex.answer, centre)
    again = make_synthetic("color", 30, seed=3, size=64)
    assert [e.images[0].tobytes() for e in again] == [e.images[0].tobytes() for e in exs]


def test_float_answers_are_written_positionally_and_non_files_are_refused(tmp_path):
    import os

    _write_png(tmp_path / "ok.png")
    rows = [
        {"images": ["ok.png"], "problem": "<image>q", "answer": 1e20},
        {"images": ["ok.png"], "problem": "<image>q", "answer": 3.0},
        {"images": ["ok.png"], "problem": "<image>q", "answer": 1.5e-7},
    ]
    (tmp_path / "d.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    train, _ = load_split(DataConfig(dataset=str(tmp_path / "d.jsonl"), eval_rows=0), "train")
    assert [ex.answer for ex in train] == ["100000000000000000000", "3", "0.00000015"]  # not 1e+20 (= 1*E + 20)
    os.mkfifo(tmp_path / "pipe.png")  # opening a FIFO would block forever
    with pytest.raises(ValueError, match="not a regular file"):
        load_image("pipe.png", tmp_path)


# ------------------------------------------------------------------------------------------------ reason task


def test_reason_task_answers_follow_from_what_is_drawn():
    from npo_lab.llm.synthetic import COLOR_CHOICES, COLOR_LEGEND, REASON_KINDS, REASON_QUESTIONS

    exs = make_synthetic("reason", 160, seed=4, size=64)
    assert [ex.columns["kind"] for ex in exs[:8]] == list(REASON_KINDS) * 2  # the kinds in turn
    phrasings = set()
    for ex in exs:
        kind, m, cols = ex.columns["kind"], ex.columns["addend"], ex.columns
        text = ex.question.removeprefix("<image>")
        (which,) = [i for i, t in enumerate(REASON_QUESTIONS[kind]) if text == t.format(legend=COLOR_LEGEND, m=m)]
        phrasings.add((kind, which))
        if kind == "color_add":
            (shape,) = cols["shapes"]
            assert int(ex.answer) == COLOR_CHOICES.index(shape["color"]) + 1 + m
            centre = ex.images[0].getpixel((32, 36))
            assert max(abs(a - b) for a, b in zip(centre, PALETTE[shape["color"]])) < 10
        elif kind == "larger_color":
            big, small = cols["shapes"]  # the larger shape first
            assert big["radius"] > 1.6 * small["radius"] and m is None
            assert ex.answer == str(COLOR_CHOICES.index(big["color"]) + 1)
            counts = {c: 0 for c in (big["color"], small["color"])}
            data = ex.images[0].tobytes()
            for px in (data[i : i + 3] for i in range(0, len(data), 3)):
                for c in counts:
                    counts[c] += max(abs(a - b) for a, b in zip(px, PALETTE[c])) < 30
            assert counts[big["color"]] > 1.5 * counts[small["color"]], counts  # the larger one covers more pixels
        elif kind == "count_add":
            k = len(cols["shapes"])
            assert 1 <= k <= 4 and int(ex.answer) == k + m
            assert len({s["quadrant"] for s in cols["shapes"]}) == k  # at most one shape per quadrant
            assert _components(ex.images[0], ex.images[0].getpixel((0, 0))) == k
        else:
            a, b = cols["digits"]
            assert a != b and ex.answer == str(max(a, b)) and m is None
    assert phrasings == {(k, i) for k in REASON_KINDS for i in range(len(REASON_QUESTIONS[k]))}  # every phrasing
    again = make_synthetic("reason", 160, seed=4, size=64)
    assert [e.images[0].tobytes() for e in again] == [e.images[0].tobytes() for e in exs]


def test_reason_kinds_and_addend_are_config_fields():
    cfg = DataConfig(synthetic_task="reason", reason_kinds="count_add, compare", reason_max_addend=2)
    train, held_out = synthetic_splits(cfg)
    assert {ex.columns["kind"] for ex in train} == {"count_add", "compare"}
    assert {ex.columns["addend"] for ex in train if ex.columns["kind"] == "count_add"} == {1, 2}
    assert not {fingerprint(e) for e in train} & {fingerprint(e) for e in held_out}
    for bad in ("", "count_add,count_add", "count,compare"):
        with pytest.raises(ValueError, match="llm.data.reason_kinds"):
            DataConfig(reason_kinds=bad)
    with pytest.raises(ValueError, match="reason kinds"):
        make_synthetic("reason", 1, seed=0, kinds=("spin",))


def test_reason_answers_are_graded_exactly():
    """The verifier accepts the answer written several ways and refuses every other number."""
    from npo_lab.llm.config import RewardConfig
    from npo_lab.llm.rewards import RewardSet

    exs = make_synthetic("reason", 8, seed=5)
    rows = []
    for ex in exs:
        n = int(ex.answer)
        rows += [(f"\\boxed{{{n}}}", ex.answer, 1.0), (f"so it is \\boxed{{{n}.0}}", ex.answer, 1.0)]
        rows += [(f"\\boxed{{{n + d}}}", ex.answer, 0.0) for d in (-1, 1, 10)]
    rewards = RewardSet(RewardConfig())
    try:
        totals, _ = rewards.score([""] * len(rows), [c for c, _, _ in rows], [a for _, a, _ in rows],
                                  [[]] * len(rows), [{}] * len(rows))  # fmt: skip
    finally:
        rewards.close()
    assert totals == [want for _, _, want in rows]


# ------------------------------------------------------------------------------------------------ MMFineReason


def test_mmfinereason_rows_load_from_a_local_copy(tmp_path):
    """Hand-written rows in MMFineReason's schema (its dataset card: one ``image``, ``question`` with an ``<image>``
    marker, the standardised ``answer``, and metadata columns), as parquet shards in a folder laid out like the hub
    copy (data/train-*.parquet), loaded with the column mapping of docs/llm.md and slices of its only split."""
    datasets = pytest.importorskip("datasets")
    ex = make_synthetic("reason", 5, seed=6, size=32)
    answers = ["C", "12", "\\frac{1}{2}", "3\\sqrt{2}", "B"]
    rows = {
        "source": ["MMR1", "Euclid30K", "ViRL39K", "MMK12", "GameQA-140K"],
        "id": list(range(5)),
        "original_question": [f"q{i}" for i in range(5)],
        "original_answer": answers,
        "image": [e.images[0] for e in ex],
        "question": [f"<image>Question {i}: answer after careful reasoning." for i in range(5)],
        "answer": answers,
        "qwen3vl_235b_instruct_caption": ["a caption"] * 5,
        "qwen3vl_235b_thinking_response": ["<think>...</think><answer>C</answer>"] * 5,
        "qwen3vl_4b_pass_rate": [0.0] * 5,
        "is_consistent": [True] * 5,
        "consistency_analysis": ["consistent"] * 5,
    }
    features = datasets.Features(
        {k: datasets.Image() if k == "image" else datasets.Value(_arrow_type(v[0])) for k, v in rows.items()}
    )
    (tmp_path / "data").mkdir()
    datasets.Dataset.from_dict(rows, features=features).to_parquet(
        str(tmp_path / "data" / "train-00000-of-00001.parquet")
    )
    cfg = DataConfig(
        dataset=str(tmp_path),
        image_key="image",
        question_key="question",
        answer_key="answer",
        split="train[:-2]",
        eval_split="train[-2:]",
        eval_rows=2,
    )
    train, stats = load_split(cfg, "train")
    held_out, _ = load_split(cfg, "eval")
    assert stats == {"rows": 3, "skipped_rows": 0}
    assert [e.answer for e in train + held_out] == answers
    assert _pixels(held_out[0].images[0]) == _pixels(ex[3].images[0].convert("RGB"))
    assert build_messages(train[0], "")[0]["content"][0] == {"type": "image"}
    assert train[1].columns["source"] == "Euclid30K" and "image" not in train[1].columns  # metadata for rewards
    assert train[0].columns["qwen3vl_4b_pass_rate"] == 0.0


def _arrow_type(value: object) -> str:
    return {bool: "bool", int: "int64", float: "float64", str: "string"}[type(value)]
