"""Verifiable arithmetic: a seeded problem generator with difficulty knobs, and an exact verifier.

Environment card (``npo_lab/Arith-v0``)
---------------------------------------
* **Prompt**: ``"{a}{op}{b}="`` with both operands zero-padded to ``digits`` digits, e.g. ``"047+385="``.
  ``op`` is ``+`` (add), ``*`` (mul) or ``%`` (mod_add: (a + b) mod ``modulus``).
* **Completion**: any text ending with the end token ``$``. Only the *final answer* is graded: the digits
  after the last ``:`` (or the whole completion when there is no ``:``), written least-significant digit
  first when ``reverse_answer`` (the order in which a left-to-right model can compute a sum), optionally
  zero-padded. A scratchpad before the ``:`` (carries, a partial product, the unreduced sum) is ignored.
  So one problem has several valid trajectories, e.g. for 047+385 = 432: ``"234$"``, ``"2340$"``,
  ``"110:234$"`` (carries, then the answer): the distance between two policies that both solve it means
  something, and so does the variance cost V of learning from another policy's trajectories.
* **Reward**: 1.0 if the final answer equals the true result, else 0.0. Malformed output scores 0.0; the
  verifier never evaluates model output and bounds the length it reads.
* **Difficulty knobs**: ``digits``, ``operation``, ``modulus``; ``min_digits`` turns the task into a family of operand
  lengths that share one skill (the carry), so what a policy learns on the problems it solves transfers to the ones
  it fails (docs/benefit_map.md).
* **Splits**: ``n_train`` and ``n_eval`` distinct (a, b) pairs, disjoint, drawn with ``seed``.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Literal

END = "$"
SEP = ":"
OPS = {"add": "+", "mul": "*", "mod_add": "%"}
MAX_COMPLETION_CHARS = 64
STYLES = ("bare", "padded", "scratch", "alt")


@dataclass
class ArithmeticConfig:
    """The built-in verifiable arithmetic task (``npo_lab/Arith-v0``)."""

    name: Literal["arith"] = "arith"
    """Task name (one built-in task in this release: arith)."""
    digits: int = 3
    """Operand digits (difficulty knob). [assumption: 3-digit addition shows sparse early success and a plateau]"""
    operation: Literal["add", "mul", "mod_add"] = "add"
    """add: a + b; mul: a * b; mod_add: (a + b) mod modulus."""
    modulus: int = 97
    """Modulus for operation=mod_add."""
    reverse_answer: bool = True
    """Answer written least-significant digit first (what a small left-to-right model can learn)."""
    n_train: int = 4096
    """Training problems (prompt ids index this split)."""
    n_eval: int = 256
    """Held-out evaluation problems, disjoint from the training split."""
    seed: int = 1234
    """Seed of the problem split (fixed across training seeds so every run sees the same data)."""
    min_digits: int = 0
    """Transfer between prompts: if > 0, each problem first draws an operand length L uniformly from min_digits ..
    digits and then both operands below 10**L (zero-padded to ``digits`` in the prompt), so the split mixes short and
    long problems that need the same carry skill; 0 draws every operand below 10**digits (the task as it always was).
    Stands for an RLVR dataset whose prompts share skills across difficulty levels. [assumption: off by default]"""

    def __post_init__(self) -> None:
        if self.name != "arith":
            raise ValueError(f"task.name must be one of ['arith'], got {self.name!r}")
        if self.operation not in OPS:
            raise ValueError(f"task.operation must be one of {sorted(OPS)}, got {self.operation!r}")
        if not 1 <= self.digits <= 6:
            raise ValueError(f"task.digits must be in [1, 6], got {self.digits}")
        if not (self.min_digits == 0 or 1 <= self.min_digits <= self.digits):
            raise ValueError(
                f"task.min_digits must be 0 (off) or in [1, task.digits={self.digits}], got {self.min_digits}"
            )
        if self.modulus < 2:
            raise ValueError(f"task.modulus must be >= 2, got {self.modulus}")
        if self.n_train < 1 or self.n_eval < 1:
            raise ValueError(f"task.n_train and task.n_eval must be >= 1, got {self.n_train}, {self.n_eval}")
        total = (10**self.digits) ** 2
        if self.n_train + self.n_eval > total // 2:
            raise ValueError(
                f"task.n_train + task.n_eval must be at most {total // 2} for {self.digits}-digit operands (the "
                f"distinct pairs that may be drawn), got {self.n_train + self.n_eval}; lower them or raise task.digits"
            )

    @property
    def answer_width(self) -> int:
        """Digits of the largest possible answer."""
        if self.operation == "add":
            return self.digits + 1
        if self.operation == "mul":
            return 2 * self.digits
        return len(str(self.modulus - 1))

    @property
    def max_completion_len(self) -> int:
        """Tokens the longest style needs (scratchpad, separator, padded answer, end token)."""
        return scratch_width(self) + 1 + self.answer_width + 1


@dataclass(frozen=True)
class Problem:
    a: int
    b: int
    answer: int
    prompt: str


def solve(a: int, b: int, cfg: ArithmeticConfig) -> int:
    if cfg.operation == "add":
        return a + b
    if cfg.operation == "mul":
        return a * b
    return (a + b) % cfg.modulus


def make_problem(a: int, b: int, cfg: ArithmeticConfig) -> Problem:
    d = cfg.digits
    return Problem(a, b, solve(a, b, cfg), f"{a:0{d}d}{OPS[cfg.operation]}{b:0{d}d}=")


def make_splits(cfg: ArithmeticConfig) -> tuple[list[Problem], list[Problem]]:
    """Disjoint (train, eval) problem lists, deterministic in ``cfg.seed``."""
    rng = random.Random(cfg.seed)
    hi = 10**cfg.digits
    seen: set[tuple[int, int]] = set()
    pairs: list[tuple[int, int]] = []
    while len(pairs) < cfg.n_train + cfg.n_eval:
        if cfg.min_digits:  # a length first (a length whose pairs are used up just draws again)
            hi = 10 ** rng.randint(cfg.min_digits, cfg.digits)
        p = (rng.randrange(hi), rng.randrange(hi))
        if p not in seen:
            seen.add(p)
            pairs.append(p)
    probs = [make_problem(a, b, cfg) for a, b in pairs]
    return probs[: cfg.n_train], probs[cfg.n_train :]


def scratch_width(cfg: ArithmeticConfig) -> int:
    return {"add": cfg.digits, "mul": cfg.digits + 1, "mod_add": cfg.digits + 1}[cfg.operation]


def scratchpad(p: Problem, cfg: ArithmeticConfig) -> str:
    """An intermediate step the verifier ignores: carries (add), a*(last digit of b) (mul), a+b (mod_add)."""
    if cfg.operation == "add":
        carries, c = [], 0
        for i in range(cfg.digits):  # least-significant digit first
            c = (p.a // 10**i % 10 + p.b // 10**i % 10 + c) // 10
            carries.append(str(c))
        return "".join(carries)
    value = p.a * (p.b % 10) if cfg.operation == "mul" else p.a + p.b
    return f"{value:0{scratch_width(cfg)}d}"[::-1]


def write_answer(value: int, cfg: ArithmeticConfig, pad: bool) -> str:
    s = f"{value:0{cfg.answer_width}d}" if pad else str(value)
    return s[::-1] if cfg.reverse_answer else s


def alt_scratchpad(p: Problem, cfg: ArithmeticConfig) -> str:
    """Another intermediate step of the same width: the units of each digit sum, least significant first
    (add: 047+385 -> 7+5, 4+8, 0+3 -> "223"); for mul and mod_add the scratchpad written the other way round.
    The style of the built-in external teacher: valid, but unlike anything the student was warm-started on."""
    if cfg.operation == "add":
        return "".join(str((p.a // 10**i % 10 + p.b // 10**i % 10) % 10) for i in range(cfg.digits))
    return scratchpad(p, cfg)[::-1]


def format_completion(p: Problem, cfg: ArithmeticConfig, style: str) -> str:
    """A correct completion in one of the styles ``bare``, ``padded``, ``scratch``, ``alt``.

    >>> p = make_problem(47, 385, ArithmeticConfig())
    >>> [format_completion(p, ArithmeticConfig(), s) for s in STYLES]
    ['234$', '2340$', '110:234$', '223:234$']
    """
    if style == "bare":
        return write_answer(p.answer, cfg, pad=False) + END
    if style == "padded":
        return write_answer(p.answer, cfg, pad=True) + END
    if style == "scratch":
        return scratchpad(p, cfg) + SEP + write_answer(p.answer, cfg, pad=False) + END
    if style == "alt":
        return alt_scratchpad(p, cfg) + SEP + write_answer(p.answer, cfg, pad=False) + END
    raise ValueError(f"style must be one of {STYLES}, got {style!r}")


def extract_answer(completion: str, reverse_answer: bool = True) -> int | None:
    """The graded answer of a completion, or None if it has none (no end token, no digits, junk).

    >>> extract_answer("110:234$"), extract_answer("2340$"), extract_answer("23x$"), extract_answer("234")
    (432, 432, None, None)
    """
    if not isinstance(completion, str) or END not in completion[: MAX_COMPLETION_CHARS + 1]:
        return None
    body = completion[: completion.index(END)]
    ans = body.rsplit(SEP, 1)[-1]
    if not ans or len(ans) > 32 or not all(ch in "0123456789" for ch in ans):
        return None
    return int(ans[::-1] if reverse_answer else ans)


def score(completion: str, answer: int, reverse_answer: bool = True) -> float:
    """1.0 if the completion's final answer equals ``answer``, else 0.0 (never raises on model output).

    >>> score("110:234$", 432), score("432$", 432), score("", 432)
    (1.0, 0.0, 0.0)
    """
    got = extract_answer(completion, reverse_answer)
    return 1.0 if got is not None and got == answer else 0.0
