"""Look-ahead and rollback: train ahead, keep the near-future checkpoints, and put the run back exactly.

NPO (arXiv 2604.20733) at step t:

1. snapshot the whole training state (weights and sampling RNG, optimizer, global RNGs, data cursor);
2. train ahead ``max(deltas)`` plain GRPO steps, keeping pi_{t+Delta} (``backend.save()``) for each Delta;
3. restore step t exactly, so the run continues from t as if nothing had happened, now holding pi_{t+Delta}.

Written against the backend protocol only, so it runs unchanged on every backend.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from npo_lab.backend import Checkpoint
from npo_lab.train.state import TrainState

Snapshot = dict[str, Any]
"""A :meth:`TrainState.state_dict` kept in memory (its optimizer state deep-copied)."""


def snapshot(state: TrainState) -> Snapshot:
    """Everything needed to continue ``state`` from its current step exactly."""
    return state.state_dict()


def restore(state: TrainState, snap: Snapshot, restore_optimizer: bool = True) -> None:
    """Put ``state`` back exactly where ``snap`` was taken (the optimizer optionally kept as it is now)."""
    state.load_state_dict(snap, optimizer=restore_optimizer)


@dataclass
class LookaheadResult:
    """The near-future checkpoints of one look-ahead and what they cost."""

    checkpoints: dict[int, Checkpoint]
    """pi_{t+Delta} for every requested Delta."""
    steps: int
    """Plain steps trained ahead (max Delta), all rolled back."""
    seconds: float
    metrics: list[dict[str, float]] = field(default_factory=list)
    """The metrics of every look-ahead step."""

    @property
    def checkpoint(self) -> Checkpoint:
        """The furthest checkpoint, pi_{t+steps}."""
        return self.checkpoints[self.steps]


def lookahead(
    state: TrainState,
    delta: int | Sequence[int],
    plain_step: Callable[[], dict[str, float]],
    restore_optimizer: bool = True,
) -> LookaheadResult:
    """Train ahead plain steps, keep pi_{t+Delta} for each requested Delta, and roll back to step t.

    Args:
        state: the training state.
        delta: the look-ahead distance, or several (one run of max(delta) steps keeps each).
        plain_step: runs one plain GRPO step on ``state`` and returns its metrics.
        restore_optimizer: restore the optimizer on rollback (exact rollback).
    """
    keep = sorted({int(d) for d in ([delta] if isinstance(delta, int) else delta)})
    if not keep or keep[0] < 1:
        raise ValueError(f"look-ahead distances must be >= 1, got {delta!r}")
    t0 = time.perf_counter()
    snap = snapshot(state)
    history, checkpoints = [], {}
    for i in range(1, keep[-1] + 1):
        history.append(plain_step())
        if i in keep:
            checkpoints[i] = state.backend.save()
    restore(state, snap, restore_optimizer)
    return LookaheadResult(checkpoints, keep[-1], time.perf_counter() - t0, history)
