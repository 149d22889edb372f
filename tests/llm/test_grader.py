"""The accuracy reward's final-answer rule (npo_lab.llm.grader) and its labelled corpus.

Every failure class of issue 18 is here as a correct form and a near miss, graded end to end through
``MathVerifier`` (the reward's path: the rule in this process, math-verify in a worker); the extraction and the
written-form rules are also tested on their own; the corpus (tests/llm/grader_corpus.py) must keep its agreement
floor and zero false accepts on both its development and held-out parts.
"""

from __future__ import annotations

import importlib.util
import threading

import pytest
from grader_corpus import DEV_SEEDS, HELD_OUT_SEEDS, make_corpus
from npo_lab.llm.config import RewardConfig
from npo_lab.llm.grader import AnswerRules, FinalAnswer, decide, final_answer, normalise
from npo_lab.llm.rewards import MathVerifier, RewardSet

pytestmark = pytest.mark.llm
needs_math_verify = pytest.mark.skipif(importlib.util.find_spec("math_verify") is None, reason="needs math-verify")


@pytest.fixture(scope="module")
def verifier():
    with MathVerifier(timeout_s=60.0) as mv:  # generous: no correct answer may depend on machine load
        yield mv


# (class, completion, reference, expected score). Each class of the issue has its near miss (0) and a correct
# form (1) built the same way, so a rule that rejects the whole shape fails the correct one.
ISSUE_CLASSES = [
    # accepted though wrong, before: a box followed by a retraction or a different final answer in plain text
    ("retraction", "So \\boxed{42}. Wait, that's wrong; it is 43.", "42", 0.0),
    ("retraction", "So \\boxed{43}. Wait, that's wrong; it is \\boxed{42}.", "42", 1.0),
    ("later_plain_answer", "So \\boxed{42}.\n\nOn reflection, the final answer is 43.", "42", 0.0),
    ("later_plain_answer", "So \\boxed{43}.\n\nOn reflection, the final answer is 42.", "42", 1.0),
    ("retraction_no_number", "So \\boxed{42}. Hmm, actually that is wrong.", "42", 0.0),
    ("later_number_only", "So \\boxed{42}.\n\nThat gives 43.", "42", 0.0),  # no retraction word: the number is enough
    ("later_number_only", "So \\boxed{42}.\n\nThat gives the count.", "42", 1.0),
    # a box written with a space
    ("box_with_space", "So \\boxed{42}, then, redoing it: \\boxed {43}", "42", 0.0),
    ("box_with_space", "So \\boxed {42}.", "42", 1.0),
    # \boxed43: TeX boxes one token; which answer was meant is unclear
    ("box_without_braces", "So \\boxed{42} and then \\boxed43", "42", 0.0),
    ("box_without_braces", "So \\boxed43\nSorry, a typo. \\boxed{42}", "42", 1.0),
    ("box_without_braces", "\\boxed42", "42", 0.0),
    # \mathbf{43} after the box
    ("later_bold", "So \\boxed{42}\n\n$\\mathbf{43}$", "42", 0.0),
    ("later_bold", "So \\boxed{43}\n\nNo, I mean $\\mathbf{42}$", "42", 1.0),
    # an unbalanced box
    ("unbalanced_box", "So \\boxed{42}. Final: \\boxed{43", "42", 0.0),
    ("unbalanced_box", "So \\boxed{42", "42", 0.0),
    ("unbalanced_box", "So {{\\boxed{42}.", "42", 1.0),  # braces left open elsewhere do not matter
    # a box inside <think> followed by a different final answer
    ("think_box_then_other", "<think>So \\boxed{42}.</think>\nThe final answer is 43.", "42", 0.0),
    ("think_box_then_other", "<think>So \\boxed{43}.</think>\nThe final answer is 42.", "42", 1.0),
    # hedges
    ("hedge_or", "The answer is 42 or 43.", "42", 0.0),
    ("hedge_or", "It is either 42 or \\boxed{43}.", "43", 0.0),
    ("hedge_or", "So \\boxed{42} or \\boxed{43}.", "42", 0.0),
    ("hedge_or", "The answer is 42.", "42", 1.0),
    ("hedge_or", "The solutions are $\\boxed{x = 2 \\text{ or } x = 3}$.", "2, 3", 1.0),  # a reference with two values
    ("hedge_in_box", "\\boxed{42 \\text{ (or 43)}}", "42", 0.0),
    ("hedge_in_box", "\\boxed{42 \\text{ (exactly)}}", "42", 1.0),
    # a decimal within 1e-6 of a non-integer reference
    ("decimal_within_1e-6", "\\boxed{2.5000001}", "2.5", 0.0),
    ("decimal_within_1e-6", "\\boxed{2.4999999}", "2.5", 0.0),
    ("decimal_within_1e-6", "\\boxed{0.3333333}", "\\frac{1}{3}", 0.0),
    ("decimal_within_1e-6", "\\boxed{2.50}", "2.5", 1.0),
    ("decimal_within_1e-6", "\\boxed{\\frac{5}{2}}", "2.5", 1.0),
    # a fraction not in lowest terms where the reference is
    ("not_lowest_terms", "\\boxed{\\frac{2}{4}}", "\\frac{1}{2}", 0.0),
    ("not_lowest_terms", "\\boxed{84/2}", "42", 0.0),
    ("not_lowest_terms", "\\boxed{\\frac{1}{2}}", "\\frac{1}{2}", 1.0),
    ("not_lowest_terms", "\\boxed{\\frac{2}{4}}", "\\frac{2}{4}", 1.0),  # the reference is not reduced either
    # a percent sign and a base subscript the reference does not have
    ("percent", "\\boxed{42\\%}", "42", 0.0),
    ("percent", "\\boxed{42\\%}", "42\\%", 1.0),
    ("base_subscript", "\\boxed{42_{16}}", "42", 0.0),
    ("base_subscript", "\\boxed{42_{16}}", "42_{16}", 1.0),
    # rejected though right, before: an answer tag
    ("answer_tag", "<think>6 x 7</think>\n<answer>42</answer>", "42", 1.0),
    ("answer_tag", "<think>6 x 7</think>\n<answer>43</answer>", "42", 0.0),
    # 42.
    ("trailing_point", "\\boxed{42.}", "42", 1.0),
    ("trailing_point", "\\boxed{4.2}", "42", 0.0),
    # LaTeX thin-space thousands separators
    ("thin_space_thousands", "\\boxed{28\\,080}", "28080", 1.0),
    ("thin_space_thousands", "\\boxed{28\u202f080}", "28080", 1.0),
    ("thin_space_thousands", "\\boxed{28\\,081}", "28080", 0.0),
    ("thin_space_thousands", "\\boxed{2\\,8080}", "28080", 0.0),  # not a thousands grouping
    # a Unicode minus
    ("unicode_minus", "\\boxed{\u22124}", "-4", 1.0),
    ("unicode_minus", "\\boxed{\u22124}", "4", 0.0),
    # bold fractions
    ("bold_fraction", "The answer is **79/173**.", "\\frac{79}{173}", 1.0),
    ("bold_fraction", "**79/173**", "\\frac{79}{173}", 1.0),
    ("bold_fraction", "The answer is **79/137**.", "\\frac{79}{173}", 0.0),
]


@needs_math_verify
@pytest.mark.parametrize(
    "completion, reference, expected",
    [case[1:] for case in ISSUE_CLASSES],
    ids=[f"{case[0]}-{'correct' if case[3] else 'near_miss'}-{i}" for i, case in enumerate(ISSUE_CLASSES)],
)
def test_issue_classes(verifier, completion, reference, expected):
    assert verifier.grade([completion], [reference]) == [expected], decide(completion, reference)


# hostile probes: things a policy could find that pay under math-verify alone
HOSTILE = [
    ("\\boxed{\\sqrt{2} + 10^{-20}}", "\\sqrt{2}"),  # math-verify compares numbers to 15 digits
    ("\\boxed{\\frac{14142135623730951}{10^{16}}}", "\\sqrt{2}"),
    ("\\boxed{1.4142135623730951}", "\\sqrt{2}"),
    ("\\boxed{3.14159265358979}", "\\pi"),
    ("\\boxed{0.3333333333333333x}", "\\frac{x}{3}"),
    ("\\boxed{42.000000000000001}", "42"),
    ("\\boxed{\\approx 42}", "42"),
    ("\\boxed{42?}", "42"),
    ("\\boxed{\\pm 42}", "42"),
    ("\\boxed{42 \\lor 43}", "42"),
    ("\\boxed{42}. Forty-three, I mean.", "42"),
    ("\\boxed{42}<answer>43</answer>", "42"),
    ("Is the answer $\\mathbf{42}$?", "42"),
    ("\\boxed{B}\n\n$\\mathbf{BA}$", "B"),
    ("\\boxed{B} then \\boxedC", "B"),
    ("\\boxed{B}. (C) is also possible.", "B"),
    ("\\boxed{\\boxed{42} \\boxed{43}}", "42"),
    ("The answer is $\\boxed{42}$ and $\\boxed{43}$.", "42"),
    ("42 43", "42"),
    ("So the total is 42, but I am unsure.", "42"),
    ("Let me compute 6 \\times 7 first.", "42"),
    ("\\boxed{}\nThe answer should be 42", "42"),
    ("\\boxed{\\text{42 or 43}}", "42"),
]


@needs_math_verify
@pytest.mark.parametrize("completion, reference", HOSTILE)
def test_hostile_probes_score_zero(verifier, completion, reference):
    assert verifier.grade([completion], [reference]) == [0.0], decide(completion, reference)


# equivalent forms that must keep paying (math-verify does the algebra)
EQUIVALENT = [
    ("\\boxed{2\\sqrt{3}}", "\\sqrt{12}"),
    ("\\boxed{\\frac{\\sqrt{3}}{2}}", "\\frac{\\sqrt{12}}{4}"),
    ("\\boxed{(x+1)(x+2)}", "x^2 + 3x + 2"),
    ("\\boxed{x \\in (1, 3]}", "(1, 3]"),
    ("\\boxed{\\left[2, \\infty\\right)}", "[2, \\infty)"),
    ("\\boxed{4.2 \\times 10^{1}}", "42"),
    ("\\boxed{0.5x}", "\\frac{x}{2}"),
    ("\\boxed{3\\frac{1}{2}}", "\\frac{7}{2}"),
    ("The final answer is $\\frac{\\pi}{2}$. I hope it is correct.", "\\frac{\\pi}{2}"),
    ("\\boxed{(-4)}", "-4"),
    ("\\boxed{\\text{(B)}}", "B"),
    ("The correct option is (B).", "\\text{(B)}"),
    ("So there are 42 apples.", "42"),
]


@needs_math_verify
@pytest.mark.parametrize("completion, reference", EQUIVALENT)
def test_equivalent_forms_score_one(verifier, completion, reference):
    assert verifier.grade([completion], [reference]) == [1.0], decide(completion, reference)


# --- the extraction on its own --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, expected",
    [
        ("6 x 7 = 42, so \\boxed{42}.", FinalAnswer("42", "box")),
        ("\\fbox{7}", FinalAnswer("7", "box")),
        ("<answer> 42 </answer>", FinalAnswer(" 42 ", "tag")),
        ("<answer>\\boxed{42}</answer>", FinalAnswer("42", "tag")),
        ("The final answer is $\\boxed{42}$. I hope it is correct.", FinalAnswer("42", "phrase")),
        ("Final Answer: The final answer is $42$. I hope it is correct.", FinalAnswer("$42$", "phrase")),
        ("**Final Answer**\n\\[\n\\boxed{42}\n\\]", FinalAnswer("42", "phrase")),  # the heading holds the box
        ("## Final Answer\n42", FinalAnswer("42", "phrase")),
        ("6 x 7\n#### 42", FinalAnswer("42", "phrase")),
        ("The answer is 42 apples.", FinalAnswer("42", "phrase")),
        ("The answer is $x = \\boxed{3}$.", FinalAnswer("3", "phrase")),
        ("Therefore the answer is **79/173**.", FinalAnswer("79/173", "bold")),
        ("**79/173**", FinalAnswer("79/173", "bold")),
        ("$\\frac{1}{2}$", FinalAnswer("$\\frac{1}{2}$", "bare")),
        ("<think>6 x 7</think>42", FinalAnswer("42", "bare")),
        ("So there are 42 apples.", FinalAnswer("42", "conclusion")),
        ("<think>\\boxed{41}</think>\n\\boxed{42}", FinalAnswer("42", "box")),
        ("\\boxed{41}\nWait, no.\n\\boxed{42}", FinalAnswer("42", "box")),
        ("\\boxed{42} = \\boxed{42}", FinalAnswer("42", "box")),  # the same answer twice is one answer
        ("I think it could be 42.", FinalAnswer(None, "no_answer")),
        ("", FinalAnswer(None, "no_answer")),
        ("\\boxed{}", FinalAnswer(None, "malformed")),
        ("\\boxed{42} then \\boxed{4", FinalAnswer(None, "malformed")),
        ("<answer>42", FinalAnswer(None, "malformed")),
        ("\\boxed{42} 43", FinalAnswer(None, "retracted")),
        ("\\boxed{42}, not sure", FinalAnswer(None, "retracted")),
        ("\\boxed{B} or C", FinalAnswer(None, "retracted")),
        ("It is 42 or \\boxed{43}.", FinalAnswer(None, "hedged")),
        ("\\boxed{42}, \\boxed{43}", FinalAnswer(None, "hedged")),
        ("The answer is $\\boxed{42}$ or $\\boxed{43}$", FinalAnswer(None, "hedged")),
        ("The answer is $\\boxed{42} \\boxed{43}$", FinalAnswer(None, "several")),
    ],
)
def test_final_answer(text, expected):
    assert final_answer(text) == expected


@pytest.mark.parametrize(
    "piece",
    [
        "{",
        "\\boxed{",
        "**",
        "answer is ",
        "#### ",
        "$",
        "<answer>",
        "So it is 1 ",
        "1 234 ",
        "\\mathbf{",
        "_",
        "a",
        "\\text{1 ",
    ],
)
def test_megabyte_inputs_return(piece):
    """The rule is linear in the text (one brace pass, regexes without backtracking, bounded look-backs): a
    megabyte of any piece, before or after a real answer, returns (a quadratic scan would run for hours; a run of
    underscores after the answer once took 22 s for 40,000 characters)."""
    text = piece * (1_000_000 // len(piece))
    for completion in (text, text + "\\boxed{42}", "\\boxed{42}" + text):
        out: list = []
        thread = threading.Thread(target=lambda c=completion, o=out: o.append(decide(c, "42")), daemon=True)
        thread.start()
        thread.join(300)
        assert not thread.is_alive(), "hang guard (300 s) fired: decide() never returned on a megabyte"
        assert out[0].score in (0.0, 1.0, None)


@pytest.mark.parametrize("opener", ["\\boxed{", "\\mathbf{", "{", "<answer>"])
def test_deep_balanced_nesting_returns(opener):
    """A box, bold or brace nest 100,000 deep around an answer: spans are checked in place, never sliced one by one
    (copying every nested box's content would be quadratic)."""
    closer = "</answer>" if opener == "<answer>" else "}"
    text = opener * 100_000 + "42" + closer * 100_000
    out: list = []
    thread = threading.Thread(target=lambda: out.append(decide(text, "42")), daemon=True)
    thread.start()
    thread.join(300)
    assert not thread.is_alive(), "hang guard (300 s) fired: decide() never returned on a deep nest"
    assert out[0].score in (0.0, 1.0, None)


@pytest.mark.parametrize(
    "value, expected",
    [
        ("$\\boxed{28\\,080.}$", "28080"),
        ("28{,}080", "28080"),
        ("1,234,567", "1234567"),
        ("(1,234)", "(1,234)"),  # not one number: a pair stays a pair
        ("\u22124", "-4"),
        ("\\dfrac{1}{2}", "\\frac{1}{2}"),
        ("\\left( 1, 3 \\right]", "( 1, 3 ]"),
        ("**\\mathbf{42}**", "42"),
        ("\\text{(B)}", "(B)"),
        ("\\text{Paris}", "\\text{Paris}"),
        ("+42", "42"),
    ],
)
def test_normalise(value, expected):
    assert normalise(value) == expected


@pytest.mark.parametrize(
    "completion, reference, rules, expected",
    [
        ("\\boxed{\\frac{2}{4}}", "\\frac{1}{2}", AnswerRules(lowest_terms=True), (0.0, "not_lowest_terms")),
        ("\\boxed{\\frac{2}{4}}", "\\frac{1}{2}", AnswerRules(lowest_terms=False), (1.0, "numbers")),
        ("\\boxed{2.5000001}", "2.5", AnswerRules(decimal_match="exact"), (0.0, "numbers")),
        ("\\boxed{2.5000001}", "2.5", AnswerRules(decimal_match="rounded"), (1.0, "numbers")),
        ("\\boxed{3.1416}", "3.14", AnswerRules(decimal_match="rounded"), (1.0, "numbers")),
        ("\\boxed{3.146}", "3.14", AnswerRules(decimal_match="rounded"), (0.0, "numbers")),
        ("\\boxed{-2.345}", "-2.35", AnswerRules(decimal_match="rounded"), (1.0, "numbers")),  # half away from 0
        ("\\boxed{3.1}", "3.14", AnswerRules(decimal_match="rounded"), (0.0, "numbers")),  # fewer places: exact
        ("\\boxed{42.4}", "42", AnswerRules(decimal_match="rounded"), (0.0, "numbers")),  # an integer is exact
        ("\\boxed{1.4142}", "\\sqrt{2}", AnswerRules(), (0.0, "decimal_for_exact")),
        ("\\boxed{0.42}", "42\\%", AnswerRules(), (1.0, "numbers")),
        ("\\boxed{b}", "\\text{(B)}", AnswerRules(), (1.0, "choice")),
        ("\\boxed{B) 42}", "B", AnswerRules(), (0.0, "choice")),
        (
            "\\boxed{no}",
            "\\text{no}",
            AnswerRules(),
            (None, "math_verify"),
        ),  # "no" retracts only when the reference lacks it
    ],
)
def test_rules(completion, reference, rules, expected):
    decision = decide(completion, reference, rules)
    assert (decision.score, decision.reason) == expected


def test_decisions_left_to_math_verify_use_exact_decimals():
    decision = decide("\\boxed{0.5x + 1.25}", "\\frac{x}{2} + \\frac{5}{4}")
    assert decision.score is None
    assert decision.prediction == "\\frac{5}{10^{1}}x + \\frac{125}{10^{2}}"


def test_answer_rules_are_checked():
    with pytest.raises(ValueError, match="decimal_match must be 'exact' or 'rounded', got 'round'"):
        AnswerRules(decimal_match="round")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="llm.reward.decimal_match"):
        RewardConfig(decimal_match="round")  # type: ignore[arg-type]


@needs_math_verify
def test_reward_config_options_reach_the_grader():
    completions, answers = ["\\boxed{\\frac{2}{4}}", "\\boxed{3.1416}"], ["\\frac{1}{2}", "3.14"]
    cfg = dict(accuracy_weight=1.0, timeout_s=60.0)
    with RewardSet(RewardConfig(**cfg)) as strict:
        assert strict.score(["p"] * 2, completions, answers, [[], []], [{}, {}])[0] == [0.0, 0.0]
    with RewardSet(RewardConfig(**cfg, lowest_terms=False, decimal_match="rounded")) as lenient:
        assert lenient.score(["p"] * 2, completions, answers, [[], []], [{}, {}])[0] == [1.0, 1.0]


# --- the labelled corpus ----------------------------------------------------------------------------------------

AGREEMENT_FLOOR = 0.95  # the issue's target; docs/reliability.md has the measured figures


def test_corpus_shape():
    """At least 1,000 cases over every answer type, both labels in each, and the issue's classes present."""
    cases = [c for seed in DEV_SEEDS + HELD_OUT_SEEDS for c in make_corpus(seed)]
    assert len(cases) >= 1000
    assert not set(DEV_SEEDS) & set(HELD_OUT_SEEDS)
    kinds = {"integer", "negative", "decimal", "fraction", "negative_fraction", "expression", "interval", "choice"}
    assert {c.kind for c in cases} == kinds
    for kind in kinds:
        assert {c.label for c in cases if c.kind == kind} == {0, 1}, kind
    classes = {c.cls for c in cases}
    for cls in ("retraction_after_box", "later_answer_plain", "later_box_with_space", "later_box_no_braces",
                "later_mathbf", "later_unclosed_box", "think_box_then_other", "hedge_or_plain", "hedge_boxed_text",
                "value:within_1e-6", "value:unreduced", "value:percent", "value:base_subscript", "answer_tag",
                "box", "bold_plain"):  # fmt: skip
        assert cls in classes, cls
    assert make_corpus(0) == make_corpus(0)  # seeded: the same cases every run


@needs_math_verify
@pytest.mark.parametrize("part, seeds", [("dev", DEV_SEEDS), ("held-out", HELD_OUT_SEEDS)])
def test_corpus_agreement(verifier, part, seeds):
    """No false accept at all, and agreement with the labels at or above the floor."""
    cases = [c for seed in seeds for c in make_corpus(seed)]
    scores = verifier.grade([c.completion for c in cases], [c.reference for c in cases])
    false_accepts = [(c.cls, c.reference, c.completion[-80:]) for c, s in zip(cases, scores) if s and not c.label]
    wrong = sum(bool(s) != bool(c.label) for c, s in zip(cases, scores))
    assert false_accepts == []
    assert 1 - wrong / len(cases) >= AGREEMENT_FLOOR, (part, wrong, len(cases))
