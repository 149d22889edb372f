#!/usr/bin/env bash
# The benchmarks of docs/benchmarks.md, on this machine (2 CPU cores):
#  1. the default `npo-lab compare` exactly as README runs it (4 seeds), timed end to end;
#  2. the same comparison with 10 seeds and four NPO variants side by side (same seeds, same target):
#     npo:delta=1 (a control: guides from a policy one step ahead, i.e. "more verified samples" without a
#     real future), npo:guide_samples=16 (a stronger guide search), a periodic refresh every 50 steps,
#     and a later plateau intervention (steps 0 and 250 instead of 0 and 100).
# Usage: bash benchmarks/compare_default.sh [OUT_DIR]      (about 33 minutes in all)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-runs/bench}
bash scripts/setup.sh
mkdir -p "$OUT"
echo "cores: $(nproc)"
start=$(date +%s)
.venv/bin/npo-lab compare --out "$OUT/default" > "$OUT/default.log" 2>&1
echo "default compare (4 seeds): $(( $(date +%s) - start )) s wall"
.venv/bin/npo-lab compare --seeds 10 --out "$OUT/ablation" \
    --methods "grpo,npo,npo:delta=1,npo:guide_samples=16,npo:interventions=0:every=50,npo:interventions=0+250" \
    > "$OUT/ablation.log" 2>&1
sed -n '1,30p' "$OUT/ablation/report.md"
