"""Estimators of a guide source's signal quality Q, variance cost V and effective signal S = Q / V.

NPO (arXiv 2604.20733) defines, for a *source* of off-policy trajectories (an external teacher, a replay
pool, the run's own checkpoint Delta steps ahead):

* Q: among prompts on which the current policy pi_t fails, the fraction for which the source produces a
  verified-correct trajectory;
* V: the gradient-variance cost of learning from the source's trajectories under pi_t;
* S = Q / V, the effective learning signal (the paper shows S(Delta) peaks at an interior Delta).

The paper's formulas (its Appendix B) are not public; the estimators here are this toolkit's reading,
each documented in docs/algorithm.md and selected by ``AutoNPOConfig.v_estimator``:

* ``q_hat``: fraction of failed prompts with at least one correct row among k source samples.
* ``v_hat``, ``is_variance`` (default): ``floor + Var(w)`` over the tokens of the source's verified-correct
  rows, with the per-token importance weight w = pi_t(y_i | .) / pi_src(y_i | .). The variance of an
  importance-weighted gradient scales with E[w^2] = 1 + Var(w) when E[w] = 1; the floor (1.0) is the cost
  of on-policy learning itself (w = 1 exactly), so S stays finite as the source approaches pi_t.
* ``chi2``: ``floor + mean(w^2) - 1`` (a chi-square divergence estimate; equals the above when the
  sample mean of w is 1).
* ``log_ratio``: ``floor + mean((log w)^2)``, the second moment of the per-token log-ratio (twice the k2
  estimate of KL). Near pi_t it equals ``is_variance`` to second order (w = 1 + log w + ...), but it keeps
  growing with the distance where Var(w) saturates: a confident far source (pi_src ~ 1 on tokens pi_t finds
  unlikely) has w = pi_t / pi_src in [0, 1], so Var(w) <= 1/4 however far it is.
* ``grad_norm``: ``floor + Var(||grad log pi_t(y)||)`` over the correct rows, the empirical variance of
  per-sample policy-gradient norms (the norms are computed by the caller, which owns the model).
* ``kl_exp`` (the paper's V-hat, as its close readings give it: "an exponential function of the per-token KL"
  between the two policies, Appendix B's V(Delta) <~ exp(beta * Delta)): ``exp(beta * KL)``, KL the mean over the
  source's tokens of the k3 estimate of KL(pi_src || pi_t) on the source's own samples, beta = ``kl_beta``.
  1 when the two policies agree; no floor (exp(0) = 1 is already the on-policy cost).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

V_ESTIMATORS = ("is_variance", "chi2", "log_ratio", "grad_norm", "kl_exp")
CHEAP_V_ESTIMATORS = ("is_variance", "chi2", "log_ratio", "kl_exp")
"""The estimators that need no backward pass (``npo-lab qvs`` records all of them)."""


def q_hat(rewards: Tensor, group_ids: Tensor, prompts: Sequence[int], correct_threshold: float = 0.5) -> float:
    """Fraction of ``prompts`` with at least one correct row (reward > ``correct_threshold``) in the batch.

    Args:
        rewards: (B,) rewards of the source's samples.
        group_ids: (B,) prompt id of each sample.
        prompts: the failed prompts Q is measured on (each should have k samples in the batch).
        correct_threshold: reward above which a row counts as correct.

    >>> q_hat(torch.tensor([1.0, 0.0, 0.0, 0.0]), torch.tensor([3, 3, 5, 5]), [3, 5])
    0.5
    """
    if len(prompts) == 0:
        return float("nan")
    solved = set(group_ids[rewards > correct_threshold].tolist())
    return sum(int(p) in solved for p in prompts) / len(prompts)


def importance_weights(logp_current: Tensor, logp_source: Tensor, mask: Tensor) -> Tensor:
    """Per-token weights w = pi_t / pi_src on the unmasked tokens, flattened.

    Args:
        logp_current: (B, T) log-probs of the rows' tokens under pi_t.
        logp_source: (B, T) log-probs under the policy that sampled them.
        mask: (B, T) 1 on real tokens.

    Returns:
        (N,) weights, N = number of unmasked tokens.

    >>> importance_weights(torch.log(torch.tensor([[0.5, 0.2]])), torch.log(torch.tensor([[0.5, 0.4]])),
    ...                    torch.tensor([[1.0, 1.0]])).tolist()
    [1.0, 0.5]
    """
    sel = mask.bool()
    # clamp the log-ratio so one token that pi_t finds impossible cannot overflow the estimate
    return torch.exp((logp_current[sel] - logp_source[sel]).double().clamp(-30.0, 30.0))


def token_kl(logp_current: Tensor, logp_source: Tensor, mask: Tensor) -> float:
    """Mean per-token KL(pi_src || pi_t) over the unmasked tokens of rows sampled from pi_src, by the k3 estimator
    r - 1 - log r with r = pi_t / pi_src (unbiased and non-negative, Schulman's "Approximating KL Divergence").

    >>> lp = torch.log(torch.tensor([[0.5, 0.25]]))
    >>> token_kl(lp, lp, torch.ones(1, 2))
    0.0
    """
    sel = mask.bool()
    log_r = (logp_current[sel] - logp_source[sel]).double().clamp(-30.0, 30.0)
    if log_r.numel() == 0:
        return float("nan")
    return (torch.exp(log_r) - 1.0 - log_r).mean().item()


def v_hat(
    logp_current: Tensor | None = None,
    logp_source: Tensor | None = None,
    mask: Tensor | None = None,
    *,
    estimator: str = "is_variance",
    floor: float = 1.0,
    grad_norms: Tensor | None = None,
    kl_beta: float = 1.0,
) -> float:
    """Variance cost of learning from a source's verified-correct rows (see the module docstring).

    Args:
        logp_current, logp_source, mask: (B, T) as in :func:`importance_weights` (``is_variance``, ``chi2``).
        estimator: ``is_variance``, ``chi2``, ``log_ratio``, ``grad_norm`` or ``kl_exp``.
        floor: the on-policy cost added to every estimate but ``kl_exp`` (1.0: E[w^2] of on-policy sampling).
        grad_norms: (B,) per-row gradient norms of log pi_t(y) (``grad_norm``).
        kl_beta: beta of ``kl_exp`` = exp(beta * mean per-token KL).

    Returns:
        V-hat, or NaN when there is nothing to measure (no correct rows).

    >>> lp = torch.log(torch.tensor([[0.5, 0.5]]))
    >>> v_hat(lp, lp, torch.ones(1, 2))   # the source is pi_t itself: only the floor remains
    1.0
    """
    if estimator not in V_ESTIMATORS:
        raise ValueError(f"estimator must be one of {V_ESTIMATORS}, got {estimator!r}")
    if estimator == "grad_norm":
        if grad_norms is None:
            raise ValueError("estimator='grad_norm' needs grad_norms")
        g = grad_norms.double()
        if g.numel() == 0:
            return float("nan")
        return floor + (g.var(unbiased=False).item() if g.numel() > 1 else 0.0)
    if logp_current is None or logp_source is None or mask is None:
        raise ValueError(f"estimator={estimator!r} needs logp_current, logp_source and mask")
    if estimator == "kl_exp":
        kl = token_kl(logp_current, logp_source, mask)
        return math.exp(kl_beta * kl) if kl == kl else float("nan")
    w = importance_weights(logp_current, logp_source, mask)
    if w.numel() == 0:
        return float("nan")
    if estimator == "is_variance":
        return floor + w.var(unbiased=False).item()
    if estimator == "log_ratio":
        return floor + w.log().pow(2).mean().item()
    return floor + (w.pow(2).mean() - 1.0).item()


def s_hat(q: float, v: float) -> float:
    """Effective learning signal S = Q / V. A source that solves no failed prompt (Q = 0) has S = 0, whatever
    V (it has no correct rows to measure V on); otherwise NaN when Q or V is undefined.

    >>> s_hat(0.5, 2.0), s_hat(0.0, float("nan"))
    (0.25, 0.0)
    """
    if q == 0:
        return 0.0
    if q != q or v != v or v <= 0:
        return float("nan")
    return q / v


def choose_delta(deltas: Sequence[int], q: Sequence[float], v: Sequence[float]) -> tuple[int | None, list[float]]:
    """Delta* = argmax over candidates of Q-hat / V-hat (ties: the smallest Delta, the cheapest look-ahead).

    Returns (Delta*, S-hat of every candidate); Delta* is None when no candidate has a defined S.

    >>> choose_delta([5, 10, 20], [0.2, 0.5, 0.6], [1.1, 1.2, 2.0])
    (10, [0.18181818181818182, 0.4166666666666667, 0.3])
    """
    if not (len(deltas) == len(q) == len(v)):
        raise ValueError(f"deltas, q and v must have the same length, got {len(deltas)}, {len(q)}, {len(v)}")
    s = [s_hat(qq, vv) for qq, vv in zip(q, v)]
    best: int | None = None
    best_s = float("-inf")
    for d, ss in sorted(zip(deltas, s)):
        if ss == ss and ss > best_s:  # NaN never wins
            best, best_s = d, ss
    return best, s
