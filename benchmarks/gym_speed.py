"""Episodes per second of the gym backend: gymnasium's vector API (SyncVectorEnv) vs stepping the environments
one by one, measured side by side in one process (alternating, same seeds, same policy), for docs/benchmarks.md.

Usage: python benchmarks/gym_speed.py [episodes_per_batch] [repeats]
"""

from __future__ import annotations

import statistics
import sys
import time

import torch
from npo_lab.envs.config import GymConfig
from npo_lab.envs.gym_backend import GymBackend
from npo_lab.envs.gym_envs import ENV_IDS


def main(batch: int = 128, repeats: int = 5) -> None:
    torch.set_num_threads(1)
    print(f"{batch} episodes per batch, {repeats} alternating repeats, 1 torch thread; median episodes/s")
    print("| environment | vector API | one by one | ratio (vector / one by one) | mean episode length |")
    print("|---|---|---|---|---|")
    for env_id in ENV_IDS:
        backends = {v: GymBackend(env_id, GymConfig(vector=v), seed=0) for v in (True, False)}
        for be in backends.values():  # build the environments outside the timing
            be.rollout(list(range(batch // 8)), 8)
        rates: dict[bool, list[float]] = {True: [], False: []}
        length = 0.0
        for r in range(repeats):
            for v, be in backends.items():
                t0 = time.perf_counter()
                b = be.rollout(list(range(r * 1000, r * 1000 + batch // 8)), 8)
                rates[v].append(b.size / (time.perf_counter() - t0))
                length = b.mask.sum(-1).mean().item()
        vec, loop = statistics.median(rates[True]), statistics.median(rates[False])
        print(f"| {env_id} | {vec:.0f} | {loop:.0f} | {vec / loop:.2f}x | {length:.1f} |")


if __name__ == "__main__":
    main(*(int(a) for a in sys.argv[1:3]))
