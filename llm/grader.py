"""The final-answer rule of the accuracy reward: which span of a completion is its answer, whether the completion
commits to it, and the written-form rules it must pass before math-verify compares it with the reference.

Why a rule of our own. A reward that pays for a wrong answer is what an RL policy learns to exploit. math-verify
is a good engine for *equivalence* (``\\frac{1}{2}`` = ``0.5`` = ``1/2``) but not a judge of *which* answer a
completion gives: handed a whole completion, or the last ``\\boxed{}`` of one, it pays for a boxed 42 followed by
"wait, it is 43", for "42 or 43", for a decimal within 1e-6 of the reference and for ``\\boxed{42\\%}``. So this
module decides, in the parent process, in linear time, without math-verify and without evaluating anything:

1. **The final answer** (``final_answer``): the last answer-bearing span of the completion, where a span is a
   ``\\boxed{...}`` or ``\\fbox{...}`` (a space before the brace is allowed: TeX ignores it), an
   ``<answer>...</answer>`` tag, an answer phrase ("the answer is ...", "Final answer: ...", "the correct option
   is ...", a "Final Answer" heading line, a GSM8K ``#### ...`` line), or a bold value (``**79/173**``,
   ``\\mathbf{43}``). A completion with none of these counts only when it is a bare value as a whole ("42",
   "$\\frac12$") or ends on a concluding sentence ("So there are 42 apples."). Answers inside a ``<think>``
   block are spans like any other, so a later answer supersedes them.
2. **Commitment.** The completion scores 0 when its final span is malformed (``\\boxed43``, an unclosed box or
   tag, an empty box), when what follows it holds a number, a box, a multiple-choice letter or a retraction or
   hedge word ("wait", "actually", "or", "not", ...), when the sentence holding it offers an alternative
   ("42 or \\boxed{43}", two different boxes in one sentence), or when the span holds several boxes. Ambiguity
   means wrong: a false reject costs a little signal, a false accept teaches the policy to cheat.
3. **Written form** (``decide``): harmless notation is normalised (LaTeX and Unicode thin spaces inside numbers,
   ``28\\,080``; Unicode minus; ``42.``; ``\\dfrac``; bold; ``$``); then an answer is wrong when it adds a percent
   sign, a base subscript (``42_{16}``), a ``\\pm``, a number inside ``\\text{}`` or a hedge word that the
   reference does not have, or (``AnswerRules.lowest_terms``) a fraction not in lowest terms where the reference's
   fractions are reduced. Two plain numbers are compared here exactly as rationals (``AnswerRules.decimal_match``:
   ``2.50`` = ``5/2``, ``2.5000001`` != ``2.5``, ``0.333`` != ``1/3``), and a terminating decimal never equals a
   reference that is not a plain number (``1.4142`` for ``\\sqrt{2}``). Multiple-choice letters are compared here.
   Everything else goes to math-verify, with decimals rewritten as exact fractions so its float tolerance cannot
   pay for a near miss.

Nothing here calls ``eval`` or imports math-verify; every scan is a regex without nested quantifiers (possessive
where it could backtrack) or a single pass, and an answer longer than ``MAX_ANSWER_CHARS`` is refused, so hostile
text of any size costs linear time.
"""

from __future__ import annotations

import bisect
import math
import re
from dataclasses import dataclass
from fractions import Fraction
from typing import Literal

__all__ = ["MAX_ANSWER_CHARS", "AnswerRules", "Decision", "FinalAnswer", "decide", "final_answer", "normalise"]

MAX_ANSWER_CHARS = 1000
"""A final answer longer than this is refused (no real answer is; it bounds the cost of the checks)."""

_PHRASE_VALUE_CHARS = 400  # an answer phrase's value ends at the sentence end, or this many characters on
_LEAD_IN_CHARS = 300  # how far back the sentence holding the final answer is searched for an alternative
_LAST_PHRASES = 16  # only the last phrases can hold the final answer; older ones are not scanned (linear time)
_MAX_NUMBER_DIGITS = 200  # longer digit strings are left to math-verify (Python's int() refuses > 4300 digits)
_MAX_NUMBER_CHARS = 300  # a plain number with its unit is never longer; keeps the suffix regexes short
_BOLD_VALUE_CHARS = 200  # bold text longer than this is emphasis, not an answer

# --- tokens -------------------------------------------------------------------------------------------------------
_BRACE_TOKENS = re.compile(r"\\.|[{}]", re.DOTALL)  # an escaped character (\{, \}, \\) or a brace
_BOX = re.compile(r"\\(?:boxed|fbox(?!sep|rule))")  # \boxedB, \boxed43 too: a box whose argument is unclear
_BOLD_CMD = re.compile(r"\\(?:mathbf|textbf|boldsymbol|bm)(?![A-Za-z])[ \t]*+(?=\{)")
_BOLD_STARS = re.compile(r"\*\*")
_NON_SPACE = re.compile(r"\S")
_TAG_OPEN = re.compile(r"<answer>", re.IGNORECASE)
_TAG_CLOSE = re.compile(r"</answer>", re.IGNORECASE)
_THINK_CLOSE = "</think>"
# "answer is", "answer:", "Answer**:", "answer =" ("final"/"correct" in front are part of the sentence, not needed)
_ANSWER_IS = re.compile(
    r"(?i)(?<![a-z])(?:answer|(?:correct|right)[ \t]++(?:option|choice))(?![a-z])(?:[ \t]*+\*\*)?[ \t]*+"
    r"(?:(?:is|would[ \t]++be|will[ \t]++be|equals)(?![a-z])[ \t]*+:?|:|=)"
)
_FINAL_HEADING = re.compile(r"(?i)(?<![a-z])final[ \t]++answer(?![a-z])[ \t*#:]*+\n")  # "## Final Answer\n42"
_HASHES = re.compile(r"(?m)^[ \t]*+####")  # GSM8K's "#### 42"
_SENTENCE_END = re.compile(r"\n|[.!?](?=\s)")
# with no answer span at all, a concluding last sentence: "So there are 42 apples.", "Therefore $x = 42$."
_CONCLUSION = re.compile(
    r"(?i)(?<![a-z])(?:so|thus|therefore|hence|finally)(?![a-z])[^\n]{0,160}?"
    r"(?:(?<![a-z])(?:is|are|equals|gives|get|makes)(?![a-z])|=)[ \t]*+"
)

# words that retract, doubt or offer an alternative; after the final answer, or inside it, they mean "not committed"
_RETRACTION = (
    r"wait|actually|however|but|no|not|nope|wrong|incorrect|mistake|mistaken|error|oops|sorry|correction|"
    r"instead|rather|recheck|re-check|recalculate|recompute|reconsider|revisit|redo|retry|scratch|ignore|"
    r"disregard|retract|typo|miscalculat\w*|hmm+|hold on|either|maybe|perhaps|possibly|alternatively|unless|"
    r"except|otherwise|unsure|doubt|guess|mean|meant|approx\w*|about|around|roughly|nearly|almost"
)
_NUMBER_WORD = re.compile(
    r"(?i)(?<![a-z])(?:zero|one|two|three|four|five|six|seven|eight|nine|ten|eleven|twelve|thirteen|fourteen|"
    r"fifteen|sixteen|seventeen|eighteen|nineteen|twenty|thirty|forty|fifty|sixty|seventy|eighty|ninety|hundred|"
    r"thousand|million|billion|half|third|quarter)(?![a-z])"
)
_RETRACTION_WORD = re.compile(rf"(?i)(?<![\\a-z])(?:{_RETRACTION})(?![a-z])")
_ALTERNATIVE_WORD = re.compile(r"(?i)(?<![\\a-z])(?:or|and)(?![a-z])|\\lor(?![a-z])|\\vee(?![a-z])|\?")
_OR_WORD = re.compile(r"(?i)(?<![\\a-z])or(?![a-z])")  # after the final answer
_LEAD_IN_HEDGE = re.compile(r"(?i)(?<![a-z])(?:or|either|maybe|perhaps|possibly)[^a-z0-9]*+$")
_PAREN_LETTER = re.compile(r"\(\s*[A-Ja-j]\s*\)|(?<![A-Za-z\\])[A-J]\)")  # "(C)", "C)": another choice named
_CHOICE_LETTERS = re.compile(r"(?<![A-Za-z\\])(?:[A-J]{2,}|[B-HJ])(?![A-Za-z])")  # C, BA; not A or I (words)
_WORD = re.compile(r"(?<![\\A-Za-z])[A-Za-z]{2,}")  # a word of two or more letters that is not a LaTeX command

# --- normalisation ------------------------------------------------------------------------------------------------
_UNICODE = str.maketrans(
    {
        "\u2212": "-",  # minus sign
        "\ufe63": "-",  # small hyphen-minus
        "\uff0d": "-",  # fullwidth hyphen-minus
        "\u00a0": " ",  # no-break space
        "\u2007": " ",  # figure space
        "\u2008": " ",  # punctuation space
        "\u2009": " ",  # thin space
        "\u200a": " ",  # hair space
        "\u202f": " ",  # narrow no-break space (SI thousands separator)
        "\u200b": "",  # zero-width space
        "\u00d7": "\\times ",
        "\u00f7": "\\div ",
        "\u00b7": "\\cdot ",
        "\u03c0": "\\pi ",
        "\u221e": "\\infty ",
        "\u00b0": "^\\circ",
        "\u2264": "\\le ",
        "\u2265": "\\ge ",
        "\u00b1": "\\pm ",
        "\u2248": "\\approx ",
        "\u221a": "\\sqrt",
    }
)
_LATEX_SPACE = re.compile(r"\\[,;:! ]|~|\\q?quad(?![A-Za-z])")
_SPACES = re.compile(r"\s+")
_GROUPED_SPACES = re.compile(r"(?<![0-9.])([0-9]{1,3})((?: [0-9]{3})++)(?![0-9])")  # 28 080 -> 28080
_GROUPED_COMMAS = re.compile(r"[+-]?[0-9]{1,3}(?:,[0-9]{3})++(?:\.[0-9]+)?")  # the whole value: 28,080.5
_FRAC_VARIANT = re.compile(r"\\[dtc]frac(?![A-Za-z])")
_LEFT_RIGHT = re.compile(r"\\(?:left|right)(?![A-Za-z])|\\displaystyle(?![A-Za-z])")
_WRAPPERS = (("$$", "$$"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]"), ("**", "**"))
_WRAP_CMD = re.compile(r"\\(boxed|fbox|mathbf|textbf|boldsymbol|bm|mathrm|text|textrm|mbox|num)[ \t]*+(?=\{)")
_TEXT_CMDS = frozenset({"text", "textrm", "mathrm", "mbox"})  # a value wrapped in these stays text ...
_NUMBERLIKE = re.compile(r"[ ]*+[+-]?[0-9][0-9.,/ ]*+")  # ... unless it is a number: \text{42}
_CHOICE_PREFIX = re.compile(r"(?i)^(?:option|choice|answer)\s*:?\s*")
_CHOICE = re.compile(r"\(?([A-Ja-j])\)?\.?")

# --- written-form checks ------------------------------------------------------------------------------------------
_PERCENT = re.compile(r"\\?%|(?i:percent)")
_BASE_SUBSCRIPT = re.compile(r"[0-9)}]\s*_")  # 42_{16}, (101)_2; x_1 is a variable
_PLUS_MINUS = re.compile(r"\\pm(?![A-Za-z])|\\mp(?![A-Za-z])")
_APPROXIMATE = re.compile(r"\\approx(?![A-Za-z])|\\sim(?![A-Za-z])|\\simeq(?![A-Za-z])")
_NUMBER_IN_TEXT = re.compile(r"\\(?:text|textrm|mathrm|mbox|operatorname)\s*\{[^{}]*[0-9]")
_FRACTION_LITERAL = re.compile(
    r"\\frac\{\s*[+-]?\s*([0-9]+)\s*\}\{\s*[+-]?\s*([0-9]+)\s*\}|\\frac([0-9])([0-9])|"
    r"(?<![0-9A-Za-z.}\])])([0-9]+)\s*/\s*([0-9]+)(?![0-9.])"
)
_MULTI_VALUED = re.compile(r";|\\cup(?![A-Za-z])|\\pm(?![A-Za-z])|\\mp(?![A-Za-z])|(?<![\\a-z])(?:or|and)(?![a-z])")
_DECIMAL = re.compile(r"(?<![0-9.])([0-9]*)\.([0-9]+)(?![0-9.])")

# --- plain numbers ------------------------------------------------------------------------------------------------
_NUM_DECIMAL = re.compile(r"([+-]?)([0-9]*)(?:\.([0-9]*))?")
_NUM_FRAC = re.compile(r"([+-]?)\\frac\{([+-]?)([0-9]+)\}\{([+-]?)([0-9]+)\}|([+-]?)\\frac([0-9])([0-9])")
_NUM_SLASH = re.compile(r"([+-]?)([0-9]+)/([0-9]+)")
_SPACE_NOT_IN_DIGITS = re.compile(r"(?<![0-9]) | (?![0-9])")
_ASSIGNMENT = re.compile(r"[A-Za-z](?:_\{?[A-Za-z0-9]+\}?)?=")  # x=, x_1=
_CURRENCY = re.compile(r"\\?\$")
# quadratic on a long run of units, so only ever applied to _MAX_NUMBER_CHARS characters (in _number)
_UNIT_SUFFIX = re.compile(
    r"(?:\\(?:text|textrm|mathrm|mbox)\{[A-Za-z^ .]*\}(?:\^\{?[23]\}?)?|\^\{?\\circ\}?|\\circ|\\degree)+$"
)
_PERCENT_SUFFIX = re.compile(r"(?:\\?%|\\text\{\s*\\?%\s*\}|\\text\{\s*percent\s*\})$")


@dataclass(frozen=True)
class FinalAnswer:
    """The answer a completion commits to, or why it commits to none.

    Attributes:
        answer: The final span's text (LaTeX as written, not yet normalised); None when the completion scores 0
            whatever the reference is.
        kind: Where the answer came from ("box", "tag", "phrase", "bold", "bare", "conclusion"), or why there
            is none: "no_answer", "malformed" (``\\boxed43``, an unclosed box or tag, an empty box), "retracted"
            (a number, box, choice letter or retraction word follows), "hedged" (an alternative in the same
            sentence), or "several" (more than one box in the final span).
    """

    answer: str | None
    kind: str


@dataclass(frozen=True)
class AnswerRules:
    """Options of the written-form rules (``RewardConfig`` carries them; see its field docs)."""

    lowest_terms: bool = True
    """A fraction in the answer must be in lowest terms unless the reference has an unreduced fraction."""
    decimal_match: Literal["exact", "rounded"] = "exact"
    """exact: numbers equal as rationals; rounded: a decimal answer with more places than a decimal reference
    counts when it rounds (half away from zero) to the reference at the reference's places."""

    def __post_init__(self) -> None:
        if self.decimal_match not in ("exact", "rounded"):
            raise ValueError(f"decimal_match must be 'exact' or 'rounded', got {self.decimal_match!r}")


@dataclass(frozen=True)
class Decision:
    """What ``decide`` concluded about one completion.

    Attributes:
        score: 1.0 or 0.0 when decided here; None when math-verify must compare ``prediction`` and ``reference``.
        reason: A short code saying why (``FinalAnswer.kind`` for an extraction failure, else e.g. "numbers",
            "percent", "not_lowest_terms", "choice", "same_text", "math_verify").
        prediction: The normalised answer, decimals written as exact fractions (for math-verify).
        reference: The normalised reference, decimals written as exact fractions (for math-verify).
    """

    score: float | None
    reason: str
    prediction: str = ""
    reference: str = ""


@dataclass(frozen=True)
class _Span:
    start: int  # first character of the span (the phrase, the box command, the tag)
    end: int  # one past its last character
    value_start: int
    value_end: int
    kind: str
    malformed: bool = False


@dataclass(frozen=True)
class _Number:
    value: Fraction
    places: int | None  # digits after the decimal point as written; None for integers and fractions
    percent: bool


# ----------------------------------------------------------------------------------------------------------------
# Which span is the final answer
# ----------------------------------------------------------------------------------------------------------------


def _brace_pairs(text: str) -> dict[int, int]:
    """{position of '{': position of its '}'} for every balanced pair, in one pass (escaped braces skipped)."""
    stack: list[int] = []
    pairs: dict[int, int] = {}
    for m in _BRACE_TOKENS.finditer(text):
        tok = m.group()
        if tok == "{":
            stack.append(m.start())
        elif tok == "}" and stack:
            pairs[stack.pop()] = m.start()
    return pairs


def _box_spans(text: str, pairs: dict[int, int]) -> list[_Span]:
    spans = []
    for m in _BOX.finditer(text):
        j = m.end()
        while j < len(text) and j - m.end() < 8 and text[j] in " \t\n":  # TeX skips spaces before an argument
            j += 1
        if j < len(text) and text[j] == "{":
            close = pairs.get(j)
            if close is None:  # unclosed: it runs to the end of the text, so nothing after it can be the answer
                spans.append(_Span(m.start(), len(text), j + 1, len(text), "box", malformed=True))
            else:  # searched in place: slicing every box of a deep nest would copy quadratically
                empty = _NON_SPACE.search(text, j + 1, close) is None
                spans.append(_Span(m.start(), close + 1, j + 1, close, "box", malformed=empty))
        else:  # \boxed43, \boxed 43: TeX would box only the first token; which answer was meant is unclear
            k = j
            while k < len(text) and k - j < 40 and not text[k].isspace():
                k += 1
            spans.append(_Span(m.start(), max(k, m.end()), j, k, "box", malformed=True))
    return spans


def _tag_spans(text: str) -> list[_Span]:
    closes = [m.start() for m in _TAG_CLOSE.finditer(text)]
    spans = []
    for m in _TAG_OPEN.finditer(text):
        i = bisect.bisect_left(closes, m.end())
        if i == len(closes):
            spans.append(_Span(m.start(), len(text), m.end(), len(text), "tag", malformed=True))
        else:
            spans.append(_Span(m.start(), closes[i] + len("</answer>"), m.end(), closes[i], "tag"))
    return spans


def _looks_like_a_value(s: str) -> bool:
    """A short math value: no newline, no word of two or more letters outside braces and commands, and a digit,
    a LaTeX command or a single letter in it (so "Step 1" and "Note" are not values, "79/173" and "(B)" are)."""
    s = s.strip().strip("$").strip()
    if not s or len(s) > _BOLD_VALUE_CHARS or "\n" in s:
        return False
    depth = 0
    flat = []
    for ch in s:
        depth += {"{": 1, "}": -1}.get(ch, 0)
        flat.append(ch if depth == 0 else " ")
    if _WORD.search("".join(flat)):
        return False
    return any(ch.isdigit() for ch in s) or "\\" in s or sum(ch.isalpha() for ch in s) == 1


def _bold_spans(text: str, pairs: dict[int, int]) -> list[_Span]:
    spans = []
    stars = [m.start() for m in _BOLD_STARS.finditer(text)]
    for a, b in zip(stars[::2], stars[1::2]):
        if b - a <= _BOLD_VALUE_CHARS and _looks_like_a_value(text[a + 2 : b]):
            spans.append(_Span(a, b + 2, a + 2, b, "bold"))
    for m in _BOLD_CMD.finditer(text):
        close = pairs.get(m.end())  # length checked before slicing: nested \mathbf{ would copy quadratically
        if (
            close is not None
            and close - m.end() <= _BOLD_VALUE_CHARS
            and _looks_like_a_value(text[m.end() + 1 : close])
        ):
            spans.append(_Span(m.start(), close + 1, m.end() + 1, close, "bold"))
    return spans


def _phrase_value_end(text: str, start: int, pairs: dict[int, int]) -> tuple[int, int | None, bool]:
    """Where an answer phrase's value ends: (end, start of its first word outside braces or None, malformed).

    The value runs to the end of its line or sentence (a '.', '!' or '?' followed by a space), at most
    _PHRASE_VALUE_CHARS characters; braces are skipped whole, so a box's content never ends it."""
    limit = min(len(text), start + _PHRASE_VALUE_CHARS)
    i, first_word = start, None
    while i < limit:
        ch = text[i]
        if ch == "{":
            close = pairs.get(i)
            if close is None:
                return len(text), first_word, True
            i = close + 1
            continue
        if ch == "\\":
            j = i + 1
            while j < len(text) and text[j].isalpha():
                j += 1
            i = max(j, i + 2)
            continue
        if ch == "\n" or (ch in ".!?" and (i + 1 == len(text) or text[i + 1].isspace())):
            return i, first_word, False
        if first_word is None and ch.isalpha() and i + 1 < len(text) and text[i + 1].isalpha():
            if i == 0 or not text[i - 1].isalpha():
                first_word = i
        i += 1
    return min(i, len(text)), first_word, False


def _math_end(text: str, start: int) -> int | None:
    """When text[start:] opens with $$, $, \\[ or \\(, the end of that math (after its closer, at most
    _PHRASE_VALUE_CHARS on); else None."""
    for left, right in (("$$", "$$"), ("\\[", "\\]"), ("\\(", "\\)"), ("$", "$")):
        if text.startswith(left, start):
            close = text.find(right, start + len(left), start + _PHRASE_VALUE_CHARS)
            while right == "$" and close > 0 and text[close - 1] == "\\":  # \$ is a dollar sign, not a closer
                close = text.find(right, close + 1, start + _PHRASE_VALUE_CHARS)
            return None if close < 0 else close + len(right)
    return None


def _phrase_spans(text: str, pairs: dict[int, int]) -> list[_Span]:
    matches = list(_ANSWER_IS.finditer(text)) + list(_FINAL_HEADING.finditer(text)) + list(_HASHES.finditer(text))
    matches.sort(key=lambda m: m.start())
    matches = matches[-_LAST_PHRASES:]
    spans = []
    for k, m in enumerate(matches):
        v0 = m.end()
        while v0 < len(text) and text[v0] in " \t\n*" and v0 - m.end() < 20:
            v0 += 1
        math_end = _math_end(text, v0)
        if math_end is not None:  # "$42$ apples", "$$\n42\n$$": the value is the math
            end, word, malformed = math_end, None, False
        else:
            end, word, malformed = _phrase_value_end(text, v0, pairs)
        if k + 1 < len(matches) and matches[k + 1].start() < end:
            continue  # "Final Answer: The final answer is $42$": the inner phrase holds the value
        if word is not None and text[v0:word].strip(" \t$*:") and _has_content(text[v0:word]):
            end = word  # "42 apples", "42 or 43": the value is the math before the first word
        while end > v0 and text[end - 1] in " \t*":  # "is **42**."
            end -= 1
        if end > v0:
            spans.append(_Span(m.start(), end, v0, end, "phrase", malformed=malformed))
    return spans


def _has_content(s: str) -> bool:
    return any(ch.isalnum() for ch in s) or "\\" in s


def _conclusion_span(text: str, region_start: int, pairs: dict[int, int]) -> _Span | None:
    """The value of a concluding last sentence ("So there are 42 apples.") when the completion has no answer span:
    the sentence must start with so/thus/therefore/hence/finally, hold "is"/"are"/"="/... and no retraction or
    hedge word; its value is what follows, up to the first word."""
    end = len(text.rstrip().rstrip(".!").rstrip())
    lo = max(region_start, end - _LEAD_IN_CHARS)
    start = lo
    for m in _SENTENCE_END.finditer(text, lo, end):
        start = m.end()
    sentence = text[start:end]
    if _RETRACTION_WORD.search(sentence) or _OR_WORD.search(sentence) or "?" in sentence:
        return None
    m = _CONCLUSION.search(sentence)
    if m is None:
        return None
    v0 = start + m.end()
    value_end, word, malformed = _phrase_value_end(text, v0, pairs)
    if word is not None and _has_content(text[v0:word]):
        value_end = word
    while value_end > v0 and text[value_end - 1] in " \t":
        value_end -= 1
    if malformed or not _looks_like_a_value(text[v0:value_end]):
        return None
    return _Span(start + m.start(), value_end, v0, value_end, "conclusion")


def _drop_contained(spans: list[_Span]) -> list[_Span]:
    """Spans not inside another span (a box inside an answer phrase belongs to the phrase), sorted by end."""
    spans = sorted(spans, key=lambda s: (s.start, -s.end))
    kept: list[_Span] = []
    outer_end = -1
    for s in spans:
        if s.end <= outer_end:
            continue
        kept.append(s)
        outer_end = s.end
    return sorted(kept, key=lambda s: (s.end, -s.start))


def _lead_in_start(text: str, pos: int) -> int:
    """Start of the sentence that holds position pos (at most _LEAD_IN_CHARS back)."""
    lo = max(0, pos - _LEAD_IN_CHARS)
    start = lo
    for m in _SENTENCE_END.finditer(text, lo, pos):
        start = m.end()
    return start


def final_answer(text: str) -> FinalAnswer:
    """The answer a completion commits to: its last answer-bearing span, if nothing after it or beside it
    retracts or hedges it (module docstring, points 1-2). Linear time in len(text).

    Args:
        text: The completion (untrusted).

    Returns:
        The final span's text and kind, or ``answer=None`` and the reason there is none.

    >>> final_answer("6 x 7 = 42, so \\\\boxed{42}.")
    FinalAnswer(answer='42', kind='box')
    >>> final_answer("\\\\boxed{42}. Wait, that is wrong: 43.")
    FinalAnswer(answer=None, kind='retracted')
    """
    text = text.translate(_UNICODE)
    pairs = _brace_pairs(text)
    spans = _box_spans(text, pairs) + _tag_spans(text) + _bold_spans(text, pairs) + _phrase_spans(text, pairs)
    if not spans:
        region_start = text.rfind(_THINK_CLOSE) + len(_THINK_CLOSE) if _THINK_CLOSE in text else 0
        value = text[region_start:].strip()
        if len(value) <= MAX_ANSWER_CHARS and _looks_like_a_value(
            value.rstrip(".").replace("\\[", "").replace("\\]", "")
        ):
            return FinalAnswer(value, "bare")
        conclusion = _conclusion_span(text, region_start, pairs)
        if conclusion is None:
            return FinalAnswer(None, "no_answer")
        spans = [conclusion]
    kept = _drop_contained(spans)
    final = kept[-1]
    if final.malformed:
        return FinalAnswer(None, "malformed")
    value = text[final.value_start : final.value_end]
    if len(value) > MAX_ANSWER_CHARS:
        return FinalAnswer(None, "malformed")
    inner = _box_spans(value, _brace_pairs(value))  # "answer is $x = \\boxed{3}$": the box is the answer
    if inner:
        box = inner[0]
        outside = value[: box.start] + value[box.end :]
        if len(inner) > 1 or any(ch.isdigit() for ch in outside):  # two answers in one span: 42 \boxed{43}
            return FinalAnswer(None, "several")
        if box.malformed:
            return FinalAnswer(None, "malformed")
        value = value[box.value_start : box.value_end]
    # what follows the final answer: no number, no other choice, no retraction
    after = text[final.end :]
    if any(ch.isdigit() for ch in after) or "?" in after or _BOX.search(after) or _TAG_OPEN.search(after):
        return FinalAnswer(None, "retracted")
    if _RETRACTION_WORD.search(after) or _OR_WORD.search(after) or _NUMBER_WORD.search(after):
        return FinalAnswer(None, "retracted")
    if _PAREN_LETTER.search(after):
        return FinalAnswer(None, "retracted")
    if _choice_letter(normalise(value)) and _CHOICE_LETTERS.search(after):
        return FinalAnswer(None, "retracted")
    # the sentence that holds it: no "... or" just before it, no different answer beside it
    lead_start = _lead_in_start(text, final.start)
    if _LEAD_IN_HEDGE.search(text[lead_start : final.start]):
        return FinalAnswer(None, "hedged")
    mine = normalise(value)
    for other in kept[:-1]:
        if other.end > lead_start and other.end <= final.start:
            if other.malformed or other.value_end - other.value_start > MAX_ANSWER_CHARS:
                return FinalAnswer(None, "hedged")
            if normalise(text[other.value_start : other.value_end]) != mine:
                return FinalAnswer(None, "hedged")
    return FinalAnswer(value, final.kind)


# ----------------------------------------------------------------------------------------------------------------
# Normalisation and the written-form rules
# ----------------------------------------------------------------------------------------------------------------


def _unwrap(s: str) -> str:
    """Strip what surrounds a value without changing it: spaces, $...$, \\(...\\), \\[...\\], **...**, one pair
    of braces or one wrapping \\boxed/\\mathbf/\\text command, trailing punctuation ('42.' is 42)."""
    for _ in range(10):
        before = s
        s = s.strip().rstrip(".,;:").strip().strip("*").strip()
        for left, right in _WRAPPERS:
            if len(s) >= len(left) + len(right) and s.startswith(left) and s.endswith(right):
                s = s[len(left) : -len(right)]
                break
        if len(re.findall(r"(?<!\\)\$", s)) % 2:  # a value cut out of "$x = 42$" keeps one '$'
            s = s.strip("$")
        for left, right in (("\\(", "\\)"), ("\\[", "\\]")):
            if s.endswith(right) and left not in s:
                s = s[: -len(right)]
            elif s.startswith(left) and right not in s:
                s = s[len(left) :]
        m = _WRAP_CMD.match(s)
        start = m.end() if m else 0
        if s[start : start + 1] == "{" and _brace_pairs(s).get(start) == len(s) - 1:
            inner = s[start + 1 : -1]
            if m is None or m.group(1) not in _TEXT_CMDS or _choice_letter(inner) or _NUMBERLIKE.fullmatch(inner):
                s = inner  # a \text{...} value stays wrapped (math-verify reads it as text), but \text{(B)} is B
        if s == before:
            break
    return s


def normalise(value: str) -> str:
    """The answer (or reference) in a canonical written form; the value is unchanged.

    Unicode minus and spaces, LaTeX thin spaces, ``\\dfrac``/``\\tfrac``, ``\\left``/``\\right``, wrapping
    ``$``/bold/box/braces and trailing punctuation are normalised; digit groups separated by (thin) spaces are
    joined (``28\\,080`` is 28080), as are comma groups when the whole value is one number (``28,080``).

    >>> normalise("$\\\\boxed{28\\\\,080.}$")
    '28080'
    """
    s = value.translate(_UNICODE).replace("{,}", ",")
    s = _LATEX_SPACE.sub(" ", s)
    s = _FRAC_VARIANT.sub(r"\\frac", s)
    s = _LEFT_RIGHT.sub("", s)
    s = _SPACES.sub(" ", s)
    s = _unwrap(s)
    s = _GROUPED_SPACES.sub(lambda m: m.group(1) + m.group(2).replace(" ", ""), s)
    if _GROUPED_COMMAS.fullmatch(s):
        s = s.replace(",", "")
    if s.startswith("+"):
        s = s[1:].lstrip()
    return s


def _choice_letter(s: str) -> str | None:
    """The letter of a multiple-choice answer written as B, (B), B), \\text{(B)}, option B; else None."""
    s = _CHOICE_PREFIX.sub("", s.strip())
    m = _CHOICE.fullmatch(s)
    return m.group(1) if m else None


def _number(s: str, allow_assignment: bool) -> _Number | None:
    """s as a plain number (integer, decimal, fraction, with an optional percent sign, unit or 'x =' in front),
    or None when it is anything else."""
    if len(s) > _MAX_NUMBER_CHARS:
        return None
    s = _SPACE_NOT_IN_DIGITS.sub("", s)  # "2 8080" is not a number (normalise joined real digit groups)
    if allow_assignment:
        m = _ASSIGNMENT.match(s)
        if m:
            s = s[m.end() :]
    s = _CURRENCY.sub("", s, count=1) if s.startswith(("$", "\\$", "-\\$")) else s
    s = _UNIT_SUFFIX.sub("", s)
    percent = _PERCENT_SUFFIX.search(s) is not None
    if percent:
        s = _PERCENT_SUFFIX.sub("", s)
    if _GROUPED_COMMAS.fullmatch(s):
        s = s.replace(",", "")
    if not s or sum(ch.isdigit() for ch in s) > _MAX_NUMBER_DIGITS:
        return None
    m = _NUM_DECIMAL.fullmatch(s)
    if m and (m.group(2) or m.group(3)):
        sign, whole, frac = m.group(1), m.group(2) or "0", m.group(3)
        value = Fraction(int(whole + (frac or "")), 10 ** len(frac or ""))
        return _Number(-value if sign == "-" else value, len(frac) if frac else None, percent)
    m = _NUM_FRAC.fullmatch(s)
    if m:
        if m.group(3) is not None:
            signs, num, den = (m.group(1), m.group(2), m.group(4)), int(m.group(3)), int(m.group(5))
        else:
            signs, num, den = (m.group(6), "", ""), int(m.group(7)), int(m.group(8))
        if den == 0:
            return None
        negative = sum(x == "-" for x in signs) % 2 == 1
        return _Number(Fraction(-num if negative else num, den), None, percent)
    m = _NUM_SLASH.fullmatch(s)
    if m and int(m.group(3)) != 0:
        value = Fraction(int(m.group(2)), int(m.group(3)))
        return _Number(-value if m.group(1) == "-" else value, None, percent)
    return None


def _numbers_equal(pred: _Number, gold: _Number, decimal_match: str) -> bool:
    if gold.percent and not pred.percent:  # 42% may be answered 42 or 0.42
        return pred.value in (gold.value, gold.value / 100)
    if pred.percent != gold.percent:
        return False
    if decimal_match == "rounded" and gold.places and pred.places and pred.places > gold.places:
        scale = 10**gold.places
        magnitude = math.floor(abs(pred.value) * scale + Fraction(1, 2))  # half away from zero
        rounded = Fraction(magnitude if pred.value >= 0 else -magnitude, scale)
        return rounded == gold.value
    return pred.value == gold.value


def _several_values(s: str) -> bool:
    """True when s lists several values ("1, 3", "x = 2 or x = 3", a union); an interval or a point, whose comma is
    inside brackets, is one value."""
    if _MULTI_VALUED.search(s):
        return True
    depth = 0
    for ch in s:
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        elif ch == "," and depth <= 0:
            return True
    return False


def _unreduced(s: str) -> bool:
    """True when s holds an integer fraction not in lowest terms (2/4, \\frac{6}{3}, \\frac{42}{1})."""
    for m in _FRACTION_LITERAL.finditer(s):
        groups = [g for g in m.groups() if g is not None]
        num, den = int(groups[0]), int(groups[1])
        if den == 1 or (den != 0 and math.gcd(num, den) > 1):
            return True
    return False


def _exact_decimals(s: str) -> str:
    """Decimals written as exact fractions (2.5 -> \\frac{25}{10^{1}}), so math-verify compares rationals exactly
    instead of rounding floats to 6 places."""
    return _DECIMAL.sub(lambda m: f"\\frac{{{int((m.group(1) or '0') + m.group(2))}}}{{10^{{{len(m.group(2))}}}}}", s)


def _reference_text(reference: str) -> str:
    """A reference answer as a value: the content of its last box if it has one (some datasets box theirs)."""
    ref = reference.strip()
    if _BOX.search(ref):
        boxes = [s for s in _box_spans(ref, _brace_pairs(ref)) if not s.malformed]
        if boxes:
            ref = ref[boxes[-1].value_start : boxes[-1].value_end]
    return normalise(ref)


def decide(completion: str, reference: str, rules: AnswerRules | None = None) -> Decision:
    """Grade what can be graded without math-verify, and prepare the rest for it.

    Args:
        completion: The completion (untrusted; the caller limits its size).
        reference: The ground-truth answer (a number, LaTeX, a choice letter; ``$``/``\\boxed{}`` allowed).
        rules: Written-form options; default ``AnswerRules()``.

    Returns:
        A Decision: a score with its reason, or ``score=None`` with the two texts math-verify must compare.

    >>> decide("so \\\\boxed{0.5}", "\\\\frac{1}{2}").score
    1.0
    >>> decide("so \\\\boxed{\\\\frac{2}{4}}", "\\\\frac{1}{2}").reason
    'not_lowest_terms'
    """
    rules = rules or AnswerRules()
    found = final_answer(completion)
    if found.answer is None:
        return Decision(0.0, found.kind)
    pred, gold = normalise(found.answer), _reference_text(reference)
    if not gold:
        return Decision(0.0, "empty_reference")
    if not pred:
        return Decision(0.0, "empty_answer")
    if len(pred) > MAX_ANSWER_CHARS:
        return Decision(0.0, "malformed")
    gold_letter = _choice_letter(gold)
    if gold_letter is not None and gold_letter.isupper():  # a multiple-choice reference: one letter, nothing else
        pred_letter = _choice_letter(pred)
        return Decision(1.0 if pred_letter is not None and pred_letter.upper() == gold_letter else 0.0, "choice")
    if _RETRACTION_WORD.search(pred) and not _RETRACTION_WORD.search(gold):  # "not 42"; a reference "no" is fine
        return Decision(0.0, "hedged")
    if not _several_values(gold) and _ALTERNATIVE_WORD.search(pred):
        return Decision(0.0, "hedged")  # "42 or 43", \boxed{42 \text{ (or 43)}} for a one-value reference
    for name, pattern in (
        ("percent", _PERCENT),
        ("subscript", _BASE_SUBSCRIPT),
        ("plus_minus", _PLUS_MINUS),
        ("approximate", _APPROXIMATE),
        ("number_in_text", _NUMBER_IN_TEXT),
    ):
        if pattern.search(pred) and not pattern.search(gold):
            return Decision(0.0, name)
    if rules.lowest_terms and _unreduced(pred) and not _unreduced(gold):
        return Decision(0.0, "not_lowest_terms")
    pred_num, gold_num = _number(pred, allow_assignment="=" not in gold), _number(gold, allow_assignment=False)
    if pred_num is not None and gold_num is not None:
        return Decision(1.0 if _numbers_equal(pred_num, gold_num, rules.decimal_match) else 0.0, "numbers")
    if pred_num is not None and pred_num.value.denominator != 1 and pred_num.places:
        return Decision(0.0, "decimal_for_exact")  # 1.4142 for \sqrt{2}: a terminating decimal is not exact
    if _SPACE_NOT_IN_DIGITS.sub("", pred) == _SPACE_NOT_IN_DIGITS.sub("", gold):
        return Decision(1.0, "same_text")
    return Decision(None, "math_verify", _exact_decimals(pred), _exact_decimals(gold))
