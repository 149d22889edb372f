"""What the small backends share: a torch policy ``self.model`` with a sampling generator ``self.gen``, kept
as in-memory checkpoints, and sampling from a saved checkpoint through a second copy of the network."""

from __future__ import annotations

import copy
from collections.abc import Iterator

import torch
from torch import nn

from npo_lab.backend import Checkpoint, clone_state


class InMemoryPolicy:
    """``parameters``, ``save`` and ``load`` of the Backend protocol for a policy held in memory.

    A checkpoint is ``{"weights": state dict copy, "rng": sampling generator state}``: NPO's look-ahead and
    rollback cost one state-dict copy. Subclasses set ``self.model`` and ``self.gen``."""

    model: nn.Module
    gen: torch.Generator
    _shadow: nn.Module | None = None

    def parameters(self) -> Iterator[nn.Parameter]:
        return self.model.parameters()

    def save(self) -> Checkpoint:
        return {"weights": clone_state(self.model.state_dict()), "rng": self.gen.get_state()}

    def load(self, checkpoint: Checkpoint) -> None:
        self.model.load_state_dict(checkpoint["weights"])
        self.gen.set_state(checkpoint["rng"])

    def _policy_model(self, policy: Checkpoint | None) -> nn.Module:
        """The current network, or a frozen second copy holding ``policy``'s weights (the guide, the teacher)."""
        if policy is None:
            return self.model
        if self._shadow is None:
            self._shadow = copy.deepcopy(self.model)
            self._shadow.requires_grad_(False)
        self._shadow.load_state_dict(policy["weights"])
        return self._shadow
