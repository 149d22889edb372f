"""NPO, Near-Future Policy Optimization (arXiv 2604.20733): guides from the run's own near future.

At each scheduled intervention step t (``npo.interventions``, ``npo.every``):

1. the loop trains ahead ``npo.delta`` plain GRPO steps, keeps pi_{t+Delta} and rolls back to t exactly
   (:meth:`NPO.wants_lookahead` asks for it, :meth:`NPO.use_lookahead` keeps the checkpoint);
2. while the guidance window is open, each group whose on-policy accuracy is below ``npo.gate`` gets
   ``npo.guide_slots`` of its slots replaced by verified-correct rows sampled from pi_{t+Delta} (:meth:`NPO.guides`).
"""

from __future__ import annotations

from typing import Any

from npo_lab.backend import Checkpoint
from npo_lab.batch import RolloutBatch
from npo_lab.config import GRPOConfig, MethodConfigs, NPOConfig
from npo_lab.methods.base import policy_rows_for
from npo_lab.methods.grpo import GRPO
from npo_lab.train.method import GuidePlan, LookaheadRequest
from npo_lab.train.rollback import LookaheadResult
from npo_lab.train.state import TrainState


class NPO(GRPO):
    """NPO with a manual intervention schedule (early bootstrap at step 0, plateau breakthrough later)."""

    name = "npo"

    def __init__(self, cfg: NPOConfig, total_steps: int, correct_threshold: float = 0.5) -> None:
        super().__init__()
        self.cfg, self.thr = cfg, correct_threshold
        self.schedule = cfg.intervention_steps(total_steps)
        self.total_steps = total_steps
        self.checkpoint: Checkpoint | None = None
        """pi_{t+Delta} of the latest intervention."""
        self.until = -1
        """Guidance is on for steps before this one."""

    @classmethod
    def from_configs(cls, cfgs: MethodConfigs, *, total_steps: int, grpo: GRPOConfig, **_: Any) -> NPO:
        return cls(cfgs.npo, total_steps, grpo.correct_threshold)

    def wants_lookahead(self, state: TrainState) -> LookaheadRequest | None:
        if state.step not in self.schedule:
            return None
        return LookaheadRequest((self.cfg.delta,), self.cfg.restore_optimizer)

    def use_lookahead(self, state: TrainState, result: LookaheadResult) -> dict[str, float]:
        t = state.step
        later = [s for s in self.schedule if s > t]
        self._open_window(t, result.checkpoint, later[0] if later else self.total_steps)
        end_reward = result.metrics[-1].get("reward/on_policy_mean", float("nan"))
        self.event(step=t, kind="intervention", delta=self.cfg.delta, lookahead_reward_end=end_reward)
        return {"npo/intervention": 1.0, "npo/delta": float(self.cfg.delta), "npo/lookahead_reward_end": end_reward}

    def _open_window(self, t: int, checkpoint: Checkpoint, default_end: int) -> None:
        """Guide from ``checkpoint`` from step t until ``default_end``, or for ``npo.guidance_window`` steps."""
        self.checkpoint = checkpoint
        end = min(default_end, self.total_steps)
        self.until = min(end, t + self.cfg.guidance_window) if self.cfg.guidance_window else end

    def policy_for(self, step: int) -> Checkpoint | None:
        """The guide checkpoint if guidance is active at ``step``."""
        return self.checkpoint if step < self.until else None

    def guides(self, state: TrainState, batch: RolloutBatch, grpo: GRPOConfig) -> GuidePlan | None:
        policy = self.policy_for(state.step)
        if policy is None:
            return None
        rows, gated = policy_rows_for(state, batch, grpo, policy, self.cfg.gate, self.cfg.guide_samples)
        plan_rows = rows if rows is not None else batch.select([])
        loss = dict(guide_loss=self.cfg.guide_loss, shaping_gamma=self.cfg.shaping_gamma, is_cap=self.cfg.is_cap)
        return GuidePlan(plan_rows, gated, "replace", self.cfg.guide_slots, self.cfg.slot, loss)

    def state_dict(self) -> dict[str, Any]:
        # the guide checkpoint pi_{t+Delta} (a backend checkpoint: weights + RNG, or a folder) and its window
        return {**super().state_dict(), "checkpoint": self.checkpoint, "until": self.until}

    def load_state_dict(self, d: dict[str, Any]) -> None:
        super().load_state_dict(d)
        self.checkpoint, self.until = d["checkpoint"], int(d["until"])
