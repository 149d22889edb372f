"""Masked reductions and group statistics shared by the estimators and losses."""

from __future__ import annotations

import torch
from torch import Tensor


def masked_sum(x: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """Sum of ``x`` where ``mask`` is 1."""
    return (x * mask).sum(dim)


def masked_mean(x: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """Mean of ``x`` over positions where ``mask`` is 1 (0 when the mask is empty)."""
    return masked_sum(x, mask, dim) / mask.sum(dim).clamp(min=1.0)


def group_index(group_ids: Tensor) -> tuple[Tensor, int]:
    """Map arbitrary prompt ids to dense group indices 0..n_groups-1 (in order of first appearance).

    Returns:
        (inverse (B,) long, n_groups).
    """
    uniq, first = [], {}
    for g in group_ids.tolist():
        if g not in first:
            first[g] = len(uniq)
            uniq.append(g)
    inverse = torch.tensor([first[g] for g in group_ids.tolist()], dtype=torch.long, device=group_ids.device)
    return inverse, len(uniq)


def group_mean_std(values: Tensor, group_ids: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Per-row mean, unbiased std and size of the row's group.

    Args:
        values: (B,) float.
        group_ids: (B,) int.

    Returns:
        mean (B,), std (B,) (0 for groups of one), count (B,).
    """
    inv, n = group_index(group_ids)
    values = values.to(torch.float64)
    zeros = torch.zeros(n, dtype=torch.float64, device=values.device)
    count = zeros.clone().index_add_(0, inv, torch.ones_like(values))  # (G,)
    total = zeros.clone().index_add_(0, inv, values)
    mean = total / count
    sq = zeros.clone().index_add_(0, inv, (values - mean[inv]) ** 2)
    std = torch.sqrt(sq / (count - 1).clamp(min=1.0))
    return mean[inv], std[inv], count[inv]
