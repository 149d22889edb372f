"""Group-relative advantage estimators (GRPO and Dr. GRPO), registered by name.

A_i = (r_i - mean_g(r)) / (std_g(r) + eps)  for ``grpo``      (Shao et al. 2024, arXiv 2402.03300)
A_i =  r_i - mean_g(r)                       for ``dr_grpo``   (Liu et al. 2025, arXiv 2503.20783)

The group g of row i is every row with the same ``group_ids`` value, guide rows included: a
verified-correct guide in a failing group therefore gets a large positive advantage.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from npo_lab.core.functional import group_mean_std
from npo_lab.registry import Registry

AdvantageFn = Callable[..., tuple[Tensor, dict[str, float]]]
ADVANTAGES: Registry[AdvantageFn] = Registry("advantage estimator")


def _metrics(rewards: Tensor, std: Tensor, count: Tensor, adv: Tensor) -> dict[str, float]:
    w = 1.0 / count  # (B,): each group's rows sum to 1, so sums over rows count groups
    return {
        "reward/mean": rewards.float().mean().item(),
        "reward/std": rewards.float().std().item() if rewards.numel() > 1 else 0.0,
        # groups whose rewards are all equal have zero advantage everywhere: they teach nothing
        "reward/frac_zero_std": ((std == 0).double() * w).sum().item() / w.sum().item(),
        "policy/adv_abs_mean": adv.abs().mean().item(),
    }


@ADVANTAGES.register("grpo")
def grpo_advantages(rewards: Tensor, group_ids: Tensor, eps: float = 1e-6) -> tuple[Tensor, dict[str, float]]:
    """Std-normalised group-relative advantages.

    Args:
        rewards: (B,) float.
        group_ids: (B,) int; rows with equal ids form a group.
        eps: added to the group std.

    Returns:
        advantages (B,) float32, metrics.

    >>> a, _ = grpo_advantages(torch.tensor([1.0, 0.0, 0.0, 0.0]), torch.tensor([0, 0, 0, 0]))
    >>> [round(x, 3) for x in a.tolist()]
    [1.5, -0.5, -0.5, -0.5]
    """
    mean, std, count = group_mean_std(rewards, group_ids)
    adv = ((rewards.to(torch.float64) - mean) / (std + eps)).to(torch.float32)
    return adv, _metrics(rewards, std, count, adv)


@ADVANTAGES.register("dr_grpo")
def dr_grpo_advantages(rewards: Tensor, group_ids: Tensor, eps: float = 1e-6) -> tuple[Tensor, dict[str, float]]:
    """Mean-only group-relative advantages (Dr. GRPO: no std division). ``eps`` is unused.

    >>> a, _ = dr_grpo_advantages(torch.tensor([1.0, 0.0, 0.0, 0.0]), torch.tensor([0, 0, 0, 0]))
    >>> a.tolist()
    [0.75, -0.25, -0.25, -0.25]
    """
    mean, std, count = group_mean_std(rewards, group_ids)
    adv = (rewards.to(torch.float64) - mean).to(torch.float32)
    return adv, _metrics(rewards, std, count, adv)


def group_advantages(
    rewards: Tensor, group_ids: Tensor, estimator: str = "grpo", eps: float = 1e-6
) -> tuple[Tensor, dict[str, float]]:
    """Dispatch to a registered estimator by name (``grpo`` or ``dr_grpo``)."""
    return ADVANTAGES.get(estimator)(rewards, group_ids, eps=eps)


def grpo_advantages_loop(rewards: list[float], group_ids: list[int], eps: float = 1e-6) -> list[float]:
    """Reference implementation with plain Python loops (for tests and teaching)."""
    out = []
    for r, g in zip(rewards, group_ids):
        members = [rr for rr, gg in zip(rewards, group_ids) if gg == g]
        m = sum(members) / len(members)
        var = sum((x - m) ** 2 for x in members) / max(len(members) - 1, 1)
        out.append((r - m) / (var**0.5 + eps))
    return out
