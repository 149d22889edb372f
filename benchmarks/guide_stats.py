"""Per-method guide statistics of a `npo-lab compare` folder, for docs/benchmarks.md: how often each source
found a verified-correct row for the groups it was offered, how likely its rows are under the current policy,
and the per-step time. Medians over seeds of each run's mean over the given step range.

Usage: python benchmarks/guide_stats.py runs/bench6/six [first_step] [last_step]
"""

from __future__ import annotations

import csv
import statistics
import sys
from collections import defaultdict
from pathlib import Path

KEYS = [
    "guide/gated_frac",
    "guide/found_frac",
    "guide/injected_frac",
    "guide/guide_solved",
    "guide/logprob_mean",
    "guide/ratio_mean",
    "reward/frac_zero_std",
    "time/step",
]


def run_means(path: Path, lo: int, hi: int) -> dict[str, float]:
    vals: dict[str, list[float]] = defaultdict(list)
    with path.open() as f:
        for row in csv.DictReader(f):
            if row["name"] in KEYS and lo <= int(row["step"]) <= hi:
                vals[row["name"]].append(float(row["value"]))
    return {k: statistics.fmean(v) for k, v in vals.items() if v}


def main(folder: str, lo: int = 0, hi: int = 10**9) -> None:
    by_method: dict[str, list[dict[str, float]]] = defaultdict(list)
    for csv_path in sorted(Path(folder, "runs").glob("*__seed*/metrics.csv")):
        method = csv_path.parent.name.rsplit("__seed", 1)[0]
        by_method[method].append(run_means(csv_path, lo, hi))
    print(f"steps {lo}-{hi if hi < 10**9 else 'end'}; medians over seeds of per-run means")
    print("| method | " + " | ".join(KEYS) + " |")
    print("|---" * (len(KEYS) + 1) + "|")
    for method, runs in by_method.items():
        cells = []
        for k in KEYS:
            xs = [r[k] for r in runs if k in r]
            cells.append(f"{statistics.median(xs):.3f}" if xs else "-")
        print(f"| {method} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    args = sys.argv[1:]
    main(args[0], *(int(a) for a in args[1:3]))
