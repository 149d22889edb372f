"""The one data type that crosses the core/backend boundary.

Names used everywhere in npo_lab (defined once, here):

* ``B``: rows in a batch (prompts x G for group sampling), ``T``: tokens (LLM) or steps (gym).
* ``behavior_logprobs`` (B, T): log-probs under the policy that *sampled* the row: pi_t for on-policy
  rows, pi_{t+Delta} for near-future guide rows. Needed for the variance cost V and for the
  ``importance`` guide treatment. NaN on rows a backend sampled from the current weights without computing
  them; the trainer fills them with ``old_logprobs`` (the same quantity) before the update.
* ``old_logprobs`` (B, T): log-probs under the current policy before the update, recomputed with the
  training forward path. The PPO/GRPO ratio anchor.
* ``logprobs`` (B, T): log-probs under the current weights, differentiable (computed in the loss).
* ``ref_logprobs`` (B, T): log-probs under the reference policy, only when a KL term is configured.
* ``mask`` (B, T): 1.0 where the token/step is an action of the policy that enters the loss.
* ``rewards`` (B,): verifier score (1.0 correct, 0.0 wrong) or episode success.
* ``group_ids`` (B,): the prompt id; rows that share it form one GRPO group.
* ``is_guide`` (B,): True for rows that came from a guide source (e.g. the near-future checkpoint).
* ``advantages`` (B,): group-relative advantages, broadcast over T in the loss.
* ``extras``: a per-row list of backend-private data (token ids, images, observations). The core
  slices it together with the tensors and never reads it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, fields, replace
from typing import Any

import torch
from torch import Tensor

_PER_TOKEN = ("behavior_logprobs", "old_logprobs", "mask")
_PER_ROW = ("rewards", "group_ids", "is_guide")


@dataclass(frozen=True)
class RolloutBatch:
    """One batch of sampled rows, validated on construction.

    Args:
        behavior_logprobs: (B, T) float, log-probs under the sampling policy.
        old_logprobs: (B, T) float, current policy before the update (the ratio anchor).
        mask: (B, T) float in {0, 1}, which positions enter the loss.
        rewards: (B,) float.
        group_ids: (B,) int64, prompt id of each row.
        is_guide: (B,) bool, True for guide rows.
        ref_logprobs: optional (B, T) float, reference-policy log-probs for the KL term.
        extras: list of length B with backend-private per-row data.

    >>> b = RolloutBatch.from_rows(behavior_logprobs=torch.zeros(2, 3), mask=torch.ones(2, 3),
    ...                            rewards=torch.tensor([1.0, 0.0]), group_ids=torch.tensor([0, 0]))
    >>> b.size, b.select(torch.tensor([1])).rewards.tolist()
    (2, [0.0])
    """

    behavior_logprobs: Tensor
    old_logprobs: Tensor
    mask: Tensor
    rewards: Tensor
    group_ids: Tensor
    is_guide: Tensor
    ref_logprobs: Tensor | None = None
    extras: list[Any] = field(default_factory=list)

    @classmethod
    def from_rows(
        cls,
        *,
        behavior_logprobs: Tensor,
        mask: Tensor,
        rewards: Tensor,
        group_ids: Tensor,
        is_guide: Tensor | None = None,
        old_logprobs: Tensor | None = None,
        extras: Sequence[Any] | None = None,
    ) -> RolloutBatch:
        """Build a batch as a backend's rollout does: old_logprobs default to the behaviour log-probs
        (exact for on-policy rows at temperature 1; the trainer recomputes them before the update),
        is_guide defaults to all False, extras to a list of None."""
        n = rewards.shape[0]
        return cls(
            behavior_logprobs=behavior_logprobs,
            old_logprobs=behavior_logprobs.clone() if old_logprobs is None else old_logprobs,
            mask=mask,
            rewards=rewards,
            group_ids=group_ids,
            is_guide=torch.zeros(n, dtype=torch.bool, device=rewards.device) if is_guide is None else is_guide,
            extras=[None] * n if extras is None else list(extras),
        )

    def __post_init__(self) -> None:
        if self.mask.dim() != 2:
            raise ValueError(f"RolloutBatch.mask must be (B, T), got shape {tuple(self.mask.shape)}")
        b, t = self.mask.shape
        for name in _PER_TOKEN + (("ref_logprobs",) if self.ref_logprobs is not None else ()):
            shape = tuple(getattr(self, name).shape)
            if shape != (b, t):
                raise ValueError(f"RolloutBatch.{name} must have shape (B, T) = {(b, t)}, got {shape}")
        for name in _PER_ROW:
            shape = tuple(getattr(self, name).shape)
            if shape != (b,):
                raise ValueError(f"RolloutBatch.{name} must have shape (B,) = {(b,)}, got {shape}")
        if self.is_guide.dtype != torch.bool:
            raise ValueError(f"RolloutBatch.is_guide must be bool, got {self.is_guide.dtype}")
        if self.group_ids.dtype not in (torch.int32, torch.int64):
            raise ValueError(f"RolloutBatch.group_ids must be an integer tensor, got {self.group_ids.dtype}")
        if len(self.extras) != b:
            raise ValueError(f"RolloutBatch.extras must have one entry per row (B = {b}), got {len(self.extras)}")

    @property
    def size(self) -> int:
        """Number of rows B."""
        return self.mask.shape[0]

    def select(self, idx: Tensor | Sequence[int]) -> RolloutBatch:
        """Rows ``idx`` (in that order) of every tensor and of ``extras``."""
        idx = torch.as_tensor(idx, dtype=torch.long, device=self.mask.device)
        kwargs: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "extras":
                kwargs[f.name] = [value[i] for i in idx.tolist()]
            elif value is not None:
                kwargs[f.name] = value[idx]
        return RolloutBatch(**kwargs)

    def trim(self) -> RolloutBatch:
        """Drop trailing token columns that are masked out in every row."""
        t = int(self.mask.sum(-1).max().item()) if self.size else 0
        if t == self.mask.shape[1]:
            return self
        ref = None if self.ref_logprobs is None else self.ref_logprobs[:, :t]
        return replace(
            self,
            behavior_logprobs=self.behavior_logprobs[:, :t],
            old_logprobs=self.old_logprobs[:, :t],
            mask=self.mask[:, :t],
            ref_logprobs=ref,
        )

    def replace(self, **changes: Any) -> RolloutBatch:
        """A copy with some fields changed (validated again)."""
        return replace(self, **changes)

    def state_dict(self) -> dict[str, Any]:
        """The batch as plain tensors and lists (what ``torch.load(weights_only=True)`` reads back): replay pools
        in a training checkpoint. ``extras`` must then hold only tensors, numbers, strings, None, lists and dicts.

        >>> b = RolloutBatch.from_rows(behavior_logprobs=torch.zeros(1, 2), mask=torch.ones(1, 2),
        ...                            rewards=torch.ones(1), group_ids=torch.tensor([3]), extras=[{"pid": 3}])
        >>> RolloutBatch.from_state_dict(b.state_dict()).extras
        [{'pid': 3}]
        """
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_state_dict(cls, d: dict[str, Any]) -> RolloutBatch:
        """Inverse of :meth:`state_dict` (validated like any batch)."""
        return cls(**{f.name: d[f.name] for f in fields(cls) if f.name in d})

    @staticmethod
    def cat(batches: Sequence[RolloutBatch]) -> RolloutBatch:
        """Concatenate rows; token dimensions are right-padded (mask 0) to the longest batch."""
        if not batches:
            raise ValueError("RolloutBatch.cat needs at least one batch")
        t = max(b.mask.shape[1] for b in batches)

        def pad(x: Tensor) -> Tensor:
            return torch.nn.functional.pad(x, (0, t - x.shape[1]))

        with_ref = all(b.ref_logprobs is not None for b in batches)
        return RolloutBatch(
            behavior_logprobs=torch.cat([pad(b.behavior_logprobs) for b in batches]),
            old_logprobs=torch.cat([pad(b.old_logprobs) for b in batches]),
            mask=torch.cat([pad(b.mask) for b in batches]),
            rewards=torch.cat([b.rewards for b in batches]),
            group_ids=torch.cat([b.group_ids for b in batches]),
            is_guide=torch.cat([b.is_guide for b in batches]),
            ref_logprobs=torch.cat([pad(b.ref_logprobs) for b in batches]) if with_ref else None,  # type: ignore[arg-type]
            extras=[e for b in batches for e in b.extras],
        )
