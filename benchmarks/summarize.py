"""Summarise a results.json of `npo-lab compare` for docs/benchmarks.md: the main table plus the
paired-by-seed differences to the baseline. Usage: python benchmarks/summarize.py runs/bench/ablation"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from npo_lab.experiments.report import fmt_ci, paired_vs_baseline


def main(folder: str) -> None:
    doc = json.loads((Path(folder) / "results.json").read_text())
    base = doc["baseline"]
    print(
        f"target accuracy {doc['target_accuracy']:.3f} ({doc['target_rule']}); seeds {doc['seeds']}; "
        f"total wall {doc['wall_s_total']:.0f} s\n"
    )
    print(
        "| method | final accuracy | Δ final vs " + base + " (paired) | better/equal/worse | steps to target "
        "| + look-ahead | reached | speed-up (with look-ahead) | wall s / run |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for m, r in doc["methods"].items():
        p = paired_vs_baseline(doc["methods"][base]["per_seed"], r["per_seed"], 2000)
        sp = "-" if r["speedup"] is None else f"{r['speedup']:.2f}x"
        spl = "-" if r["speedup_with_lookahead"] is None else f"{r['speedup_with_lookahead']:.2f}x"
        w = p["wins"]
        print(
            f"| {m} | {fmt_ci(r['final_accuracy'])} | {fmt_ci(p['paired_final_delta'])} | {w[0]}/{w[1]}/{w[2]} | "
            f"{fmt_ci(r['steps_to_target'], 0)} | {fmt_ci(r['steps_to_target_with_lookahead'], 0)} | "
            f"{r['reached_target']}/{len(r['per_seed'])} | {sp} ({spl}) | {r['wall_s']:.0f} |"
        )
    print("\nper-seed final accuracy:")
    for m, r in doc["methods"].items():
        print(f"  {m:45s}", " ".join(f"{p['final_accuracy']:.2f}" for p in r["per_seed"]))


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "runs/bench/ablation")
