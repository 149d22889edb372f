"""Shared fixtures. Tests run single-threaded so results are deterministic and CI's 2 cores are not oversubscribed."""

from __future__ import annotations

import pytest
import torch

torch.set_num_threads(1)


def pytest_collection_modifyitems(config, items):
    """Tests marked gpu are skipped on machines without CUDA (CI has none)."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def tiny_arith():
    """A small, fast arithmetic backend (2-digit addition, no warm start unless asked)."""
    from npo_lab.envs.arithmetic_backend import ArithmeticBackend
    from npo_lab.envs.config import TinyLMConfig

    from npo_lab.tasks.arithmetic import ArithmeticConfig

    def make(seed: int = 0, warm_steps: int = 0, **task_kw):
        task = ArithmeticConfig(digits=2, n_train=256, n_eval=64, **task_kw)
        return ArithmeticBackend(task, TinyLMConfig(d_model=32, n_head=2, warm_steps=warm_steps), seed=seed)

    return make
