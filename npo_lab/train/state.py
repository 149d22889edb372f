"""The training state: everything that changes while a run trains, with one ``state_dict`` for both uses of it.

Look-ahead and rollback keep it in memory (:mod:`npo_lab.train.rollback`); a training checkpoint writes it to disk
(:func:`save_training_checkpoint`, :mod:`npo_lab.checkpoint`). Both restore a run exactly: the policy's weights and
sampling RNG, the optimizer, every global RNG, the data cursor and the step.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from npo_lab.backend import Backend, Checkpoint, LocalUpdate, UpdateStrategy, update_strategy
from npo_lab.checkpoint import FORMAT, CheckpointError, save_checkpoint
from npo_lab.config import GRPOConfig
from npo_lab.utils import PromptSampler, capture_rng, restore_rng


@dataclass
class TrainState:
    """Everything that changes during training (what a rollback restores and a checkpoint holds)."""

    backend: Backend
    optimizer: torch.optim.Optimizer
    sampler: PromptSampler
    step: int = 0
    ref_policy: Checkpoint | None = None
    """The reference policy of the KL term (the weights at step 0), when ``grpo.kl_coef > 0``."""
    total_steps: int = 0
    """The run's length, for the learning-rate schedule (0: unknown, no decay); set by the training loop."""
    strategy: UpdateStrategy = field(default_factory=LocalUpdate)
    """How a loss becomes an optimizer step (one process, FSDP2, DeepSpeed ZeRO-3)."""

    def state_dict(self, *, policy: Checkpoint | None = None, optimizer: bool = True, copy_: bool = True) -> dict:
        """The state as a plain document.

        Args:
            policy: ``backend.save()`` when not given (pass it when saving is a collective over ranks).
            optimizer: False leaves the optimizer out (a sharded optimizer: one rank's shard is not the state).
            copy_: deep-copy the optimizer's tensors, which the next step changes in place (an in-memory snapshot
                needs it; a document written to disk at once does not).
        """
        opt = self.optimizer.state_dict() if optimizer else None
        return {
            "step": self.step,
            "policy": self.backend.save() if policy is None else policy,
            "optimizer": copy.deepcopy(opt) if copy_ else opt,
            "ref_policy": self.ref_policy,
            "rng": capture_rng(),
            "sampler": self.sampler.state_dict(),
        }

    def load_state_dict(self, doc: dict[str, Any], *, optimizer: bool = True, copy_: bool = True) -> None:
        """Put the run back where ``doc`` was taken: weights and sampling RNG, optimizer (unless ``optimizer`` is
        False: NPO's ``restore_optimizer`` option), reference policy, data cursor, step, and last every global RNG
        (so nothing after it draws from them). ``copy_`` keeps ``doc`` reusable (a snapshot restored twice)."""
        if optimizer and doc.get("optimizer") is None:
            raise CheckpointError(
                f"the state of step {doc.get('step')} holds no optimizer state (written by a sharded run): resuming "
                "from it would not be exact"
            )
        self.backend.load(doc["policy"])
        if optimizer:
            self.optimizer.load_state_dict(copy.deepcopy(doc["optimizer"]) if copy_ else doc["optimizer"])
        self.ref_policy = doc.get("ref_policy")
        self.sampler.load_state_dict(doc["sampler"])
        self.step = int(doc["step"])
        restore_rng(doc["rng"])


def make_state(backend: Backend, grpo: GRPOConfig, seed: int) -> TrainState:
    """A fresh state on ``backend``: the optimizer over its trainable parameters, the data cursor over
    ``backend.num_prompts``, and the reference policy when the KL term is on."""
    if hasattr(backend, "entropy_grad"):  # optional: a backend may skip the entropy's graph when no loss uses it
        backend.entropy_grad = grpo.entropy_coef != 0.0
    strategy = update_strategy(backend)
    optimizer = strategy.make_optimizer(list(backend.parameters()), grpo.lr)
    ref = backend.save() if grpo.kl_coef > 0 else None
    sampler = PromptSampler(backend.num_prompts, seed)
    return TrainState(backend=backend, optimizer=optimizer, sampler=sampler, ref_policy=ref, strategy=strategy)


def save_training_checkpoint(
    root: str | Path,
    state: TrainState,
    loop: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
    keep: int = 0,
    *,
    policy: Checkpoint | None = None,
    optimizer: bool = True,
) -> Path:
    """Write ``state`` (and the training loop's own ``loop`` state, and the caller's ``extra``, e.g. the loggers'
    file positions) as the checkpoint ``root/step_<state.step>/`` (:func:`npo_lab.checkpoint.save_checkpoint`)."""
    doc = {
        "format": FORMAT,
        **state.state_dict(policy=policy, optimizer=optimizer, copy_=False),
        "loop": loop or {},
        "extra": extra or {},
    }
    return save_checkpoint(root, state.step, doc, keep=keep)
