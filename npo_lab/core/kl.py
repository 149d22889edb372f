"""Per-token KL estimators between the current policy and a reference (Schulman, "Approximating KL
Divergence", http://joschu.net/blog/kl-approx.html). ``log_ratio = logprobs - ref_logprobs``."""

from __future__ import annotations

import torch
from torch import Tensor

from npo_lab.registry import Registry

KL_ESTIMATORS: Registry = Registry("KL estimator")


@KL_ESTIMATORS.register("k1")
def kl_k1(logprobs: Tensor, ref_logprobs: Tensor) -> Tensor:
    """k1 = log pi - log pi_ref: unbiased, can be negative per token."""
    return logprobs - ref_logprobs


@KL_ESTIMATORS.register("k3")
def kl_k3(logprobs: Tensor, ref_logprobs: Tensor) -> Tensor:
    """k3 = exp(log pi_ref - log pi) - (log pi_ref - log pi) - 1: unbiased and non-negative (GRPO's choice)."""
    d = (ref_logprobs - logprobs).clamp(-20.0, 20.0)  # exp overflow guard
    return torch.exp(d) - d - 1.0


def kl_penalty(logprobs: Tensor, ref_logprobs: Tensor, kind: str = "k3") -> Tensor:
    """(B, T) per-token KL estimate of the named kind."""
    return KL_ESTIMATORS.get(kind)(logprobs, ref_logprobs)
