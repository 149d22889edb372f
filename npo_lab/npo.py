"""NPO's control flow: snapshot, look ahead, keep the near-future checkpoint, roll back.

At an intervention step t (NPO, arXiv 2604.20733):

1. snapshot the whole training state (weights + backend RNG, optimizer, global RNGs, data cursor);
2. train ahead ``delta`` plain GRPO steps, then keep pi_{t+delta} (``backend.save()``);
3. restore step t exactly;
4. train on from t, replacing one slot of each failing group with a verified-correct row from pi_{t+delta}.

Everything here is written against the five-method backend protocol, so it runs unchanged on every backend.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from npo_lab.backend import Checkpoint
from npo_lab.config import NPOConfig
from npo_lab.utils import capture_rng, restore_rng


@dataclass
class Snapshot:
    """Everything needed to continue a run from one step exactly."""

    step: int
    policy: Checkpoint
    optimizer: dict[str, Any]
    rng: dict[str, Any]
    sampler: dict[str, int]


def snapshot(state: Any) -> Snapshot:
    """Capture ``state`` (a :class:`npo_lab.trainer.TrainState`)."""
    return Snapshot(
        step=state.step,
        policy=state.backend.save(),
        optimizer=copy.deepcopy(state.optimizer.state_dict()),
        rng=capture_rng(),
        sampler=state.sampler.state_dict(),
    )


def restore(state: Any, snap: Snapshot, restore_optimizer: bool = True) -> None:
    """Put ``state`` back exactly where ``snap`` was taken (the optimizer optionally kept as it is)."""
    state.backend.load(snap.policy)
    if restore_optimizer:
        state.optimizer.load_state_dict(copy.deepcopy(snap.optimizer))
    restore_rng(snap.rng)
    state.sampler.load_state_dict(snap.sampler)
    state.step = snap.step


@dataclass
class LookaheadResult:
    """The near-future checkpoint and what it cost."""

    checkpoint: Checkpoint
    steps: int
    seconds: float
    metrics: list[dict[str, float]] = field(default_factory=list)


def lookahead(
    state: Any, delta: int, plain_step: Callable[[], dict[str, float]], restore_optimizer: bool = True
) -> LookaheadResult:
    """Train ``delta`` plain steps ahead, keep pi_{t+delta}, and roll back to step t.

    Args:
        state: the training state (backend, optimizer, sampler, step).
        delta: look-ahead distance.
        plain_step: runs one plain GRPO step on ``state`` and returns its metrics.
        restore_optimizer: restore the optimizer on rollback (exact rollback).
    """
    t0 = time.perf_counter()
    snap = snapshot(state)
    history = [plain_step() for _ in range(delta)]
    future = state.backend.save()
    restore(state, snap, restore_optimizer)
    return LookaheadResult(checkpoint=future, steps=delta, seconds=time.perf_counter() - t0, metrics=history)


class NearFutureGuide:
    """NPO's guide source with a manual intervention schedule (early bootstrap, plateau breakthrough).

    ``before_step`` runs the look-ahead at each scheduled step; ``policy_for(step)`` returns the guide
    checkpoint while its guidance window is open.
    """

    def __init__(self, cfg: NPOConfig, total_steps: int) -> None:
        self.cfg = cfg
        self.schedule = cfg.intervention_steps(total_steps)
        self.total_steps = total_steps
        self.checkpoint: Checkpoint | None = None
        self.until = -1
        self.lookahead_steps = 0
        self.lookahead_seconds = 0.0
        self.interventions: list[int] = []

    def before_step(self, state: Any, plain_step: Callable[[], dict[str, float]]) -> dict[str, float]:
        """Look ahead if ``state.step`` is an intervention step; returns ``npo/*`` metrics."""
        t = state.step
        if t not in self.schedule:
            return {}
        res = lookahead(state, self.cfg.delta, plain_step, self.cfg.restore_optimizer)
        self.checkpoint = res.checkpoint
        later = [s for s in self.schedule if s > t]
        end = later[0] if later else self.total_steps
        self.until = min(end, t + self.cfg.guidance_window) if self.cfg.guidance_window else end
        self.lookahead_steps += res.steps
        self.lookahead_seconds += res.seconds
        self.interventions.append(t)
        return {
            "npo/intervention": 1.0,
            "npo/delta": float(self.cfg.delta),
            "npo/lookahead_steps": float(self.lookahead_steps),
            "npo/lookahead_s": res.seconds,
            "npo/lookahead_reward_end": res.metrics[-1].get("reward/on_policy_mean", float("nan")),
        }

    def policy_for(self, step: int) -> Checkpoint | None:
        """The guide checkpoint if guidance is active at ``step``."""
        return self.checkpoint if step < self.until else None
