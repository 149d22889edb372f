"""A labelled corpus for the accuracy reward's grader, built by a seeded generator (no model, no download).

Each case is a completion built from a reference answer by a named class, labelled by how it was built:
*correct* classes write an equivalent form of the reference as the final answer in one of the ways models do (a
box, an answer tag, an answer phrase, bold, a think block before the answer, a revised answer, ...); *near-miss*
classes either give a wrong value in those same ways (off by one, a sign, a factor of ten, a decimal within 1e-6,
an unreduced fraction, a percent sign, a base subscript, a wrong interval end, a wrong choice, ...) or give the
right value and then take it back (a later different answer in plain text, in ``\\boxed {..}``, ``\\boxed43``,
``\\mathbf``, an unclosed box, an answer tag; a retraction; a hedge; a box inside ``<think>`` followed by another
final answer) or never commit to it. Answer types: integers, negative integers, decimals, fractions, negative
fractions, expressions, intervals and multiple choice.

The corpus is split by generator seed: ``DEV_SEEDS`` for developing the grader, ``HELD_OUT_SEEDS`` for reporting
only. Usage::

    from grader_corpus import DEV_SEEDS, HELD_OUT_SEEDS, make_corpus
    dev = [case for seed in DEV_SEEDS for case in make_corpus(seed)]
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from fractions import Fraction

__all__ = ["DEV_SEEDS", "HELD_OUT_SEEDS", "Case", "make_corpus"]

DEV_SEEDS = (0,)
HELD_OUT_SEEDS = (1,)


@dataclass(frozen=True)
class Case:
    """One labelled completion.

    Attributes:
        completion: The model output.
        reference: The ground-truth answer as a dataset writes it.
        label: 1 when the completion's final answer is correct, 0 when it is not (by construction).
        kind: The answer type (integer, negative, decimal, fraction, negative_fraction, expression, interval,
            choice).
        cls: The construction class (e.g. "box", "retraction_after_box", "value:off_by_one").
    """

    completion: str
    reference: str
    label: int
    kind: str
    cls: str


@dataclass
class _Answer:
    """A reference answer with its equivalent written forms and its near misses (written forms of other values)."""

    kind: str
    reference: str
    forms: list[str]  # equivalent, LaTeX (go inside $...$ or a box)
    near: dict[str, str] = field(default_factory=dict)  # near-miss name -> LaTeX of a wrong value
    plain: str = ""  # a form that reads well in plain text (no $), for phrases and bold


# --------------------------------------------------------------------------------------------------------------
# Reference answers by type
# --------------------------------------------------------------------------------------------------------------


def _grouped(n: int, sep: str) -> str:
    return f"{n:,}".replace(",", sep)


def _integer(rng: random.Random) -> _Answer:
    n = rng.choice([rng.randint(2, 99), rng.randint(100, 999), rng.randint(1000, 99999)])
    d = rng.randint(1, 9)
    forms = [str(n), f"{n}.0", f"{n}.", f"x = {n}", f"\\mathbf{{{n}}}", f"{{{n}}}", f"{n}.00", f"\\text{{{n}}}"]
    if n >= 1000:
        forms += [_grouped(n, "\\,"), _grouped(n, "{,}"), _grouped(n, ","), _grouped(n, "\u202f"), _grouped(n, "\\ ")]
        forms.append(f"\\num{{{n}}}")
    swapped = str(n)[::-1]
    near = {
        "off_by_one": str(n + 1),
        "off_by_d": str(n - d),
        "sign": str(-n),
        "times_ten": str(10 * n),
        "appended_digit": f"{n}{d}",
        "within_1e-6": f"{n}.000001",
        "decimal_shift": f"{n / 10:g}" if n % 10 else f"{n // 10}",
        "percent": f"{n}\\%",
        "base_subscript": f"{n}_{{16}}",
        "plus_minus": f"\\pm {n}",
        "unreduced": f"\\frac{{{2 * n}}}{{2}}",
        "over_one": f"\\frac{{{n}}}{{1}}",
        "hedge_text": f"{n} \\text{{ (or {n + 1})}}",
        "two_values": f"{n}, {n + 1}",
    }
    if swapped != str(n) and not swapped.startswith("0"):
        near["digit_swap"] = swapped
    return _Answer("integer", str(n), forms, near, plain=str(n))


def _negative(rng: random.Random) -> _Answer:
    n = rng.randint(2, 9999)
    forms = [f"-{n}", f"\u2212{n}", f"-{n}.0", f"x = -{n}", f"(-{n})", f"{{-{n}}}"]
    near = {
        "sign": str(n),
        "off_by_one": f"-{n + 1}",
        "times_ten": f"-{10 * n}",
        "within_1e-6": f"-{n}.000001",
        "plus_minus": f"\\pm {n}",
        "hedge_or": f"-{n} \\text{{ or }} {n}",
    }
    return _Answer("negative", f"-{n}", forms, near, plain=f"-{n}")


def _decimal(rng: random.Random) -> _Answer:
    places = rng.randint(1, 3)
    scale = 10**places
    while True:
        k = rng.randint(1, 200 * scale)
        if k % 10 and k % scale:  # a non-integer written with exactly `places` decimals
            break
    value = Fraction(k, scale)
    text = f"{k / scale:.{places}f}"
    forms = [text, text + "0", f"\\frac{{{value.numerator}}}{{{value.denominator}}}"]
    forms.append(f"{value.numerator}/{value.denominator}")
    if text.startswith("0."):
        forms.append(text[1:])  # .75
    step = Fraction(1, scale)
    near = {
        "within_1e-6": text + "000001",
        "below_by_1e-6": f"{float(value - Fraction(1, 10**7)):.7f}",
        "last_digit": f"{float(value + step):.{places}f}",
        "truncated": f"{math.floor(float(value) * scale / 10) / (scale / 10):.{places - 1}f}" if places > 1 else "",
        "decimal_shift": f"{float(value) * 10:g}",
        "sign": "-" + text,
        "unreduced": f"\\frac{{{2 * value.numerator}}}{{{2 * value.denominator}}}",
        "percent": text + "\\%",
    }
    keep = ("unreduced", "percent")  # equal in value, wrong in form: near misses by the written-form rules
    near = {name: v for name, v in near.items() if v and (name in keep or Fraction(v) != value)}
    return _Answer("decimal", text, forms, near, plain=text)


def _reduced_fraction(rng: random.Random) -> tuple[int, int]:
    while True:
        p, q = rng.randint(1, 200), rng.randint(2, 200)
        if math.gcd(p, q) == 1:
            return p, q


def _terminates(q: int) -> bool:
    while q % 2 == 0:
        q //= 2
    while q % 5 == 0:
        q //= 5
    return q == 1


def _fraction(rng: random.Random) -> _Answer:
    p, q = _reduced_fraction(rng)
    forms = [f"\\frac{{{p}}}{{{q}}}", f"\\dfrac{{{p}}}{{{q}}}", f"{p}/{q}", f"\\tfrac{{{p}}}{{{q}}}"]
    if p < 10:
        forms.append(f"\\frac {p}{{{q}}}")  # TeX reads one token as the numerator
        if q < 10:
            forms.append(f"\\frac{p}{q}")
    if _terminates(q):
        forms.append(str(Decimal(p) / Decimal(q)))  # exact: q has no prime factor but 2 and 5
    if p > q:
        forms.append(f"{p // q}\\frac{{{p % q}}}{{{q}}}" if p % q else str(p // q))  # a mixed number
    near = {
        "unreduced": f"\\frac{{{2 * p}}}{{{2 * q}}}",
        "numerator": f"\\frac{{{p + 1}}}{{{q}}}",
        "denominator": f"\\frac{{{p}}}{{{q + 1}}}",
        "sign": f"-\\frac{{{p}}}{{{q}}}",
        "percent": f"\\frac{{{p}}}{{{q}}}\\%",
    }
    if p != q:
        near["reciprocal"] = f"\\frac{{{q}}}{{{p}}}"
    approx3, approx7 = f"{p / q:.3f}", f"{p / q:.7f}"
    if Fraction(approx3) != Fraction(p, q):
        near["rounded_3"] = approx3
    if Fraction(approx7) != Fraction(p, q):
        near["within_1e-6"] = approx7
    return _Answer("fraction", f"\\frac{{{p}}}{{{q}}}", forms, near, plain=f"{p}/{q}")


def _negative_fraction(rng: random.Random) -> _Answer:
    p, q = _reduced_fraction(rng)
    forms = [f"-\\frac{{{p}}}{{{q}}}", f"\\frac{{-{p}}}{{{q}}}", f"\u2212\\frac{{{p}}}{{{q}}}", f"-{p}/{q}"]
    near = {
        "sign": f"\\frac{{{p}}}{{{q}}}",
        "unreduced": f"-\\frac{{{3 * p}}}{{{3 * q}}}",
        "denominator": f"-\\frac{{{p}}}{{{q + 2}}}",
    }
    if Fraction(f"{-p / q:.7f}") != Fraction(-p, q):
        near["within_1e-6"] = f"{-p / q:.7f}"
    return _Answer("negative_fraction", f"-\\frac{{{p}}}{{{q}}}", forms, near, plain=f"-{p}/{q}")


_SQUAREFREE = [2, 3, 5, 6, 7, 10, 11, 13, 14, 15, 17, 19, 21, 22, 23]


def _expression(rng: random.Random) -> _Answer:
    shape = rng.choice(["root", "poly", "root_over", "pi"])
    if shape == "root":
        a, b = rng.randint(2, 9), rng.choice(_SQUAREFREE)
        forms = [f"{a}\\sqrt{{{b}}}", f"\\sqrt{{{a * a * b}}}", f"\\sqrt{{{b}}} \\cdot {a}"]
        if b < 10:
            forms.append(f"{a} \\sqrt {b}")  # TeX reads one token: \sqrt 21 would be sqrt(2) times 1
        near = {
            "coefficient": f"{a + 1}\\sqrt{{{b}}}",
            "radicand": f"{a}\\sqrt{{{b + 1}}}" if b + 1 not in (4, 9, 16, 25) else f"{a}\\sqrt{{{b + 2}}}",
            "decimal_approx": f"{a * math.sqrt(b):.4f}",
            "close_decimal": f"{a * math.sqrt(b):.9f}",
            "dropped_coefficient": f"\\sqrt{{{b}}}",
        }
        return _Answer("expression", f"{a}\\sqrt{{{b}}}", forms, near, plain=f"{a}\\sqrt{{{b}}}")
    if shape == "poly":
        r1, r2 = rng.randint(1, 9), rng.randint(1, 9)
        b, c = r1 + r2, r1 * r2
        ref = f"x^2 + {b}x + {c}"
        forms = [ref, f"x^{{2}}+{b}x+{c}", f"{c} + {b}x + x^2", f"(x+{r1})(x+{r2})", f"x^2+{b}\\,x+{c}"]
        near = {
            "sign": f"x^2 - {b}x + {c}",
            "constant": f"x^2 + {b}x + {c + 1}",
            "leading": f"2x^2 + {b}x + {c}",
            "power": f"x^3 + {b}x + {c}",
            "factor": f"(x+{r1})(x-{r2})",
        }
        return _Answer("expression", ref, forms, near, plain=ref)
    if shape == "root_over":
        b, a = rng.choice(_SQUAREFREE), rng.randint(2, 9)
        ref = f"\\frac{{\\sqrt{{{b}}}}}{{{a}}}"
        forms = [ref, f"\\sqrt{{{b}}}/{a}", f"\\frac{{1}}{{{a}}}\\sqrt{{{b}}}", f"\\dfrac{{\\sqrt{{{b}}}}}{{{a}}}"]
        near = {
            "denominator": f"\\frac{{\\sqrt{{{b}}}}}{{{a + 1}}}",
            "no_root": f"\\frac{{{b}}}{{{a}}}",
            "decimal_approx": f"{math.sqrt(b) / a:.5f}",
            "inverted": f"\\frac{{{a}}}{{\\sqrt{{{b}}}}}",
        }
        return _Answer("expression", ref, forms, near, plain=ref)
    a = rng.randint(2, 12)
    ref = f"{a}\\pi"
    forms = [ref, f"\\pi {a}", f"{a} \\cdot \\pi", f"{a}\u03c0", f"\\frac{{{2 * a}\\pi}}{{2}}"]
    near = {
        "coefficient": f"{a + 1}\\pi",
        "squared": f"{a}\\pi^2",
        "decimal_approx": f"{a * math.pi:.4f}",
        "close_decimal": f"{a * math.pi:.9f}",
    }
    return _Answer("expression", ref, forms, near, plain=ref)


def _interval(rng: random.Random) -> _Answer:
    a = rng.randint(-20, 10)
    b = a + rng.randint(1, 15)
    if rng.random() < 0.5:
        ref = f"({a}, {b}]"
        forms = [ref, f"({a},{b}]", f"\\left({a}, {b}\\right]", f"x \\in ({a}, {b}]"]
        near = {
            "closed": f"[{a}, {b}]",
            "open": f"({a}, {b})",
            "swapped_ends": f"[{a}, {b})",
            "end_off_by_one": f"({a}, {b + 1}]",
            "start_sign": f"({-a if a else 1}, {b}]" if -a < b else f"({a - 1}, {b}]",
        }
    else:
        ref = f"[{a}, \\infty)"
        forms = [ref, f"[{a},\\infty)", f"\\left[{a}, \\infty\\right)", f"x \\in [{a}, \\infty)"]
        near = {
            "open": f"({a}, \\infty)",
            "end_off_by_one": f"[{a + 1}, \\infty)",
            "other_side": f"(-\\infty, {a}]",
        }
    return _Answer("interval", ref, forms, near, plain=ref)


_LETTERS = "ABCDE"


def _choice(rng: random.Random) -> _Answer:
    letter = rng.choice(_LETTERS)
    other = rng.choice([x for x in _LETTERS if x != letter])
    ref = rng.choice([letter, f"({letter})", f"\\text{{({letter})}}"])
    forms = [letter, f"({letter})", f"\\text{{{letter}}}", f"\\textbf{{({letter})}}", f"\\text{{({letter})}}"]
    near = {
        "other_letter": other,
        "other_letter_paren": f"({other})",
        "two_letters": f"{letter}, {other}",
        "joined_letters": f"{letter}{other}",
        "or_letters": f"{letter} \\text{{ or }} {other}",
    }
    return _Answer("choice", ref, forms, near, plain=f"({letter})")


_TYPES: list[Callable[[random.Random], _Answer]] = [
    _integer,
    _negative,
    _decimal,
    _fraction,
    _negative_fraction,
    _expression,
    _interval,
    _choice,
]


# --------------------------------------------------------------------------------------------------------------
# How a completion writes its final answer
# --------------------------------------------------------------------------------------------------------------


def _reasoning(rng: random.Random) -> str:
    """A few sentences of working with intermediate numbers (which must never be taken for the answer)."""
    a, b, c = rng.randint(2, 60), rng.randint(2, 60), rng.randint(2, 9)
    parts = [
        f"We have {a} + {b} = {a + b}.",
        f"Multiplying by {c} gives {(a + b) * c}.",
        f"Let $y = {a}$; then $2y = {2 * a}$.",
        f"Checking the case $n = {c}$ first: it gives ${c * c}$.",
    ]
    rng.shuffle(parts)
    return " ".join(parts[: rng.randint(1, 4)])


def _wrong_form(ans: _Answer, rng: random.Random) -> str:
    return rng.choice(list(ans.near.values()))


def _correct_cases(ans: _Answer, rng: random.Random) -> list[tuple[str, str]]:
    """(class, completion) for each correct class, each with a random equivalent form."""
    f = lambda: rng.choice(ans.forms)  # noqa: E731 - a fresh draw per class
    r = lambda: _reasoning(rng)  # noqa: E731
    wrong = _wrong_form(ans, rng)
    out = [
        ("box", f"{r()} Therefore the answer is $\\boxed{{{f()}}}$."),
        ("box_display", f"{r()}\n\n\\[\n\\boxed{{{f()}}}\n\\]"),
        ("minerva", f"{r()}\nFinal Answer: The final answer is ${f()}$. I hope it is correct."),
        ("phrase", f"{r()} So the answer is ${f()}$."),
        ("answer_colon", f"{r()}\n\nAnswer: ${f()}$"),
        ("answer_tag", f"<think>{r()}</think>\n<answer>{f()}</answer>"),
        ("answer_tag_boxed", f"{r()}\n<answer>\\boxed{{{f()}}}</answer>"),
        ("bold_plain", f"{r()}\n\nThe answer is **{ans.plain}**."),
        ("bold_alone", f"{r()}\n\n**${f()}$**"),
        ("think_then_box", f"<think>{r()} I get $\\boxed{{{f()}}}$.</think>\nThe final answer is $\\boxed{{{f()}}}$."),
        (
            "revised",
            f"{r()} So $\\boxed{{{wrong}}}$. Wait, I dropped a term. Redoing it: {r()} So $\\boxed{{{f()}}}$.",
        ),
        ("box_with_space", f"{r()} Hence $\\boxed {{{f()}}}$."),
        ("trailing_remark", f"{r()} The answer is $\\boxed{{{f()}}}$.\n\nI hope this helps!"),
        ("gsm8k", f"{r()}\n#### {ans.plain}"),
        ("bare", f"${f()}$"),
        ("heading", f"{r()}\n\n**Final Answer**\n\\[\n\\boxed{{{f()}}}\n\\]"),
        ("think_closed_answer_after", f"{r()}</think>\n\nThe answer is $\\boxed{{{f()}}}$."),
        ("conclusion", f"{r()} Therefore, the value we want is ${f()}$."),
        ("answer_would_be", f"{r()} The answer would be ${f()}$."),
        ("answer_on_next_line", f"{r()}\n\nThe final answer is:\n\n$$\n{f()}\n$$"),
        ("checked_after", f"{r()} So $\\boxed{{{f()}}}$.\n\nThis matches the form the question asks for."),
        # correct, but the grader is expected to reject them (numbers after the answer are taken as a new answer)
        ("verified_after_with_numbers", f"{r()} So $\\boxed{{{f()}}}$. Check: {r()}"),
        ("reason_after_answer", f"{r()} The answer is ${f()}$ because {r()[:-1].lower()}."),
    ]
    return out


def _structural_near_misses(ans: _Answer, rng: random.Random) -> list[tuple[str, str]]:
    """(class, completion): the right value given, then contradicted, hedged or never committed to."""
    f = lambda: rng.choice(ans.forms)  # noqa: E731
    r = lambda: _reasoning(rng)  # noqa: E731
    w = _wrong_form(ans, rng)
    w_plain = w if "\\" not in w and "{" not in w else f"${w}$"
    out = [
        ("retraction_after_box", f"{r()} So $\\boxed{{{f()}}}$. Wait, that's not right; it should be {w_plain}."),
        ("later_answer_plain", f"{r()} So $\\boxed{{{f()}}}$.\n\nOn reflection, the final answer is {w_plain}."),
        ("later_box_with_space", f"{r()} So $\\boxed{{{f()}}}$, hmm, let me redo: $\\boxed {{{w}}}$."),
        ("later_box_no_braces", f"{r()} So $\\boxed{{{f()}}}$ then $\\boxed{w.replace(' ', '')}$"),
        ("later_mathbf", f"{r()} $\\boxed{{{f()}}}$\n\n$\\mathbf{{{w}}}$"),
        ("later_unclosed_box", f"{r()} So $\\boxed{{{f()}}}$. Final: $\\boxed{{{w}"),
        ("think_box_then_other", f"<think>{r()} So $\\boxed{{{f()}}}$.</think>\nThe final answer is {w_plain}."),
        ("hedge_or_plain", f"{r()} The answer is {ans.plain} or {w_plain}."),
        ("hedge_boxed_text", f"{r()} $\\boxed{{{f()} \\text{{ (or }} {w} \\text{{)}}}}$"),
        ("two_boxes_one_sentence", f"{r()} It is $\\boxed{{{f()}}}$ or $\\boxed{{{w}}}$."),
        ("tag_after_box", f"{r()} $\\boxed{{{f()}}}$\n<answer>{w}</answer>"),
        ("no_commitment", f"{r()} It might be {ans.plain}, but I am not sure."),
        ("retraction_no_number", f"{r()} So $\\boxed{{{f()}}}$. Hmm, actually that is wrong."),
        ("later_answer_tag_plain", f"<answer>{f()}</answer>\nActually the answer is {w_plain}."),
        ("truncated_after_answer", f"<think>{r()} So the answer is ${f()}$, but let me double-check: {r()}"),
        ("conclusion_hedged", f"{r()} So it is probably ${f()}$, or maybe {w_plain}."),
        ("answer_as_question", f"{r()} Is the answer ${f()}$?"),
        ("retraction_meant_other", f"{r()} $\\boxed{{{f()}}}$. Sorry, I meant the other one."),
    ]
    return out


def _value_near_misses(ans: _Answer, rng: random.Random) -> list[tuple[str, str]]:
    """(class, completion): a wrong value written as a final answer in one of the correct ways."""
    out = []
    for name, wrong in ans.near.items():
        r = _reasoning(rng)
        shape = rng.choice(["box", "phrase", "tag", "minerva"])
        text = {
            "box": f"{r} Therefore the answer is $\\boxed{{{wrong}}}$.",
            "phrase": f"{r} So the answer is ${wrong}$.",
            "tag": f"<think>{r}</think>\n<answer>{wrong}</answer>",
            "minerva": f"{r}\nFinal Answer: The final answer is ${wrong}$. I hope it is correct.",
        }[shape]
        out.append((f"value:{name}", text))
    return out


def make_corpus(seed: int, rounds: int = 3) -> list[Case]:
    """The labelled corpus of one generator seed.

    Args:
        seed: Generator seed (DEV_SEEDS for development, HELD_OUT_SEEDS for reporting).
        rounds: Reference answers drawn per answer type; each round writes every class once.

    Returns:
        The cases, in generation order.
    """
    rng = random.Random(seed)
    cases: list[Case] = []
    for _ in range(rounds):
        for make in _TYPES:
            ans = make(rng)
            for cls, text in _correct_cases(ans, rng):
                cases.append(Case(text, ans.reference, 1, ans.kind, cls))
            for cls, text in _structural_near_misses(ans, rng) + _value_near_misses(ans, rng):
                cases.append(Case(text, ans.reference, 0, ans.kind, cls))
    return cases
