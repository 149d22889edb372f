"""Seeding, RNG capture, the prompt sampler (data cursor) and phase timers."""

from __future__ import annotations

import random
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (the only place npo_lab seeds global RNGs)."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def capture_rng() -> dict[str, Any]:
    """The state of every global RNG, as plain Python/tensor objects (safe for ``weights_only`` loading)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": (kind, keys.tolist(), int(pos), int(has_gauss), float(cached)),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    """Inverse of :func:`capture_rng`."""
    torch.set_rng_state(state["torch"])
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    if "cuda" in state:
        torch.cuda.set_rng_state_all(state["cuda"])


class PromptSampler:
    """Draws prompt ids without replacement, reshuffling every epoch; its cursor is part of the run state.

    >>> s = PromptSampler(5, seed=0); a = s.next(3); st = s.state_dict(); b = s.next(4)
    >>> s.load_state_dict(st); s.next(4) == b, len(set(b))
    (True, 4)
    """

    def __init__(self, n_prompts: int, seed: int) -> None:
        if n_prompts < 1:
            raise ValueError(f"PromptSampler needs at least one prompt, got {n_prompts}")
        self.n, self.seed = n_prompts, seed
        self.epoch, self.pos = 0, 0
        self._order = self._perm(0)

    def _perm(self, epoch: int) -> list[int]:
        order = list(range(self.n))
        random.Random(self.seed * 1_000_003 + epoch).shuffle(order)
        return order

    def next(self, k: int) -> list[int]:
        """``k`` distinct prompt ids. When the current epoch has fewer than ``k`` left, the rest of it is
        skipped and a new shuffled epoch starts (like ``drop_last``), so no prompt appears twice in a batch:
        two groups with one id would be merged by the group statistics."""
        if not 1 <= k <= self.n:
            raise ValueError(f"cannot draw {k} distinct prompts per step from {self.n} training prompts")
        if self.n - self.pos < k:
            self.epoch, self.pos = self.epoch + 1, 0
            self._order = self._perm(self.epoch)
        out = self._order[self.pos : self.pos + k]
        self.pos += k
        return out

    def peek(self, steps: int, k: int) -> list[list[int]]:
        """The prompts the next ``steps`` calls of ``next(k)`` will return, without moving the cursor (NPO's cache:
        after a rollback the replayed segment draws exactly these).

        >>> s = PromptSampler(5, seed=0); ahead = s.peek(2, 2)
        >>> [s.next(2), s.next(2)] == ahead
        True
        """
        probe = PromptSampler(self.n, self.seed)
        probe.load_state_dict(self.state_dict())
        return [probe.next(k) for _ in range(steps)]

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "pos": self.pos}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch, self.pos = int(state["epoch"]), int(state["pos"])
        self._order = self._perm(self.epoch)


@contextmanager
def timed(metrics: dict[str, float], name: str) -> Iterator[None]:
    """Add the wall time of the block to ``metrics['time/<name>']``."""
    t0 = time.perf_counter()
    try:
        yield
    finally:
        key = f"time/{name}"
        metrics[key] = metrics.get(key, 0.0) + time.perf_counter() - t0
