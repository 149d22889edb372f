"""Property-based fuzzing of every verifier that reads model output (hypothesis, at least 10,000 outputs each).

A completion is untrusted text written by a policy that is optimised to find whatever the grader rewards. For each
verifier: no crash, no hang (a pure scan returns; math-verify items over the time limit are killed and score 0),
every score is 0 or 1, and a wrong answer is never graded correct. Generated inputs include huge numbers, deep
LaTeX nesting, unicode, control characters and megabyte strings. Runs are derandomised, so CI sees the same inputs
every time; the counts are asserted, so the 10,000 of docs/reliability.md cannot silently shrink. Nothing here
asserts a duration or how many items reached a time limit (that depends on the machine): a hang shows as a test
that never ends, and a legitimate item is always graded under a generous limit.
"""

from __future__ import annotations

import re
import time
from fractions import Fraction

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
     "x", "1", "0.5", "-", "+", "*", "/", "!", ",", " ", "\n", "\t", "\x00",
     # what the final-answer rule reads: other boxes, tags, phrases, bold, think blocks, hedges, notation
     "\\boxed {", "\\boxed", "<answer>", "</answer>", "<think>", "</think>", "**", "\\mathbf{", "The answer is ",
     "Final Answer: ", "answer: ", "#### ", "So it is ", " or ", "Wait, ", "\u2212", "\\,", "\\%", "\\pm", "?", ".",
     "\\(", "\\)", "\\[", "\\]", "$$", "\\dfrac{", "\\approx", "(B)", "B", "\\text{(", "\u202f", "{,}"]
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


# ---- the Qwen3-VL backend's text scans, final-answer rule and math-verify grading --------------------------------
rewards = pytest.importorskip("npo_lab.llm.rewards")
grader = pytest.importorskip("npo_lab.llm.grader")


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


def test_final_answer_and_decide_fuzzed():
    """The final-answer rule on hostile text, cut as the reward cuts it (its last 4,000 characters; megabyte inputs
    are in tests/llm/test_grader.py): no exception, a known kind, an answer that is a piece of the text, a decision
    of 0, 1 or 'ask math-verify' with both texts; and a 1 only when the reference's digits are in the text (gold
    answers are integers; a plain number decided here must spell them, separators aside)."""
    seen = {"n": 0, "answers": 0, "decided": 0}
    kinds = {"box", "tag", "phrase", "bold", "bare", "conclusion"}
    failures = {"no_answer", "malformed", "retracted", "hedged", "several"}

    @FUZZ
    @given(hostile_text(LATEX_SOUP), st.integers(2, 10**6))
    def check(text: str, gold: int) -> None:
        seen["n"] += 1
        text = text[-4000:]
        found = grader.final_answer(text)
        if found.answer is None:
            assert found.kind in failures
        else:
            seen["answers"] += 1
            assert found.kind in kinds
            assert found.answer in text.translate(grader._UNICODE)
            assert len(found.answer) <= grader.MAX_ANSWER_CHARS
        decision = grader.decide(text, str(gold))
        assert decision.score in (None, 0.0, 1.0)
        if decision.score is None:
            assert decision.prediction and decision.reference
        else:
            seen["decided"] += 1
        if decision.score == 1.0:
            assert str(gold) in re.sub(r"[^0-9]", "", text), (text[-200:], gold, decision)

    check()
    print(
        f"final-answer rule: {seen['n']} hostile outputs, {seen['answers']} with an answer, {seen['decided']} decided"
    )
    assert seen["n"] >= N_OUTPUTS


def _exact(value: Fraction) -> list[str]:
    """Correct written forms of a value (decimals only when exact)."""
    forms = [f"\\frac{{{value.numerator}}}{{{value.denominator}}}", f"{value.numerator}/{value.denominator}"]
    if value.denominator == 1:
        n = value.numerator
        forms = [str(n), f"{n}.0", f"{n}.", f"{n:,}".replace(",", "\\,"), str(n).replace("-", "\u2212")]
    elif all(p in (2, 5) for p in _prime_factors(value.denominator)):
        digits = max(_multiplicity(value.denominator, 2), _multiplicity(value.denominator, 5))
        forms.append(f"{float(value):.{digits}f}")
    if value < 0 and value.denominator != 1:
        forms.append(f"-\\frac{{{-value.numerator}}}{{{value.denominator}}}")
    return forms


def _prime_factors(n: int) -> set[int]:
    out, k = set(), 2
    while k * k <= n:
        while n % k == 0:
            out.add(k)
            n //= k
        k += 1
    return out | ({n} if n > 1 else set())


def _multiplicity(n: int, p: int) -> int:
    k = 0
    while n % p == 0:
        n //= p
        k += 1
    return k


VALUE = st.one_of(
    st.integers(-(10**7), 10**7).map(Fraction),
    st.builds(lambda k, places: Fraction(k, 10**places), st.integers(-(10**6), 10**6), st.integers(1, 4)),
    st.builds(lambda p, q: Fraction(p, q), st.integers(-500, 500), st.integers(1, 500)),
)
WRONG_BY = st.sampled_from(
    [Fraction(1), Fraction(-1), Fraction(1, 10**7), Fraction(-1, 10**7), Fraction(10), Fraction(1, 3)]
)
CORRECT_SHAPES = [
    "So \\boxed{{{a}}}.",
    "<think>{r}</think>\n<answer>{a}</answer>",
    "{r} The final answer is ${a}$. I hope it is correct.",
    "{r}\n#### {a}",
    "{r} The answer is **{a}**.",
    "{r} So $\\boxed{{{w}}}$. Wait, I made an error. Redoing it: {r} $\\boxed{{{a}}}$.",
    "<think>{r} \\boxed{{{w}}}</think>\nThe answer is $\\boxed{{{a}}}$.",
]
CONTRADICTED_SHAPES = [
    "{r} So \\boxed{{{a}}}. Wait, that's wrong; it is {w}.",
    "{r} So \\boxed{{{a}}}.\n\nThe final answer is ${w}$.",
    "{r} So \\boxed{{{a}}}, then \\boxed {{{w}}}",
    "{r} So \\boxed{{{a}}}. Final: \\boxed{{{w}",
    "<think>{r} \\boxed{{{a}}}</think>\nThe final answer is ${w}$.",
    "{r} The answer is ${a}$ or ${w}$.",
    "{r} $\\boxed{{{a} \\text{{ (or }} {w} \\text{{)}}}}$",
    "{r} $\\boxed{{{a}}}$\n\n$\\mathbf{{{w}}}$",
    "{r} So \\boxed{{{a}}}. Hmm, actually that is wrong.",
]


def test_final_answer_rule_near_misses_fuzzed():
    """Numbers (integers, decimals, fractions; negative too) in every correct shape score 1 and a wrong value in
    the same shape 0; the right value followed by a retraction, a later answer (in plain text, a spaced box, an
    unclosed box, after a think block, in bold) or a hedge scores 0. All of them are decided by the rule, without
    math-verify, so this runs in this process."""
    seen = {"n": 0}

    @settings(FUZZ, max_examples=N_OUTPUTS // (2 * len(CORRECT_SHAPES) + len(CONTRADICTED_SHAPES)) + 1)
    @given(VALUE, WRONG_BY, st.data())
    def check(value: Fraction, by: Fraction, data: st.DataObject) -> None:
        wrong_value = value + by
        gold = _exact(value)[0]
        right = data.draw(st.sampled_from(_exact(value)))
        wrong = data.draw(st.sampled_from(_exact(wrong_value)))
        r = data.draw(
            st.sampled_from(["", "We have 6 + 7 = 13.", "Let $y = 3$; then $2y = 6$.", "Multiply by 4: 52."])
        )
        for shape in CORRECT_SHAPES:
            for answer, expected in ((right, 1.0), (wrong, 0.0)):
                text = shape.format(a=answer, w=wrong, r=r)
                seen["n"] += 1
                decision = grader.decide(text, gold)
                assert decision.score == expected, (text, gold, decision)
        for shape in CONTRADICTED_SHAPES:
            text = shape.format(a=right, w=wrong, r=r)
            seen["n"] += 1
            assert grader.decide(text, gold).score == 0.0, (text, gold)

    check()
    print(f"final-answer rule: {seen['n']} correct forms, wrong values and contradicted answers")
    assert seen["n"] >= N_OUTPUTS


@pytest.fixture(scope="module")
def hostile_verifier():
    """A short time limit: only for items that must score 0 anyway (a limit can only lower a score)."""
    pytest.importorskip("math_verify")
    v = rewards.MathVerifier(timeout_s=1.0, max_chars=4000, workers=2)
    yield v
    v.close()


@pytest.fixture(scope="module")
def verifier():
    """A generous time limit: for items that must score 1, which no machine's load may turn into a 0."""
    pytest.importorskip("math_verify")
    v = rewards.MathVerifier(timeout_s=60.0, max_chars=4000, workers=2)
    yield v
    v.close()


GOLD = st.one_of(
    st.integers(-(10**6), 10**6).map(str),
    st.sampled_from(["\\frac{1}{2}", "0.5", "\\sqrt{2}", "\\pi", "x^2+1", "\\$5", "(1, 2)", "\\text{Paris}", "7"]),
)


def test_math_verify_grading_fuzzed(hostile_verifier):
    """10,000 hostile completions in batches of 100 through the reward's grader (the final-answer rule, then the
    worker processes): every item returns a score of 0 or 1 (slow items are killed at the 1 s limit and score 0),
    and none of them is a correct answer, so every score must be 0: the hostile text never contains the gold
    answer (checked; gold answers are integers the hostile alphabet almost never spells)."""
    seen = {"n": 0}
    start = dict(hostile_verifier.stats)

    @settings(FUZZ, max_examples=N_OUTPUTS // 90)  # 100 items each, a few dropped below
    @given(st.lists(st.tuples(hostile_text(LATEX_SOUP), st.integers(1, 10**6).map(str)), min_size=100, max_size=100))
    def check(batch: list[tuple[str, str]]) -> None:
        # drop the rare item whose text does contain its gold number, so every item here is wrong
        items = [(c, g) for c, g in batch if g not in c and g not in re.sub(r"[^0-9]", "", c)]
        scores = hostile_verifier.grade([c for c, _ in items], [g for _, g in items])
        seen["n"] += len(items)
        assert scores == [0.0] * len(items), [c[:80] for (c, _), s in zip(items, scores) if s]

    t0 = time.monotonic()
    check()
    graded = hostile_verifier.stats["graded"] - start["graded"]
    timeouts, errors = (hostile_verifier.stats[k] - start[k] for k in ("timeouts", "errors"))
    print(
        f"math-verify: {graded} hostile outputs, {timeouts} killed at the time limit, {errors} parse errors, "
        f"{time.monotonic() - t0:.0f} s in all (information, not asserted)"
    )
    assert graded == seen["n"] >= N_OUTPUTS


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
