#!/usr/bin/env bash
# The benchmark of NPO and AutoNPO as the paper describes them (docs/benchmarks.md, "NPO and AutoNPO as the paper
# describes them"), on this machine (2 CPU cores), default arithmetic task, 10 seeds:
#  1. grpo, npo (the paper's defaults), npo with the earlier window/guides/loss, retrospective autonpo, the earlier
#     look-ahead autonpo, luffy, exgrpo, rlep, side by side (the same seeds and warm-started checkpoints);
#  2. GRPO run longer (800 steps: RLEP's previous run counts too), for the compute-matched comparison (GRPO given the same total steps as a method
#     spends with its extra steps): python benchmarks/compute_matched.py OUT/paper OUT/grpo_long
# Usage: bash benchmarks/compare_paper.sh [OUT_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-runs/bench_paper}
bash scripts/setup.sh
mkdir -p "$OUT"
echo "cores: $(nproc)"
METHODS="grpo,npo,npo:window=until_next:guide_source=online:guide_loss=on_policy,autonpo"
METHODS="$METHODS,autonpo:mode=lookahead:guide_loss=on_policy,luffy,exgrpo,rlep"
start=$(date +%s)
.venv/bin/npo-lab compare --seeds 10 --methods "$METHODS" --out "$OUT/paper" > "$OUT/paper.log" 2>&1
echo "eight methods x 10 seeds: $(( $(date +%s) - start )) s wall"
start=$(date +%s)
.venv/bin/npo-lab compare --seeds 10 --methods grpo --steps 800 --out "$OUT/grpo_long" > "$OUT/grpo_long.log" 2>&1
echo "grpo, 800 steps x 10 seeds: $(( $(date +%s) - start )) s wall"
.venv/bin/python benchmarks/summarize.py "$OUT/paper"
.venv/bin/python benchmarks/compute_matched.py "$OUT/paper" "$OUT/grpo_long"
