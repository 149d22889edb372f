"""Compact table of a `npo-lab qvs` folder for docs/benchmarks.md: per step and source, the medians over seeds
of Q, and of V and S under the is_variance and log_ratio estimators.

Usage: python benchmarks/qvs_table.py runs/bench6/qvs
"""

from __future__ import annotations

import json
import statistics
import sys
from collections import defaultdict
from pathlib import Path


def med(xs: list[float]) -> float:
    xs = [x for x in xs if x == x]
    return statistics.median(xs) if xs else float("nan")


def main(folder: str) -> None:
    doc = json.loads((Path(folder) / "qvs.json").read_text())
    rows: dict[tuple[int, str], list[dict]] = defaultdict(list)
    for r in doc["records"]:
        rows[r["step"], r["source"]].append(r)

    def order(key: tuple[int, str]) -> tuple[int, float]:
        return key[0], float("inf") if key[1] == "teacher" else float(key[1])

    print("| step | source | failed prompts | Q | V (is_variance) | S (is_variance) | V (log_ratio) | S (log_ratio) |")
    print("|---|---|---|---|---|---|---|---|")
    for key in sorted(rows, key=order):
        rs = rows[key]
        vals = [
            med([r[k] for r in rs])
            for k in ("failed", "q", "v_is_variance", "s_is_variance", "v_log_ratio", "s_log_ratio")
        ]
        print(f"| {key[0]} | {key[1]} | {vals[0]:.0f} | " + " | ".join(f"{v:.3f}" for v in vals[1:]) + " |")


if __name__ == "__main__":
    main(sys.argv[1])
