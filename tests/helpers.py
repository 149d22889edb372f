"""Helpers shared by the tests (imported as ``helpers``: pytest puts tests/ on sys.path for its conftest.py).

Time limits: hosts of the CI class differ 2.5-5x in speed and a shared host's speed changes by the minute, so no
test asserts a duration. A subprocess gets :data:`HANG_GUARD_S`, far beyond what any of them needs on a slow host
(the slowest, a grading class of three students, measures under 90 s on the project's 2-core machine), and a guard
that fires says it is a hang guard.
"""

from __future__ import annotations

import subprocess
from collections.abc import Sequence
from typing import Any

HANG_GUARD_S = 1800
"""Seconds after which a subprocess of a test is taken to hang (30 minutes; never a speed budget)."""


def run_guarded(cmd: Sequence[str], *, guard_s: float = HANG_GUARD_S, **kwargs: Any) -> subprocess.CompletedProcess:
    """``subprocess.run(cmd, **kwargs)`` under the hang guard: a command still running after ``guard_s`` is killed
    and the test fails with a message that says it hung (not that it was slow)."""
    try:
        return subprocess.run(list(cmd), timeout=guard_s, **kwargs)
    except subprocess.TimeoutExpired as e:
        raise AssertionError(
            f"hang guard: {' '.join(map(str, cmd))[:300]} was still running after {guard_s:g} s"
        ) from e


def run_cli(*args: str, env: dict[str, str] | None = None, cwd: Any = None) -> subprocess.CompletedProcess:
    """``python -m npo_lab ARGS`` in a subprocess, under the hang guard, text output captured. ``env`` replaces the
    environment (default: this one); the console is wide, since tyro draws errors in a box that would otherwise
    wrap a long path inside the message."""
    import os
    import sys

    full = {**(os.environ if env is None else env), "COLUMNS": "1000"}
    return run_guarded([sys.executable, "-m", "npo_lab", *args], capture_output=True, text=True, cwd=cwd, env=full)


def make_batch(
    rewards: Sequence[float],
    group_ids: Sequence[int],
    t: int = 3,
    behavior: float | Any = 0.0,
    extras: list[Any] | None = None,
    **fields: Any,
) -> Any:
    """A hand-made :class:`npo_lab.batch.RolloutBatch`: ``rewards`` and ``group_ids`` per row, ``t`` tokens, all
    unmasked; ``behavior`` a number for every token or a (B, T) tensor; ``fields`` any other batch field."""
    import torch

    from npo_lab.batch import RolloutBatch

    n = len(rewards)
    lp = behavior if isinstance(behavior, torch.Tensor) else torch.full((n, t), float(behavior))
    return RolloutBatch.from_rows(
        behavior_logprobs=lp,
        mask=fields.pop("mask", torch.ones(n, t)),
        rewards=torch.tensor(list(rewards), dtype=torch.float),
        group_ids=torch.tensor(list(group_ids)),
        extras=extras,
        **fields,
    )


def tiny_llm_config(reward: str = "npo_test_rewards:even_length", **over: Any) -> Any:
    """The tiny Qwen3-VL settings the llm tests share: no warm start, 6 new tokens, 8 + 4 synthetic rows, a custom
    length reward from the tests' reward module (``reward``) instead of math-verify; ``over`` replaces fields."""
    from npo_lab.llm.config import DataConfig, LLMConfig, RewardConfig

    base: dict[str, Any] = dict(
        tiny_warm_steps=0,
        max_new_tokens=6,
        micro_batch=4,
        data=DataConfig(synthetic_train=8, synthetic_eval=4, eval_rows=4),
        reward=RewardConfig(accuracy_weight=0.0, custom=reward),
    )
    base.update(over)
    return LLMConfig(**base)


def fake_run(
    method: str,
    seed: int,
    evals: Sequence[tuple[int, float]],
    interventions: Sequence[int] = (),
    delta: int = 0,
    final: float | None = None,
) -> dict[str, Any]:
    """One run's result as ``npo-lab compare`` hands it to :func:`npo_lab.experiments.report.aggregate`:
    ``evals`` as (step, accuracy) pairs, ``delta`` look-ahead steps at each intervention, ``final`` the final
    accuracy (default: the last evaluation's)."""
    return {
        "method": method,
        "seed": seed,
        "evals": evals,
        "interventions": list(interventions),
        "intervention_costs": [delta] * len(interventions),
        "lookahead_steps": delta * len(interventions),
        "lookahead_s": 0.1 * len(interventions),
        "wall_s": 1.0,
        "final_accuracy": evals[-1][1] if final is None else final,
        "train_reward": [0.0] * 8 + [0.5, 0.5],
        "zero_std_groups": [1.0] * 10,
    }
