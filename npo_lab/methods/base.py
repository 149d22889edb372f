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


def failing_groups(
    batch: RolloutBatch, gate: float, correct_threshold: float, op: str = "le"
) -> tuple[dict[int, float], list[int]]:
    """On-policy group accuracies (guide rows excluded) and the prompts the gate lets through (accuracy at most
    ``gate`` with ``op="le"``, strictly below with ``"lt"``; :func:`npo_lab.core.guidance.guide_gate`)."""
    on = batch.select(torch.nonzero(~batch.is_guide).squeeze(-1)) if batch.is_guide.any() else batch
    acc = group_accuracy(on.rewards, on.group_ids, correct_threshold)
    ids = list(acc)
    gate_on = guide_gate(torch.tensor([acc[g] for g in ids], dtype=torch.float64), gate, op)  # (n_groups,)
    return acc, [g for g, on_ in zip(ids, gate_on.tolist()) if on_]


def policy_rows_for(
    state: TrainState,
    batch: RolloutBatch,
    grpo: GRPOConfig,
    policy: Checkpoint,
    gate: float,
    samples: int,
    op: str = "le",
) -> tuple[RolloutBatch | None, list[int]]:
    """Sample ``samples`` rows from ``policy`` for every prompt of ``batch`` the gate lets through."""
    _, gated = failing_groups(batch, gate, grpo.correct_threshold, op)
    if not gated:
        return None, []
    return state.backend.rollout(gated, samples, policy=policy), gated


def verified_rows(rows: RolloutBatch, correct_threshold: float) -> dict[int, RolloutBatch]:
    """The first verified-correct row of each prompt in ``rows`` (sampling order), keyed by prompt id: what a guide
    cache keeps (one trajectory per prompt, with its behaviour log-probs). A prompt with no correct row is absent."""
    kept: dict[int, RolloutBatch] = {}
    for i, (p, r) in enumerate(zip(rows.group_ids.tolist(), rows.rewards.tolist())):
        if r > correct_threshold and p not in kept:
            kept[int(p)] = rows.select([i]).trim()
    return kept


def rng_state(saved: Any) -> tuple[Any, ...]:
    """A ``random.Random`` state read back from a checkpoint (lists there, tuples for ``setstate``)."""
    version, internal, gauss = saved
    return (version, tuple(internal), gauss)
