"""LUFFY (arXiv 2504.14945): an external teacher's verified-correct row in one slot of each group."""

from __future__ import annotations

from typing import Any

from npo_lab.backend import Checkpoint
from npo_lab.batch import RolloutBatch
from npo_lab.config import GRPOConfig, LuffyConfig, MethodConfigs
from npo_lab.methods.base import policy_rows_for
from npo_lab.methods.grpo import GRPO
from npo_lab.train.method import GuidePlan
from npo_lab.train.state import TrainState


class Luffy(GRPO):
    """The teacher is a checkpoint the backend can sample from (``backend.teacher()``; for the arithmetic backend a
    model trained on another completion style, so its correct rows are unlikely under the student: strong *and*
    far). Its rows are shaped f(p) = p / (p + gamma) and unclipped (``luffy.guide_loss``)."""

    name = "luffy"

    def __init__(self, cfg: LuffyConfig, teacher: Checkpoint) -> None:
        super().__init__()
        if teacher is None:
            raise ValueError("luffy needs an external teacher checkpoint (the backend's teacher())")
        self.cfg, self.teacher = cfg, teacher

    @classmethod
    def from_configs(cls, cfgs: MethodConfigs, *, teacher: Checkpoint | None = None, **_: Any) -> Luffy:
        return cls(cfgs.luffy, teacher)

    def guides(self, state: TrainState, batch: RolloutBatch, grpo: GRPOConfig) -> GuidePlan | None:
        rows, gated = policy_rows_for(
            state,
            batch,
            grpo,
            self.teacher,
            self.cfg.gate,
            self.cfg.teacher_samples,
            op="lt",  # strictly below
        )
        if rows is None:
            return None
        loss = dict(guide_loss=self.cfg.guide_loss, shaping_gamma=self.cfg.shaping_gamma)
        return GuidePlan(rows, gated, "replace", self.cfg.guide_slots, "last", loss)
