#!/usr/bin/env bash
# The gymnasium-backend benchmarks of docs/benchmarks.md, on this machine (2 CPU cores):
#  1. episodes per second, vector API vs one-by-one stepping, side by side;
#  2. GRPO vs NPO on each registered environment, 10 seeds (Adam lr 3e-3 for the small MLP policies):
#     150 steps of 16 seeds x 8 episodes; CartPoleBalance (long episodes) 100 steps of 8 x 8, NPO at steps 0 and 50.
# Usage: bash benchmarks/gym_compare.sh [OUT_DIR]       (about 25 minutes)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-runs/bench_gym}
bash scripts/setup.sh
mkdir -p "$OUT"
echo "cores: $(nproc)"
.venv/bin/python benchmarks/gym_speed.py 128 5 | tee "$OUT/speed.md"
for env in ChainEasy-v0 Chain-v0 KeyDoor-v0 FrozenLake-v0; do
  start=$(date +%s)
  .venv/bin/npo-lab compare --backend gym --env "npo_lab/$env" --methods grpo,npo --seeds 10 --steps 150 \
      --eval-every 10 --grpo.lr 3e-3 --out "$OUT/$env" > "$OUT/$env.log" 2>&1
  echo "$env: $(( $(date +%s) - start )) s wall"
done
start=$(date +%s)
.venv/bin/npo-lab compare --backend gym --env npo_lab/CartPoleBalance-v0 --methods grpo,npo --seeds 10 --steps 100 \
    --eval-every 10 --grpo.lr 3e-3 --grpo.batch-size 64 --npo.interventions 0 50 --out "$OUT/CartPoleBalance-v0" \
    > "$OUT/CartPoleBalance-v0.log" 2>&1
echo "CartPoleBalance-v0: $(( $(date +%s) - start )) s wall"
