"""The backend protocol: the five things the NPO core needs from a policy, and a tiny test double.

A backend owns a policy and everything needed to sample from it (tokenizer, environments, a
generation engine). It never owns the loss: the trainer calls :func:`npo_lab.core.losses.policy_loss`.
A *prompt id* is whatever indexes the backend's training prompts: a task index (arithmetic), a reset
seed (gym), a dataset row (Qwen3-VL). Rows that share a prompt id form a GRPO group.

Optional capabilities outside the protocol, each read in one place:

* ``teacher() -> Checkpoint``: an external teacher the backend can sample from with ``rollout(..., policy=teacher)``;
  only the ``luffy`` method needs it, and ``npo-lab compare`` names the backend when it is missing;
* ``update_strategy``: an :class:`UpdateStrategy`, when the backend's engine owns backward and the optimizer step
  or splits rows over processes (FSDP2, DeepSpeed ZeRO-3); without one, :class:`LocalUpdate` (one process, Adam);
* ``batch_metrics(batch) -> dict``: extra metrics of a batch (per-reward, on-policy vs guide rows);
* ``entropy_grad``: a flag the trainer sets False when no loss term needs the entropy's gradient;
* ``close()``: release processes and scratch folders (called by the command line when a run ends).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor, nn

from npo_lab.batch import RolloutBatch

Checkpoint = Any
"""Opaque handle chosen by the backend: an in-memory copy of the weights for small models, a folder on disk
for large ones. It must hold the weights and the backend's own sampling RNG."""


@runtime_checkable
class Backend(Protocol):
    """What the NPO/AutoNPO core calls.

    The five methods are what the look-ahead/rollback driver needs; ``num_prompts`` sizes the data cursor
    and ``evaluate`` gives the held-out score the trainer logs."""

    @property
    def num_prompts(self) -> int:
        """Training prompts; prompt ids are 0 .. num_prompts - 1."""
        ...

    def evaluate(self) -> dict[str, float]:
        """Held-out metrics of the current weights; must include ``eval/accuracy``."""
        ...

    def rollout(self, prompt_ids: Sequence[int], n: int, policy: Checkpoint | None = None) -> RolloutBatch:
        """Sample ``n`` rows for each prompt (rows grouped prompt by prompt), scored by the verifier.

        ``policy=None`` samples from the current weights; a checkpoint from :meth:`save` samples from that
        saved policy (the near-future guide) without changing the current weights.
        ``behavior_logprobs`` are the sampling policy's log-probs of the sampled tokens. A backend whose sampler does
        not produce them for free may leave them NaN on rows of the current weights (``policy=None``): they equal
        the ratio anchor ``old_logprobs``, and the trainer fills them in when it computes that (no extra pass)."""
        ...

    def logprobs(self, batch: RolloutBatch, policy: Checkpoint | None = None) -> tuple[Tensor, Tensor | None]:
        """(B, T) per-token log-probs of the batch's rows and (B, T) entropies (or None).

        Differentiable under the current weights when ``policy`` is None; under a checkpoint otherwise."""
        ...

    def parameters(self) -> Iterator[nn.Parameter]:
        """The trainable parameters (the trainer builds the optimizer over them)."""
        ...

    def save(self) -> Checkpoint:
        """A checkpoint of the weights and the backend's sampling RNG."""
        ...

    def load(self, checkpoint: Checkpoint) -> None:
        """Restore weights and sampling RNG exactly as :meth:`save` captured them."""
        ...


@runtime_checkable
class UpdateStrategy(Protocol):
    """How a loss becomes an optimizer step: one process (:class:`LocalUpdate`), or an engine that shards rows and
    weights over processes (FSDP2) or also owns backward and the step (DeepSpeed ZeRO-3, ``npo_lab.llm.zero``).

    The trainer gives every rank rows ``rank::world_size`` of a minibatch and scales its loss by ``world_size``
    (gradients are averaged over ranks)."""

    world_size: int
    rank: int

    def make_optimizer(self, params: list[nn.Parameter], lr: float) -> torch.optim.Optimizer:
        """The optimizer the trainer steps (and snapshots for rollback)."""
        ...

    def backward(self, loss: Tensor) -> None:
        """Accumulate the gradients of ``loss``."""
        ...

    def step(self, optimizer: torch.optim.Optimizer, max_grad_norm: float) -> float:
        """Clip the accumulated gradients to ``max_grad_norm`` (0: no clip), apply the update, and return the
        gradient norm before clipping; a non-finite norm is returned without applying any update."""
        ...


class LocalUpdate:
    """The default :class:`UpdateStrategy`: torch Adam, ``loss.backward()``, global-norm clipping. With
    ``world_size > 1`` it serves FSDP2 too, whose sharded gradient norm is a DTensor."""

    def __init__(self, world_size: int = 1, rank: int = 0) -> None:
        self.world_size, self.rank = world_size, rank

    def make_optimizer(self, params: list[nn.Parameter], lr: float) -> torch.optim.Optimizer:
        return torch.optim.Adam(params, lr=lr)

    def backward(self, loss: Tensor) -> None:
        loss.backward()

    def step(self, optimizer: torch.optim.Optimizer, max_grad_norm: float) -> float:
        params = [p for g in optimizer.param_groups for p in g["params"]]
        norm = torch.nn.utils.clip_grad_norm_(params, max_grad_norm or float("inf"))
        if hasattr(norm, "full_tensor"):  # sharded parameters (FSDP2): the norm is a DTensor
            norm = norm.full_tensor()
        value = norm.item()
        if math.isfinite(value):
            optimizer.step()
        return value


def update_strategy(backend: Any) -> UpdateStrategy:
    """The backend's :class:`UpdateStrategy` (its optional ``update_strategy``), else one process."""
    strategy = getattr(backend, "update_strategy", None)
    return strategy if strategy is not None else LocalUpdate()


class ScriptedBackend:
    """A tabular test double: prompt p must emit the token sequence ``answers[p]`` (length T) exactly.

    The policy is a (n_prompts, T, V) table of logits, so every gradient is cheap and exact. Used by the
    tests of the trainer and the NPO driver; it is also a clean contextual bandit for teaching.
    """

    def __init__(self, n_prompts: int = 8, seq_len: int = 2, vocab: int = 4, seed: int = 0, init_bias: float = 0.0):
        g = torch.Generator().manual_seed(seed)
        self.answers = torch.randint(0, vocab, (n_prompts, seq_len), generator=g)  # (P, T)
        self.table = nn.Parameter(torch.zeros(n_prompts, seq_len, vocab))  # (P, T, V) logits
        with torch.no_grad():
            self.table.scatter_(2, self.answers.unsqueeze(-1), init_bias)
        self.gen = torch.Generator().manual_seed(seed + 1)
        self.seq_len, self.vocab = seq_len, vocab

    @property
    def num_prompts(self) -> int:
        return self.answers.shape[0]

    def _table(self, policy: Checkpoint | None) -> Tensor:
        return self.table if policy is None else policy["weights"]["table"]

    def rollout(self, prompt_ids: Sequence[int], n: int, policy: Checkpoint | None = None) -> RolloutBatch:
        pids = torch.tensor(list(prompt_ids), dtype=torch.long).repeat_interleave(n)  # (B,)
        with torch.no_grad():
            logp_all = torch.log_softmax(self._table(policy)[pids], -1)  # (B, T, V)
            tokens = torch.multinomial(logp_all.exp().reshape(-1, self.vocab), 1, generator=self.gen)
            tokens = tokens.reshape(len(pids), self.seq_len)  # (B, T)
            behavior = logp_all.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)  # (B, T)
        rewards = (tokens == self.answers[pids]).all(-1).float()
        return RolloutBatch.from_rows(
            behavior_logprobs=behavior,
            mask=torch.ones_like(behavior),
            rewards=rewards,
            group_ids=pids,
            extras=[{"prompt": int(p), "tokens": tok} for p, tok in zip(pids.tolist(), tokens)],
        )

    def logprobs(self, batch: RolloutBatch, policy: Checkpoint | None = None) -> tuple[Tensor, Tensor | None]:
        pids = torch.tensor([e["prompt"] for e in batch.extras], dtype=torch.long)
        tokens = torch.stack([e["tokens"] for e in batch.extras])  # (B, T)
        logp_all = torch.log_softmax(self._table(policy)[pids], -1)  # (B, T, V)
        entropy = -(logp_all.exp() * logp_all).sum(-1)  # (B, T)
        return logp_all.gather(-1, tokens.unsqueeze(-1)).squeeze(-1), entropy

    def parameters(self) -> Iterator[nn.Parameter]:
        yield self.table

    def save(self) -> Checkpoint:
        return {"weights": {"table": self.table.detach().clone()}, "rng": self.gen.get_state()}

    def load(self, checkpoint: Checkpoint) -> None:
        with torch.no_grad():
            self.table.copy_(checkpoint["weights"]["table"])
        self.gen.set_state(checkpoint["rng"])

    def evaluate(self) -> dict[str, float]:
        """Greedy accuracy over all prompts."""
        with torch.no_grad():
            greedy = self.table.argmax(-1)  # (P, T)
        return {"eval/accuracy": (greedy == self.answers).all(-1).float().mean().item()}


def clone_state(module_state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Detached deep copy of a state dict (for in-memory checkpoints)."""
    return {k: v.detach().clone() for k, v in module_state.items()}


__all__ = [
    "Backend",
    "Checkpoint",
    "LocalUpdate",
    "ScriptedBackend",
    "UpdateStrategy",
    "clone_state",
    "update_strategy",
]
