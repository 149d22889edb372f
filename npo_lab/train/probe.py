"""Probing guide sources through the backend protocol: Q-hat, V-hat and S-hat of checkpoints on prompts the
current policy fails (AutoNPO's scoring of its candidates, and ``npo-lab qvs``).

:func:`measure_sources` takes the current policy (the backend's current weights, pi_t), a set of prompts
pi_t fails on, and any number of source checkpoints (near-future, past, an external teacher), and returns
Q-hat, V-hat and S-hat of each with the estimators of :mod:`npo_lab.core.signal`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from npo_lab.backend import Backend, Checkpoint
from npo_lab.batch import RolloutBatch
from npo_lab.core.guidance import group_accuracy
from npo_lab.core.signal import CHEAP_V_ESTIMATORS, q_hat, s_hat, v_hat


def failed_prompts(
    backend: Backend, prompts: Sequence[int], k: int, gate: float, correct_threshold: float = 0.5
) -> tuple[list[int], float]:
    """Prompts whose k-sample group under the current weights has accuracy below ``gate``, and the mean
    accuracy over all ``prompts``."""
    b = backend.rollout(list(prompts), k)
    acc = group_accuracy(b.rewards, b.group_ids, correct_threshold)
    return [p for p in prompts if acc[int(p)] < gate], sum(acc.values()) / max(len(acc), 1)


def _grad_norms(backend: Backend, rows: RolloutBatch, max_rows: int) -> torch.Tensor:
    """Per-row norm of grad log pi_t(y) under the current weights (one backward pass per row)."""
    params = [p for p in backend.parameters() if p.requires_grad]
    norms = []
    for i in range(min(rows.size, max_rows)):
        row = rows.select([i])
        logp, _ = backend.logprobs(row)
        grads = torch.autograd.grad((logp * row.mask).sum(), params, allow_unused=True)
        norms.append(torch.sqrt(sum((g.double() ** 2).sum() for g in grads if g is not None)))
    return torch.stack(norms) if norms else torch.zeros(0)


def measure_sources(
    backend: Backend,
    prompts: Sequence[int],
    sources: dict[Any, Checkpoint],
    *,
    k: int = 8,
    correct_threshold: float = 0.5,
    estimator: str = "is_variance",
    floor: float = 1.0,
    max_grad_rows: int = 32,
    kl_beta: float = 1.0,
) -> dict[Any, dict[str, float]]:
    """Q-hat, V-hat and S-hat of every source on ``prompts`` (prompts the current policy fails on).

    For each source: k samples per prompt; Q-hat = fraction of prompts with a verified-correct sample;
    V-hat from the verified-correct samples' per-token weights pi_t / pi_src, with pi_t the backend's current
    weights and pi_src the sampling log-probs the backend recorded (``behavior_logprobs``).

    Returns ``{source key: {"q", "v", "s", "correct_rows", "v_<name>", "s_<name>"}}``: ``v``/``s`` use
    ``estimator``; ``v_<name>``/``s_<name>`` every estimator that needs no backward pass, for comparison (``kl_exp``
    with ``kl_beta``).
    """
    out: dict[Any, dict[str, float]] = {}
    nan = float("nan")
    for key, ckpt in sources.items():
        if not prompts:
            out[key] = {"q": nan, "v": nan, "s": nan, "correct_rows": 0.0}
            out[key].update({f"{p}_{e}": nan for e in CHEAP_V_ESTIMATORS for p in "vs"})
            continue
        rows = backend.rollout(list(prompts), k, policy=ckpt)
        q = q_hat(rows.rewards, rows.group_ids, prompts, correct_threshold)
        correct = rows.select(torch.nonzero(rows.rewards > correct_threshold).squeeze(-1)).trim()
        vs = dict.fromkeys(CHEAP_V_ESTIMATORS, nan)
        if correct.size:
            with torch.no_grad():
                logp_t, _ = backend.logprobs(correct)  # (B, T) under pi_t
            for e in CHEAP_V_ESTIMATORS:
                vs[e] = v_hat(
                    logp_t, correct.behavior_logprobs, correct.mask, estimator=e, floor=floor, kl_beta=kl_beta
                )
            if estimator == "grad_norm":
                norms = _grad_norms(backend, correct, max_grad_rows)
                vs["grad_norm"] = v_hat(estimator="grad_norm", floor=floor, grad_norms=norms)
        v = vs.get(estimator, nan)

        out[key] = {"q": q, "v": v, "s": s_hat(q, v), "correct_rows": float(correct.size)}
        out[key].update({f"v_{e}": vs[e] for e in CHEAP_V_ESTIMATORS})
        out[key].update({f"s_{e}": s_hat(q, vs[e]) for e in CHEAP_V_ESTIMATORS})
    return out
