"""RLEP (arXiv 2507.07451): a fixed pool of verified-correct rows, decoded by a previous finished run's final
policy, appended to every group."""

from __future__ import annotations

import random
from typing import Any

import torch

from npo_lab.backend import Backend, Checkpoint
from npo_lab.batch import RolloutBatch
from npo_lab.config import GRPOConfig, MethodConfigs, RLEPConfig, RunConfig
from npo_lab.methods.base import rng_state
from npo_lab.methods.grpo import GRPO
from npo_lab.train.loop import train
from npo_lab.train.method import GuidePlan
from npo_lab.train.state import TrainState, make_state
from npo_lab.utils import seed_everything


class RLEP(GRPO):
    """RLEP: replay a fixed pool of correct rows decoded by a previous run's checkpoint.

    At setup the previous run's final policy decodes ``decode_samples`` rows per training prompt; the
    verified-correct ones form the pool. Every group then gets up to ``replay_per_group`` pool rows appended
    (the group grows to G + M; groups with fewer pool rows get fewer)."""

    name = "rlep"

    def __init__(
        self,
        cfg: RLEPConfig,
        previous: Checkpoint,
        correct_threshold: float = 0.5,
        seed: int = 0,
        decode_chunk: int = 64,
    ) -> None:
        super().__init__()
        self.cfg, self.previous, self.decode_chunk, self.thr = cfg, previous, decode_chunk, correct_threshold
        self.pool: dict[int, list[RolloutBatch]] = {}
        self.rng = random.Random(seed + 7411)

    @classmethod
    def from_configs(
        cls, cfgs: MethodConfigs, *, grpo: GRPOConfig, previous: Checkpoint | None = None, seed: int = 0, **_: Any
    ) -> RLEP:
        return cls(cfgs.rlep, previous, grpo.correct_threshold, seed)

    def state_dict(self) -> dict[str, Any]:
        pool = [[p, [r.state_dict() for r in rows]] for p, rows in self.pool.items()]
        return {**super().state_dict(), "pool": pool, "rng": self.rng.getstate()}

    def load_state_dict(self, d: dict[str, Any]) -> None:
        super().load_state_dict(d)
        self.pool = {int(p): [RolloutBatch.from_state_dict(r) for r in rows] for p, rows in d["pool"]}
        self.rng.setstate(rng_state(d["rng"]))

    def setup(self, state: TrainState) -> None:
        if self.previous is None:  # a resumed run restores its pool instead (load_state_dict)
            raise ValueError("rlep needs the final checkpoint of a previous run to decode its pool from")
        n = state.backend.num_prompts
        decoded = 0
        for start in range(0, n, self.decode_chunk):
            ids = list(range(start, min(n, start + self.decode_chunk)))
            rows = state.backend.rollout(ids, self.cfg.decode_samples, policy=self.previous)
            decoded += rows.size
            for i in torch.nonzero(rows.rewards > self.thr).squeeze(-1).tolist():
                self.pool.setdefault(int(rows.group_ids[i]), []).append(rows.select([i]).trim())
        self.event(
            step=state.step,
            kind="rlep_pool",
            decoded=decoded,
            correct=sum(len(v) for v in self.pool.values()),
            prompts=len(self.pool),
            prompt_coverage=len(self.pool) / max(n, 1),
        )

    def guides(self, state: TrainState, batch: RolloutBatch, grpo: GRPOConfig) -> GuidePlan | None:
        prompts = sorted(set(batch.group_ids.tolist()) & set(self.pool))
        picked = []
        for p in prompts:
            cands = self.pool[p]
            picked += self.rng.sample(cands, min(self.cfg.replay_per_group, len(cands)))
        if not picked:
            return None
        return GuidePlan(
            RolloutBatch.cat(picked),
            prompts,
            "append",
            self.cfg.replay_per_group,
            "last",
            dict(guide_loss=self.cfg.guide_loss),
            {"rlep/pool_prompts": float(len(self.pool))},
        )


def train_previous_run(backend: Backend, grpo: GRPOConfig, seed: int, steps: int) -> Checkpoint:
    """RLEP's previous run: a plain GRPO run of ``steps`` steps from the backend's current weights, unlogged; returns
    its final policy (which decodes the replay pool) after putting the backend's weights and every global RNG back,
    so the RLEP run itself starts where any other method's run starts."""
    start = backend.save()
    seed_everything(seed)
    train(make_state(backend, grpo, seed), GRPO(), RunConfig(steps=steps, eval_every=steps), grpo, seed=seed)
    policy = backend.save()
    backend.load(start)
    seed_everything(seed)
    return policy
