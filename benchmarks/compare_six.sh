#!/usr/bin/env bash
# The six-method benchmark of docs/benchmarks.md (issue: AutoNPO and the baselines), on this machine:
#  1. `npo-lab compare` over grpo, npo, autonpo, luffy, exgrpo, rlep with 10 seeds on the default arithmetic task;
#  2. `npo-lab qvs`: Q, V and S of the near future, past checkpoints (replay) and the external teacher along
#     GRPO runs, 3 seeds.
# Usage: bash benchmarks/compare_six.sh [OUT_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-runs/bench6}
bash scripts/setup.sh
mkdir -p "$OUT"
echo "cores: $(nproc)"
start=$(date +%s)
.venv/bin/npo-lab compare --seeds 10 --out "$OUT/six" > "$OUT/six.log" 2>&1
echo "six methods x 10 seeds: $(( $(date +%s) - start )) s wall"
start=$(date +%s)
.venv/bin/npo-lab qvs --seeds 3 --out "$OUT/qvs" > "$OUT/qvs.log" 2>&1
echo "qvs, 3 seeds: $(( $(date +%s) - start )) s wall"
