"""Compute-matched comparison: each method's final accuracy against GRPO's accuracy at the same total number of
training steps (the method's steps plus its extra steps: look-ahead steps, or steps a rollback discarded), per seed,
paired. GRPO's curve comes from a longer GRPO run of the same seeds (the same warm-started checkpoints).

Usage: python benchmarks/compute_matched.py COMPARE_DIR LONG_GRPO_DIR
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from npo_lab.experiments.stats import bootstrap_ci


def accuracy_at(evals: list[list[float]], step: float) -> float:
    """GRPO's eval accuracy at ``step``, linearly interpolated between its evaluations."""
    pts = sorted((float(s), float(a)) for s, a in evals)
    if step >= pts[-1][0]:
        return pts[-1][1]
    for (s0, a0), (s1, a1) in zip(pts, pts[1:]):
        if s0 <= step <= s1:
            return a0 + (a1 - a0) * (step - s0) / (s1 - s0)
    return pts[0][1]


def main(compare_dir: str, long_dir: str) -> None:
    doc = json.loads((Path(compare_dir) / "results.json").read_text())
    long = json.loads((Path(long_dir) / "results.json").read_text())
    grpo_long = {p["seed"]: p["evals"] for p in long["methods"]["grpo"]["per_seed"]}
    print("| method | total steps (median) | final accuracy − GRPO at the same total steps, paired | better/worse |")
    print("|---|---|---|---|")
    for m, r in doc["methods"].items():
        diffs, totals = [], []
        for p in r["per_seed"]:
            steps = [s for s, _ in p["evals"]]
            gap, n_final = steps[-1] - steps[-2], doc.get("final_evals", 3)
            total = steps[-1] + p["lookahead_steps"] + p.get("prior_steps", 0)
            totals.append(total)
            # GRPO's final accuracy the way the method's is taken: the mean of the last evaluations, here at total,
            # total - gap, ... on GRPO's (interpolated) curve
            grpo = sum(accuracy_at(grpo_long[p["seed"]], total - k * gap) for k in range(n_final)) / n_final
            diffs.append(p["final_accuracy"] - grpo)
        med, lo, hi = bootstrap_ci(diffs, "median", 2000)
        totals.sort()
        better, worse = sum(d > 0 for d in diffs), sum(d < 0 for d in diffs)
        print(f"| {m} | {totals[len(totals) // 2]} | {med:+.3f} [{lo:+.3f}, {hi:+.3f}] | {better}/{worse} |")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
