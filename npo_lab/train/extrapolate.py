"""An extrapolated future: a guide checkpoint made from the run's own recent direction, at no training cost.

NPO's near future pi_{t+Delta} costs Delta look-ahead steps. Weight extrapolation guesses it instead: if RLVR's
weights move along a nearly straight line for a while (RLVR-Linearity, arXiv 2601.04537; NExt, arXiv
2604.11446), then

    theta_x = theta_t + alpha * (theta_t - theta_{t-k})

is where the run would be about ``alpha * k`` steps from now at its recent pace. This is beyond the NPO paper; NPO
uses it with ``npo.future = extrapolate`` (``npo.extrapolate_k``, ``npo.extrapolate_alpha``), and ``npo-lab qvs`` and
``npo-lab benefit-map`` measure its Q, V and S next to the looked-ahead future's.

Written against the backend protocol (``parameters``, ``save``, ``load``), so it runs on every backend: for a LoRA
policy it extrapolates the trainable (adapter) weights only.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from npo_lab.backend import Backend, Checkpoint


def parameter_copy(backend: Backend) -> list[Tensor]:
    """Detached copies of the backend's trainable parameters, in ``parameters()`` order (theta_{t-k})."""
    return [p.detach().clone() for p in backend.parameters()]


@torch.no_grad()
def extrapolated_checkpoint(backend: Backend, past: list[Tensor], alpha: float) -> tuple[Checkpoint, float]:
    """A checkpoint of theta_t + alpha * (theta_t - theta_past), theta_t the backend's current trainable weights.

    The backend is left exactly as it was (weights and sampling RNG). Returns the checkpoint and the norm of the
    step taken, alpha * ||theta_t - theta_past||.

    Args:
        backend: holds theta_t.
        past: :func:`parameter_copy` taken k steps earlier.
        alpha: how far along the direction (alpha = Delta / k guesses Delta steps ahead at the recent pace).
    """
    if not math.isfinite(alpha):
        raise ValueError(f"alpha must be a finite number, got {alpha!r}")
    params = list(backend.parameters())
    if len(params) != len(past) or any(p.shape != q.shape for p, q in zip(params, past)):
        raise ValueError(
            f"the past parameters do not match the policy's: {len(past)} tensors for {len(params)} parameters, or "
            "shapes differ (was the copy taken from another model?)"
        )
    now = backend.save()
    sq = 0.0
    for p, q in zip(params, past):
        d = p.detach() - q.to(p.device, p.dtype)
        sq += float(d.double().pow(2).sum())
        p.add_(d, alpha=alpha)
    checkpoint = backend.save()
    backend.load(now)
    return checkpoint, abs(alpha) * math.sqrt(sq)
