"""What the training loop asks of a method, as plain data: the :class:`Method` protocol, the :class:`GuidePlan` a
method offers a batch, and the :class:`StepOutcome` it observes after a step.

The methods themselves (GRPO, NPO, AutoNPO, LUFFY, ExGRPO, RLEP) live in :mod:`npo_lab.methods`, one file each.
The loop never hands a method a callback: a method that wants to look ahead says so
(:meth:`Method.wants_lookahead`), the loop looks ahead and rolls back, and gives the method the checkpoints
(:meth:`Method.use_lookahead`); a method that wants to go back to an earlier step (AutoNPO) asks the loop to keep
snapshots (:attr:`Method.snapshots`) and names the step (:meth:`Method.wants_rollback`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from torch import Tensor

from npo_lab.backend import Checkpoint
from npo_lab.batch import RolloutBatch
from npo_lab.config import GRPOConfig
from npo_lab.train.rollback import LookaheadResult
from npo_lab.train.state import TrainState


@dataclass
class GuidePlan:
    """The guide rows a method offers one batch, and how they enter it.

    Args:
        rows: candidate guide rows; ``group_ids`` names the prompt each answers (wrong rows are never used).
        targets: prompt ids whose groups may receive rows.
        mode: ``replace`` (k slots of the group) or ``append`` (k rows added: the group grows).
        k: rows per target group.
        slot: which slots ``replace`` uses (``last`` or ``incorrect_first``).
        loss: keyword arguments of :func:`npo_lab.core.losses.policy_loss` for guide rows
            (``guide_loss``, ``shaping_gamma``, ``is_cap``).
        metrics: extra metrics of the method for this step.
    """

    rows: RolloutBatch
    targets: list[int]
    mode: Literal["replace", "append"] = "replace"
    k: int = 1
    slot: str = "last"
    loss: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class LookaheadRequest:
    """A method's request to look ahead before a step (:meth:`Method.wants_lookahead`)."""

    deltas: tuple[int, ...]
    """Keep pi_{t+Delta} for each Delta; one run of max(deltas) plain steps, rolled back."""
    restore_optimizer: bool = True
    """Restore the optimizer on rollback (an exact rollback); False keeps the look-ahead's Adam moments."""

    def __post_init__(self) -> None:
        if not self.deltas or min(self.deltas) < 1:
            raise ValueError(f"look-ahead distances must be >= 1, got {self.deltas!r}")


@dataclass(frozen=True)
class SnapshotRing:
    """Which past states the loop keeps for a method that may roll back: one every ``every`` steps, for ``horizon``
    steps (snapshots at steps divisible by ``every``, no older than the current step minus ``horizon``)."""

    every: int
    horizon: int

    def __post_init__(self) -> None:
        if self.every < 1 or self.horizon < self.every:
            raise ValueError(
                f"a snapshot ring needs every >= 1 and horizon >= every, not {self.every}, {self.horizon}"
            )


@dataclass(frozen=True)
class RollbackRequest:
    """A method's request to put the run back to an earlier step and train again from there."""

    to_step: int
    """A step of the snapshot ring, before the current step."""
    reason: str = ""


@dataclass
class StepOutcome:
    """What one training step did, for the method to observe (:meth:`Method.after_step`).

    Args:
        batch: the rows the update trained on (guide rows merged), with their ratio anchors.
        rollout: the on-policy rows as sampled, before any guide row replaced one of them.
        entropy: (B, T) per-token entropies of ``batch`` under the policy before the update, or None.
        metrics: the step's metrics.
    """

    batch: RolloutBatch
    rollout: RolloutBatch
    entropy: Tensor | None
    metrics: dict[str, float]


class Method(Protocol):
    """A training method: plain GRPO plus where extra rows come from and when to look ahead.

    Per step the loop calls, in this order: :meth:`metrics` and :meth:`wants_lookahead` (then, if it asked,
    looks ahead, rolls back and calls :meth:`use_lookahead`); :meth:`wants_rollback` (then, if it asked, restores the
    snapshot, calls :meth:`use_rollback` and continues from that step); inside the GRPO step :meth:`choose_prompts`
    and :meth:`guides`; and :meth:`after_step`. :meth:`setup` runs once before the first step of a new run.
    """

    name: str
    snapshots: SnapshotRing | None
    """None, or the past states the loop must keep so that :meth:`wants_rollback` can return to one."""
    events: list[dict[str, Any]]
    """Every decision the method took (interventions, scores, pool builds), in order."""
    emit: Callable[[dict[str, Any]], None] | None
    """Set by the loop to receive each event as it happens (the run folder's event log)."""

    def setup(self, state: TrainState) -> None: ...

    def metrics(self, state: TrainState) -> dict[str, float]:
        """The method's own readings at the start of the step, logged with it (e.g. AutoNPO's signals)."""
        ...

    def wants_lookahead(self, state: TrainState) -> LookaheadRequest | None:
        """Whether to look ahead before this step, and how far; None for no look-ahead."""
        ...

    def use_lookahead(self, state: TrainState, result: LookaheadResult) -> dict[str, float]:
        """Take the near-future checkpoints (the run is back at step t); returns metrics of the intervention."""
        ...

    def wants_rollback(self, state: TrainState, past: dict[int, Checkpoint]) -> RollbackRequest | None:
        """Whether to go back to an earlier step now; ``past`` holds the policy of every kept snapshot by step."""
        ...

    def use_rollback(self, state: TrainState, request: RollbackRequest) -> dict[str, float]:
        """The run is back at ``request.to_step`` (weights, optimizer, RNGs, data cursor); returns metrics."""
        ...

    def choose_prompts(self, state: TrainState, prompts: list[int]) -> list[int]: ...

    def guides(self, state: TrainState, batch: RolloutBatch, grpo: GRPOConfig) -> GuidePlan | None: ...

    def after_step(self, state: TrainState, outcome: StepOutcome) -> None: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, d: dict[str, Any]) -> None: ...
