"""ExGRPO (arXiv 2510.02245): replay of the run's own past correct rows, medium-difficulty prompts first."""

from __future__ import annotations

import math
import random
from typing import Any

from npo_lab.batch import RolloutBatch
from npo_lab.config import ExGRPOConfig, GRPOConfig, MethodConfigs
from npo_lab.methods.base import rng_state
from npo_lab.methods.grpo import GRPO
from npo_lab.train.method import GuidePlan, StepOutcome
from npo_lab.train.state import TrainState


class ExGRPO(GRPO):
    """ExGRPO: replay the run's own past correct rows.

    * Collection: after each step, every correct on-policy row of a partially solved group (0 < k < G correct)
      is stored with its recorded log-probs and mean token entropy; a prompt whose group is fully solved
      leaves the pool.
    * Sampling: prompts are bucketed by their latest k; a bucket is drawn with weight
      exp(-(k - G/2)^2 / (2 sigma^2)), then a prompt uniformly inside it; its lowest-entropy row is replayed.
    * Mixing: once the batch accuracy has exceeded ``start_solve_rate``, ``experience_ratio`` of each batch's
      prompts come from the pool; each such group holds G - 1 fresh rows and 1 replayed row.
    """

    name = "exgrpo"

    def __init__(self, cfg: ExGRPOConfig, group_size: int, correct_threshold: float = 0.5, seed: int = 0) -> None:
        super().__init__()
        self.cfg, self.g, self.thr = cfg, group_size, correct_threshold
        self.pool: dict[int, tuple[int, list[RolloutBatch]]] = {}  # prompt -> (latest #correct, stored rows)
        self.started = False
        self.rng = random.Random(seed + 4241)
        self.replay: dict[int, RolloutBatch] = {}  # this step's replay row per pool prompt

    @classmethod
    def from_configs(cls, cfgs: MethodConfigs, *, grpo: GRPOConfig, seed: int = 0, **_: Any) -> ExGRPO:
        return cls(cfgs.exgrpo, grpo.group_size, grpo.correct_threshold, seed)

    def state_dict(self) -> dict[str, Any]:
        pool = [[p, k, [r.state_dict() for r in rows]] for p, (k, rows) in self.pool.items()]
        return {**super().state_dict(), "pool": pool, "started": self.started, "rng": self.rng.getstate()}

    def load_state_dict(self, d: dict[str, Any]) -> None:
        super().load_state_dict(d)
        self.pool = {int(p): (int(k), [RolloutBatch.from_state_dict(r) for r in rows]) for p, k, rows in d["pool"]}
        self.started = bool(d["started"])
        self.rng.setstate(rng_state(d["rng"]))

    def _bucket_weight(self, k: int) -> float:
        return math.exp(-((k - self.g / 2) ** 2) / (2 * self.cfg.bucket_sigma**2))

    def sample_prompts(self, n: int) -> list[int]:
        """Draw up to ``n`` distinct pool prompts: bucket by weight, then a prompt uniformly in the bucket."""
        buckets: dict[int, list[int]] = {}
        for p, (k, _) in sorted(self.pool.items()):
            buckets.setdefault(k, []).append(p)
        chosen: list[int] = []
        while len(chosen) < n and buckets:
            ks = sorted(buckets)
            k = self.rng.choices(ks, weights=[self._bucket_weight(k) for k in ks])[0]
            members = buckets[k]
            chosen.append(members.pop(self.rng.randrange(len(members))))
            if not members:
                del buckets[k]
        return chosen

    def _pick_row(self, rows: list[RolloutBatch]) -> RolloutBatch:
        if self.cfg.selection == "latest":
            return rows[-1]
        if self.cfg.selection == "random":
            return rows[self.rng.randrange(len(rows))]
        return min(rows, key=lambda r: r.extras[0]["_entropy"])

    def choose_prompts(self, state: TrainState, prompts: list[int]) -> list[int]:
        self.replay = {}
        if not self.started or not self.pool:
            return prompts
        n_exp = round(self.cfg.experience_ratio * len(prompts))
        exp = self.sample_prompts(n_exp)
        self.replay = {p: self._pick_row(self.pool[p][1]) for p in exp}
        fresh = [p for p in prompts if p not in self.replay]
        return exp + fresh[: len(prompts) - len(exp)]

    def guides(self, state: TrainState, batch: RolloutBatch, grpo: GRPOConfig) -> GuidePlan | None:
        if not self.replay:
            return None
        targets = list(self.replay)
        rows = RolloutBatch.cat([self.replay[p] for p in targets])
        return GuidePlan(
            rows,
            targets,
            "replace",
            1,
            "last",
            dict(guide_loss=self.cfg.guide_loss, shaping_gamma=self.cfg.shaping_gamma),
            {"exgrpo/pool_prompts": float(len(self.pool)), "exgrpo/replayed": float(len(targets))},
        )

    def after_step(self, state: TrainState, outcome: StepOutcome) -> None:
        batch, entropy, metrics = outcome.batch, outcome.entropy, outcome.metrics
        if metrics["reward/on_policy_mean"] > self.cfg.start_solve_rate and not self.started:
            self.started = True
            self.event(step=state.step - 1, kind="exgrpo_start", solve_rate=metrics["reward/on_policy_mean"])
        thr = self.thr
        rows_of: dict[int, list[int]] = {}
        for i, (g, guide) in enumerate(zip(batch.group_ids.tolist(), batch.is_guide.tolist())):
            if not guide:
                rows_of.setdefault(g, []).append(i)
        row_entropy = None
        if entropy is not None:  # mean token entropy of each row, (B,)
            row_entropy = (entropy * batch.mask).sum(-1) / batch.mask.sum(-1).clamp(min=1.0)
        rewards = batch.rewards.tolist()
        for g, rows in rows_of.items():
            correct = [i for i in rows if rewards[i] > thr]
            k = round(self.g * len(correct) / len(rows))  # on a G scale (replay groups have G - 1 fresh rows)
            if k >= self.g:
                self.pool.pop(g, None)  # fully solved: retired from the pool
                continue
            _, stored = self.pool.get(g, (0, []))
            for i in correct:
                row = batch.select([i]).trim()
                ent = float(row_entropy[i]) if row_entropy is not None else float(-row.old_logprobs.sum())
                # recorded log-probs (the ratio anchor of shaped_is) are the policy's at collection time
                row = row.replace(behavior_logprobs=row.old_logprobs, extras=[{**row.extras[0], "_entropy": ent}])
                stored = (stored + [row])[-self.cfg.rows_per_prompt :]
            if stored:
                self.pool[g] = (k, stored)
