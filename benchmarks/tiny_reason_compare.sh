#!/usr/bin/env bash
# GRPO vs NPO vs AutoNPO on the tiny Qwen3-VL, CPU, 5 seeds: the synthetic reason task (kind color_add) through the
# real backend (transformers Qwen3-VL, the processor path, chat template, math-verify rewards, disk look-ahead and
# rollback). Every setting is in recipes/tiny_reason.toml. docs/benchmarks.md section 10 reports the result.
# Usage: bash benchmarks/tiny_reason_compare.sh [OUT_DIR]     (about an hour on 2 shared cores: 3,360 s measured)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-runs/tiny_reason}
mkdir -p "$OUT"
echo "cores: $(nproc); load: $(cut -d' ' -f1-3 /proc/loadavg)"
start=$(date +%s)
.venv/bin/npo-lab compare --config recipes/tiny_reason.toml --out "$OUT/compare" > "$OUT/compare.log" 2>&1
echo "grpo, npo, autonpo x 5 seeds: $(( $(date +%s) - start )) s wall; load: $(cut -d' ' -f1-3 /proc/loadavg)"
