"""The accuracy reward's grader against its labelled corpus, beside math-verify alone, TRL's boxed-only accuracy
reward and this project's grader before the final-answer rule; then grading time per completion, ours and
math-verify alone side by side in one run (for docs/reliability.md and docs/benchmarks.md).

Usage: python benchmarks/grader_eval.py [--split dev|held-out|both] [--details] [--speed-items N]

The corpus comes from tests/llm/grader_corpus.py (seeded, labelled by construction): the dev part (DEV_SEEDS) is
what the grader was developed on, the held-out part (HELD_OUT_SEEDS) is only reported. The baselines run in this
process with math-verify's own (signal) time limits, as their authors run them; ours runs as the reward does
(``MathVerifier``: the final-answer rule here, math-verify in a worker process).
"""

from __future__ import annotations

import argparse
import logging
import random
import re
import statistics
import sys
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "llm"))

from grader_corpus import DEV_SEEDS, HELD_OUT_SEEDS, Case, make_corpus  # noqa: E402
from npo_lab.llm.grader import decide  # noqa: E402
from npo_lab.llm.rewards import MathVerifier, extract_boxed  # noqa: E402

logging.getLogger("math_verify").setLevel(logging.CRITICAL)


def math_verify_alone(completion: str, reference: str) -> float:
    """math-verify with its default parse on the whole completion; the reference in $...$ (how a new user calls it)."""
    from math_verify import parse, verify

    try:
        return float(
            verify(parse(f"${reference}$", parsing_timeout=5), parse(completion, parsing_timeout=5), timeout_seconds=5)
        )
    except Exception:
        return 0.0


def trl_boxed_only(completion: str, reference: str) -> float:
    """TRL's ``trl.rewards.accuracy_reward`` (read from its source, not imported): the reference parsed as is, the
    completion with LaTeX extraction only, boxed first, no un-anchored match, first match. An unparseable reference
    (TRL returns None, 'skip') counts as a reject here."""
    from latex2sympy2_extended import NormalizationConfig
    from math_verify import LatexExtractionConfig, parse, verify

    try:
        gold = parse(reference, parsing_timeout=5)
        if not gold:
            return 0.0
        config = LatexExtractionConfig(
            normalization_config=NormalizationConfig(units=True),
            boxed_match_priority=0,
            try_extract_without_anchor=False,
        )
        answer = parse(completion, extraction_config=[config], extraction_mode="first_match", parsing_timeout=5)
        return float(verify(gold, answer, timeout_seconds=5))
    except Exception:
        return 0.0


def before_final_answer_rule(completion: str, reference: str, max_chars: int = 4000) -> float:
    """This project's grader before the final-answer rule (npo_lab.llm.rewards until this change): the last
    \\boxed{} of the last max_chars characters (else the whole tail) against the reference, by math-verify."""
    from math_verify import parse, verify

    tail = completion[-max_chars:]
    boxed, gold = extract_boxed(tail), reference.strip()
    if boxed is not None:
        boxed = boxed.strip()
        if not boxed:
            return 0.0
        if boxed == gold:
            return 1.0
        pred = "\\boxed{" + boxed + "}"
    else:
        pred = tail
    delimited = re.search(r"(?<!\\)\$", gold) is not None or "\\boxed" in gold
    try:
        return float(
            verify(
                parse(gold if delimited else f"${gold}$", parsing_timeout=5),
                parse(pred, parsing_timeout=5),
                timeout_seconds=5,
            )
        )
    except Exception:
        return 0.0


def table_row(name: str, split: str, cases: list[Case], scores: list[float]) -> str:
    n = len(cases)
    fa = sum(1 for c, s in zip(cases, scores) if s and not c.label)
    fr = sum(1 for c, s in zip(cases, scores) if not s and c.label)
    return f"| {name} | {split} | {n} | {100 * (n - fa - fr) / n:.1f}% | {fa} | {fr} |"


def agreement(splits: dict[str, list[Case]], details: bool) -> None:
    print("| grader | part | cases | agreement | false accepts | false rejects |")
    print("|---|---|---|---|---|---|")
    ours: dict[str, list[float]] = {}
    with MathVerifier(timeout_s=60.0) as mv:  # generous: agreement must not depend on machine load
        for split, cases in splits.items():
            ours[split] = mv.grade([c.completion for c in cases], [c.reference for c in cases])
            print(table_row("npo_lab (final-answer rule + math-verify)", split, cases, ours[split]))
    for name, fn in (
        ("math-verify alone, default parse", math_verify_alone),
        ("TRL accuracy_reward (boxed first)", trl_boxed_only),
        ("npo_lab before this rule (last box, else math-verify)", before_final_answer_rule),
    ):
        for split, cases in splits.items():
            print(table_row(name, split, cases, [fn(c.completion, c.reference) for c in cases]))
    for split, cases in splits.items():
        wrong = [(c, s) for c, s in zip(cases, ours[split]) if bool(s) != bool(c.label)]
        print(
            f"\n{split}: {len(cases)} cases ({sum(c.label for c in cases)} correct forms), ours wrong on "
            f"{len(wrong)}: {dict(Counter((c.kind, c.cls, 'FA' if s else 'FR') for c, s in wrong))}"
        )
        if details:
            for c, s in wrong:
                print(f"  {'FA' if s else 'FR'} {c.kind}/{c.cls} ref={c.reference!r} tail={c.completion[-120:]!r}")


def speed(cases: list[Case], n_items: int) -> None:
    """Grading time of one completion at a time (what a reward call costs per row), ours through the worker as in
    training and math-verify alone in this process, alternating item by item so machine noise hits both; then the
    items math-verify grades once more, grouped by reference."""
    from math_verify import parse, verify

    items = random.Random(0).sample(cases, min(n_items, len(cases)))  # every answer type and class, not the first
    ours_ms, mv_ms = [], []
    to_worker = [decide(c.completion, c.reference).score is None for c in items]
    with MathVerifier(timeout_s=60.0) as mv:
        mv.grade(["\\boxed{\\sqrt{2}}"], ["\\sqrt{8}/2"])  # start the worker outside the timing
        verify(parse("$1$"), parse("$1$"))  # warm math-verify here too
        for c in items:
            t0 = time.perf_counter()
            mv.grade([c.completion], [c.reference])
            ours_ms.append(1000 * (time.perf_counter() - t0))
            t0 = time.perf_counter()
            math_verify_alone(c.completion, c.reference)
            mv_ms.append(1000 * (time.perf_counter() - t0))
    # the same items in corpus order, where the rows that share a reference follow each other as the G rows of a
    # GRPO group do (math-verify's parse caches then help), with a fresh worker
    chosen = {id(c) for c, w in zip(items, to_worker) if w}
    grouped = [c for c in cases if id(c) in chosen]
    grouped_ms = []
    with MathVerifier(timeout_s=60.0) as mv:
        mv.grade(["\\boxed{\\sqrt{2}}"], ["\\sqrt{8}/2"])
        for c in grouped:
            t0 = time.perf_counter()
            mv.grade([c.completion], [c.reference])
            grouped_ms.append(1000 * (time.perf_counter() - t0))
    q = lambda xs, p: statistics.quantiles(xs, n=100)[p - 1]  # noqa: E731
    worker_ms = [t for t, w in zip(ours_ms, to_worker) if w]
    print(f"\n{len(items)} completions, one per call; {len(items) - len(worker_ms)} decided before math-verify")
    print("| grader | completions | median ms | p90 ms | max ms |")
    print("|---|---|---|---|---|")
    for name, xs in (
        ("npo_lab MathVerifier (1 worker)", ours_ms),
        ("npo_lab MathVerifier, the items math-verify grades", worker_ms),
        ("npo_lab MathVerifier, the same items grouped by reference", grouped_ms),
        ("math-verify alone, in process", mv_ms),
    ):
        print(f"| {name} | {len(xs)} | {statistics.median(xs):.2f} | {q(xs, 90):.2f} | {max(xs):.1f} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--split", choices=["dev", "held-out", "both"], default="both")
    ap.add_argument("--details", action="store_true", help="print every case ours gets wrong")
    ap.add_argument("--speed-items", type=int, default=1000, help="completions timed (0: skip the speed part)")
    args = ap.parse_args()
    splits = {}
    if args.split in ("dev", "both"):
        splits["dev"] = [c for s in DEV_SEEDS for c in make_corpus(s)]
    if args.split in ("held-out", "both"):
        splits["held-out"] = [c for s in HELD_OUT_SEEDS for c in make_corpus(s)]
    agreement(splits, args.details)
    if args.speed_items:
        speed([c for cases in splits.values() for c in cases], args.speed_items)


if __name__ == "__main__":
    main()
