"""Property-based fuzzing of every verifier that reads model output (hypothesis, at least 10,000 outputs each).

A completion is untrusted text written by a policy that is optimised to find whatever the grader rewards. For each
verifier: no crash, no hang (a pure scan returns; math-verify items over the time limit are killed and score 0),
every score is 0 or 1, and a wrong answer is never graded correct. Generated inputs include huge numbers, deep
LaTeX nesting, unicode, control characters and megabyte strings. Runs are derandomised, so CI sees the same inputs
every time; the counts are asserted, so the 10,000 of docs/reliability.md cannot silently shrink.
"""

from __future__ import annotations

import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from npo_lab.tasks.arithmetic import END, extract_answer, score

N_OUTPUTS = 10_000
FUZZ = settings(
    max_examples=N_OUTPUTS,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=list(HealthCheck),
)


def repeated(piece: st.SearchStrategy[str], max_times: int) -> st.SearchStrategy[str]:
    """A piece repeated up to ``max_times`` (megabyte strings without generating every character)."""
    return st.builds(lambda s, n: s * n, piece, st.integers(1, max_times))


def nested(opener: str, closer: str, max_depth: int) -> st.SearchStrategy[str]:
    """``opener`` x depth + core + ``closer`` x depth' (deep, possibly unbalanced nesting)."""
    return st.builds(
        lambda d, core, extra: opener * d + core + closer * max(0, d + extra),
        st.integers(0, max_depth),
        st.text(max_size=8),
        st.integers(-3, 3),
    )


HUGE_NUMBER = st.integers(min_value=-(10**400), max_value=10**400).map(str)
CONTROL = st.text(st.characters(min_codepoint=0, max_codepoint=31), max_size=40)
UNICODE = st.text(max_size=200)  # every code point hypothesis draws: digits of other scripts, RTL marks, emoji, ...
LATEX = st.sampled_from(
    ["\\boxed{", "\\fbox{", "}", "{", "\\frac{", "\\sqrt{", "^{", "_{", "\\", "$", "\\$", "\\left(", "\\right)",
     "\\text{", "\\infty", "e^{i\\pi}", "9^{9^{9^{9}}}", "\\begin{pmatrix}", "&", "\\\\", "%", "\\{", "\\}", "=",
     "x", "1", "0.5", "-", "+", "*", "/", "!", ",", " ", "\n", "\t", "\x00"]
)  # fmt: skip
LATEX_SOUP = st.lists(LATEX, max_size=60).map("".join)


def hostile_text(alphabet_text: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    """A mix of the families above, concatenated in any order."""
    family = st.one_of(
        alphabet_text,
        UNICODE,
        CONTROL,
        HUGE_NUMBER,
        LATEX_SOUP,
        nested("\\boxed{", "}", 2000),
        nested("{", "}", 20_000),
        nested("\\frac{1}{", "}", 500),
        repeated(st.sampled_from(["9", "{", "\\boxed{", "$", "a", "\x00", "é", "0.", "\\frac{"]), 250_000),
    )
    return st.lists(family, min_size=1, max_size=4).map("".join)


# ---- the arithmetic task's verifier (npo_lab.tasks.arithmetic.score) ------------------------------------------
ARITH_ALPHABET = st.text("0123456789+*%=:$.-", max_size=40)  # the policy's own vocabulary, and a minus sign


def test_arithmetic_verifier_fuzzed():
    seen = {"n": 0, "correct": 0}

    @FUZZ
    @given(hostile_text(ARITH_ALPHABET), st.integers(0, 10**12), st.booleans())
    def check(completion: str, answer: int, reverse: bool) -> None:
        seen["n"] += 1
        s = score(completion, answer, reverse)
        assert s in (0.0, 1.0)
        got = extract_answer(completion, reverse)
        # graded correct exactly when the final field (after the last ':' before the end token) is the answer
        assert (s == 1.0) == (got == answer)
        if s == 1.0:
            seen["correct"] += 1
            body = completion[: completion.index(END)].rsplit(":", 1)[-1]
            assert body.isdigit() and body.isascii() and int(body[::-1] if reverse else body) == answer

    check()
    print(f"arithmetic verifier: {seen['n']} hostile outputs, {seen['correct']} of them graded correct (checked)")
    assert seen["n"] >= N_OUTPUTS


def test_arithmetic_near_misses_fuzzed():
    """Every answer written wrong by one digit edit, a sign, a swap, a wrong direction or a bad character is 0."""
    seen = {"n": 0}

    def near_misses(answer: int, reverse: bool, pos: int, digit: str) -> list[str]:
        text = str(answer)[::-1] if reverse else str(answer)
        i = pos % len(text)
        edits = {
            text[:i] + digit + text[i + 1 :],  # one digit replaced
            text[:i] + digit + text[i:],  # one digit inserted (a leading zero of the reversed answer is fine)
            text[:i] + text[i + 1 :],  # one digit dropped
            "-" + text,
            text[:i] + " " + text[i:],
            text[:i] + "\x00" + text[i:],
            text[:i] + "٣" + text[i + 1 :],  # a non-ASCII digit
        }
        if len(set(text)) > 1:
            edits.add(text[::-1])  # the other direction
        out = []
        for e in edits:
            if e.isascii() and e.isdigit() and int(e[::-1] if reverse else e) == answer:
                continue  # the edit happens to write the same number (e.g. an inserted zero at the far end)
            out.append(e + END)
            out.append("12+34:" + e + END)  # with a scratchpad before it
        return out

    @settings(FUZZ, max_examples=N_OUTPUTS // 10)  # about 14 near misses each
    @given(st.integers(0, 10**15), st.booleans(), st.integers(0, 64), st.sampled_from("0123456789"))
    def check(answer: int, reverse: bool, pos: int, digit: str) -> None:
        for c in near_misses(answer, reverse, pos, digit):
            seen["n"] += 1
            assert score(c, answer, reverse) == 0.0, (c, answer, reverse)
        right = (str(answer)[::-1] if reverse else str(answer)) + END
        assert score(right, answer, reverse) == 1.0

    check()
    print(f"arithmetic verifier: {seen['n']} near misses")
    assert seen["n"] >= N_OUTPUTS


# ---- the Qwen3-VL backend's text scans and math-verify grading --------------------------------------------------
rewards = pytest.importorskip("npo_lab.llm.rewards")


def _balanced(s: str) -> bool:
    depth, i = 0, 0
    while i < len(s):
        if s[i] == "\\":
            i += 2
            continue
        depth += {"{": 1, "}": -1}.get(s[i], 0)
        if depth < 0:
            return False
        i += 1
    return depth == 0


def test_extract_boxed_and_format_reward_fuzzed():
    seen = {"n": 0}

    @FUZZ
    @given(hostile_text(LATEX_SOUP), st.booleans())
    def check(text: str, think: bool) -> None:
        seen["n"] += 1
        got = rewards.extract_boxed(text)
        if got is not None:
            assert got in text and _balanced(got)
            assert "\\boxed{" + got + "}" in text or "\\fbox{" + got + "}" in text
        assert rewards.format_reward(text, think) in (0.0, 1.0)
        if rewards.format_reward(text, think) == 1.0:
            assert got is not None and got.strip()

    check()
    print(f"extract_boxed + format_reward: {seen['n']} hostile outputs")
    assert seen["n"] >= N_OUTPUTS


@pytest.fixture(scope="module")
def verifier():
    pytest.importorskip("math_verify")
    v = rewards.MathVerifier(timeout_s=1.0, max_chars=4000, workers=2)
    yield v
    v.close()


GOLD = st.one_of(
    st.integers(-(10**6), 10**6).map(str),
    st.sampled_from(["\\frac{1}{2}", "0.5", "\\sqrt{2}", "\\pi", "x^2+1", "\\$5", "(1, 2)", "\\text{Paris}", "7"]),
)


def test_math_verify_grading_fuzzed(verifier):
    """10,000 hostile completions in batches of 100 through the worker processes: every item returns a score of 0
    or 1 (slow items are killed at the 1 s limit and score 0), and none of them is a correct answer, so every score
    must be 0: the hostile text never contains the gold answer in a box (checked), and a box is what a correct
    answer needs to reach a grade of 1 here (bare text is read only when there is no box, and never holds gold)."""
    seen = {"n": 0, "slowest_batch_s": 0.0}
    start = dict(verifier.stats)

    @settings(FUZZ, max_examples=N_OUTPUTS // 90)  # 100 items each, a few dropped below
    @given(st.lists(st.tuples(hostile_text(LATEX_SOUP), st.integers(1, 10**6).map(str)), min_size=100, max_size=100))
    def check(batch: list[tuple[str, str]]) -> None:
        # gold answers are integers that the hostile alphabet (digits 0, 1, 5, 9 in fixed shapes) almost never
        # spells; drop the rare item whose text does contain its gold number, so every item here is wrong
        items = [(c, g) for c, g in batch if g not in c]
        t0 = time.monotonic()
        scores = verifier.grade([c for c, _ in items], [g for _, g in items])
        took = time.monotonic() - t0
        seen["n"] += len(items)
        seen["slowest_batch_s"] = max(seen["slowest_batch_s"], took)
        assert scores == [0.0] * len(items), [c[:80] for (c, _), s in zip(items, scores) if s]

    check()
    graded = verifier.stats["graded"] - start["graded"]
    timeouts, errors = (verifier.stats[k] - start[k] for k in ("timeouts", "errors"))
    print(
        f"math-verify: {graded} hostile outputs, {timeouts} killed at the time limit, {errors} parse errors, "
        f"slowest batch of 100: {seen['slowest_batch_s']:.1f} s"
    )
    assert graded == seen["n"] >= N_OUTPUTS
    # no hang: a batch takes its items' grading time, and each slow item at most the 1 s limit (2 workers share it)
    assert seen["slowest_batch_s"] < 100 * 1.0 / 2 + 60, seen


def test_math_verify_near_misses_fuzzed(verifier):
    """Numeric near misses of an integer gold answer in a box (off by a few, a sign, a factor of ten, a digit
    appended, a decimal shift) are never graded correct; the exact answer in the same shape always is."""
    seen = {"n": 0}

    @settings(FUZZ, max_examples=N_OUTPUTS // 8)  # 8 or 9 completions each
    @given(st.integers(1, 10**9), st.integers(1, 9), st.sampled_from(["", "so the answer is ", "x = 3, then "]))
    def check(gold: int, d: int, prefix: str) -> None:
        wrong = [gold + d, gold - d, -gold, gold * 10, int(f"{gold}{d}"), gold + 10 * d, gold * d + 1]
        wrong = [w for w in wrong if w != gold]
        wrong_texts = [f"{prefix}\\boxed{{{w}}}" for w in wrong] + [f"{prefix}\\boxed{{{gold / 10}}}"]
        texts = wrong_texts + [f"{prefix}\\boxed{{{gold}}}"]
        scores = verifier.grade(texts, [str(gold)] * len(texts))
        seen["n"] += len(texts)
        assert scores == [0.0] * len(wrong_texts) + [1.0], list(zip(texts, scores))

    check()
    print(f"math-verify: {seen['n']} near misses and exact answers")
    assert seen["n"] >= N_OUTPUTS
