"""What several methods share: the failing groups of a batch, and sampling guide rows for them from a policy.

The interface every method implements is :class:`npo_lab.train.method.Method`; its plainest implementation, the
base class of the others, is :class:`npo_lab.methods.grpo.GRPO`.
"""

from __future__ import annotations

from typing import Any

import torch

from npo_lab.backend import Checkpoint
from npo_lab.batch import RolloutBatch
from npo_lab.config import GRPOConfig
from npo_lab.core.guidance import group_accuracy, guide_gate
from npo_lab.train.state import TrainState


def failing_groups(batch: RolloutBatch, gate: float, correct_threshold: float) -> tuple[dict[int, float], list[int]]:
    """On-policy group accuracies (guide rows excluded) and the prompts strictly below ``gate``."""
    on = batch.select(torch.nonzero(~batch.is_guide).squeeze(-1)) if batch.is_guide.any() else batch
    acc = group_accuracy(on.rewards, on.group_ids, correct_threshold)
    ids = list(acc)
    gate_on = guide_gate(torch.tensor([acc[g] for g in ids], dtype=torch.float64), gate)  # (n_groups,)
    return acc, [g for g, on_ in zip(ids, gate_on.tolist()) if on_]


def policy_rows_for(
    state: TrainState, batch: RolloutBatch, grpo: GRPOConfig, policy: Checkpoint, gate: float, samples: int
) -> tuple[RolloutBatch | None, list[int]]:
    """Sample ``samples`` rows from ``policy`` for every prompt of ``batch`` whose group is below ``gate``."""
    _, gated = failing_groups(batch, gate, grpo.correct_threshold)
    if not gated:
        return None, []
    return state.backend.rollout(gated, samples, policy=policy), gated


def rng_state(saved: Any) -> tuple[Any, ...]:
    """A ``random.Random`` state read back from a checkpoint (lists there, tuples for ``setstate``)."""
    version, internal, gauss = saved
    return (version, tuple(internal), gauss)
