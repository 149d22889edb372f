"""GRPO (arXiv 2402.03300): the GRPO step alone, no guide rows. Every other method extends this class and
overrides the hooks it needs (:class:`npo_lab.train.method.Method` says when the loop calls each)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from npo_lab.backend import Checkpoint
from npo_lab.batch import RolloutBatch
from npo_lab.config import GRPOConfig, MethodConfigs
from npo_lab.train.method import GuidePlan, LookaheadRequest, RollbackRequest, SnapshotRing, StepOutcome
from npo_lab.train.rollback import LookaheadResult
from npo_lab.train.state import TrainState


class GRPO:
    """Plain GRPO: G on-policy rows per prompt, nothing else; each hook does nothing.

    >>> GRPO().wants_lookahead(state=None) is None
    True
    """

    name = "grpo"
    snapshots: SnapshotRing | None = None

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self.emit: Callable[[dict[str, Any]], None] | None = None

    @classmethod
    def from_configs(
        cls,
        cfgs: MethodConfigs,
        *,
        total_steps: int,
        grpo: GRPOConfig,
        teacher: Checkpoint | None = None,
        previous: Checkpoint | None = None,
        seed: int = 0,
    ) -> GRPO:
        """The method as configured (the registry's constructor; every method takes the same arguments)."""
        return cls()

    def event(self, **ev: Any) -> None:
        """Record a decision (and pass it to the run's event log as it happens)."""
        self.events.append(ev)
        if self.emit is not None:
            self.emit(ev)

    # ---- the hooks of npo_lab.train.method.Method, in the order the loop calls them ---------------------
    def setup(self, state: TrainState) -> None:
        """Called once before the first step (not again when a run resumes from a checkpoint)."""

    def metrics(self, state: TrainState) -> dict[str, float]:
        return {}

    def wants_lookahead(self, state: TrainState) -> LookaheadRequest | None:
        return None

    def use_lookahead(self, state: TrainState, result: LookaheadResult) -> dict[str, float]:
        return {}

    def wants_rollback(self, state: TrainState, past: dict[int, Checkpoint]) -> RollbackRequest | None:
        return None

    def use_rollback(self, state: TrainState, request: RollbackRequest) -> dict[str, float]:
        return {}

    def choose_prompts(self, state: TrainState, prompts: list[int]) -> list[int]:
        return prompts

    def guides(self, state: TrainState, batch: RolloutBatch, grpo: GRPOConfig) -> GuidePlan | None:
        return None

    def after_step(self, state: TrainState, outcome: StepOutcome) -> None:
        pass

    # ---- exact resume -------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Everything this method carries from step to step, for exact resume: plain Python values, tensors and
        backend checkpoints (a training checkpoint stores them). Subclasses extend it with their pools."""
        return {"events": list(self.events)}

    def load_state_dict(self, d: dict[str, Any]) -> None:
        """Inverse of :meth:`state_dict`."""
        self.events = list(d["events"])
