#!/usr/bin/env bash
# The benchmarks of docs/benchmarks.md for AutoNPO and the baselines, on this machine (2 CPU cores):
#  1. `npo-lab compare` over grpo, npo, autonpo, luffy, exgrpo, rlep with 10 seeds on the default arithmetic task;
#  2. AutoNPO variants with 10 seeds: the log-ratio V estimator, and Q measured with 2 samples instead of 8;
#  3. `npo-lab qvs`: Q, V and S of the near future, past checkpoints (replay) and the external teacher along
#     GRPO runs, 3 seeds.
# Usage: bash benchmarks/compare_six.sh [OUT_DIR]      (about 45 minutes in all)
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
start=$(date +%s)
.venv/bin/npo-lab compare --seeds 10 --out "$OUT/autonpo" \
    --methods "grpo,npo,autonpo,autonpo:v_estimator=log_ratio,autonpo:q_samples=2" > "$OUT/autonpo.log" 2>&1
echo "autonpo variants x 10 seeds: $(( $(date +%s) - start )) s wall"
