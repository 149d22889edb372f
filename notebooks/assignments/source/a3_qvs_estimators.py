# %% [markdown]
# # Assignment 3: quality Q, variance cost V, effective signal S, and choosing Δ
#
# **Goal.** Write the estimators with which AutoNPO decides how far ahead to look, and check them against
# `npo_lab.core.signal`. About 40 minutes on a CPU.
#
# NPO's argument (arXiv 2604.20733): a source of off-policy rows (an external teacher, a replay pool, the
# policy's own checkpoint Δ steps ahead) is worth its **effective learning signal** S = Q / V:
#
# * **Q**, quality: among the prompts the current policy π_t fails, the fraction for which the source
#   produces a verified-correct trajectory;
# * **V**, variance cost: how unlikely the source's trajectories are under π_t, which inflates the variance of
#   an importance-weighted gradient.
#
# A far teacher has high Q and high V; replay of the past has low V and low Q; the near future balances
# them, and S peaks at an interior Δ. The paper's formulas are not public; npo_lab's (docs/algorithm.md
# section 3), which you implement here:
#
# * $\hat Q$ = |{x ∈ F : at least one of the k source samples for x is correct}| / |F|, F the failed prompts;
# * per token of the source's verified-correct rows, the importance weight $w = \pi_t(y_i \mid \cdot) /
#   \pi_{src}(y_i \mid \cdot)$ = exp(logp_current - logp_source);
# * $\hat V$ = v₀ + Var(w) (`is_variance`, the default), v₀ + mean(w²) - 1 (`chi2`) or v₀ + mean((log w)²)
#   (`log_ratio`), with the floor v₀ = 1, the cost of on-policy learning (w = 1 exactly);
# * $\hat S = \hat Q / \hat V$, and Δ* = argmax over the candidates of Ŝ(Δ).
#
# **Rules.** Replace every `raise NotImplementedError`, torch and Python only. Keep names and signatures.

# %%
import math
from collections.abc import Sequence

import torch
from torch import Tensor

# %% [markdown]
# ## 3.1 Quality Q̂
#
# A row is correct when its reward is above `correct_threshold`. A failed prompt with no sample at all in
# the batch counts as not solved. With no failed prompts, Q̂ is undefined: return NaN.


# %%
def q_hat(rewards: Tensor, group_ids: Tensor, prompts: Sequence[int], correct_threshold: float = 0.5) -> float:
    """Fraction of ``prompts`` with at least one correct row among the source's samples.

    Args:
        rewards: (B,) rewards of the source's samples.
        group_ids: (B,) int, the prompt each sample answers.
        prompts: the failed prompts Q is measured on.
        correct_threshold: a reward above this is correct.

    Returns:
        a float in [0, 1], or NaN when ``prompts`` is empty.
    """
    ### BEGIN SOLUTION
    if len(prompts) == 0:
        return float("nan")
    solved = set(group_ids[rewards > correct_threshold].tolist())
    return sum(int(p) in solved for p in prompts) / len(prompts)
    ### END SOLUTION


# %% tags=["selfcheck"]
# Self-check 3.1 against npo_lab.core.signal.q_hat.
from npo_lab.core import signal as lib

torch.manual_seed(0)
rewards = (torch.rand(40) < 0.2).float()
group_ids = torch.arange(10, 20).repeat_interleave(4)  # prompts 10..19, k = 4 samples each
failed = [10, 12, 13, 17, 19, 99]  # 99 has no sample: not solved
assert q_hat(rewards, group_ids, failed) == lib.q_hat(rewards, group_ids, failed)
assert math.isnan(q_hat(rewards, group_ids, []))
print("3.1 OK: Q-hat =", q_hat(rewards, group_ids, failed))

# %% [markdown]
# ## 3.2 Importance weights
#
# Return the weights of the unmasked tokens only, flattened in row-major order, in **float64**. Clamp the
# log-ratio to [-30, 30] before the exponential, so that one token that π_t finds (almost) impossible cannot
# overflow the estimate.


# %%
def importance_weights(logp_current: Tensor, logp_source: Tensor, mask: Tensor) -> Tensor:
    """Per-token w = pi_t / pi_src on the unmasked tokens.

    Args:
        logp_current: (B, T) log-probs of the rows' tokens under the current policy pi_t.
        logp_source: (B, T) log-probs under the policy that sampled them (the rows' ``behavior_logprobs``).
        mask: (B, T) 1 on real tokens, 0 on padding.

    Returns:
        (N,) float64, N = the number of unmasked tokens.
    """
    ### BEGIN SOLUTION
    sel = mask.bool()  # (B, T); boolean indexing flattens row by row
    return torch.exp((logp_current[sel] - logp_source[sel]).double().clamp(-30.0, 30.0))
    ### END SOLUTION


# %% tags=["selfcheck"]
# Self-check 3.2.
B, T = 6, 7
logp_src = -torch.rand(B, T) * 2
logp_cur = logp_src + 0.3 * torch.randn(B, T)
mask = (torch.arange(T) < torch.randint(1, T + 1, (B, 1))).float()  # (B, T) rows of random lengths
torch.testing.assert_close(
    importance_weights(logp_cur, logp_src, mask), lib.importance_weights(logp_cur, logp_src, mask)
)
print("3.2 OK")

# %% [markdown]
# ## 3.3 Variance cost V̂
#
# Use the population variance (divide by N). Return NaN when there is no token to measure (the source had no
# correct row).


# %%
def v_hat(
    logp_current: Tensor, logp_source: Tensor, mask: Tensor, estimator: str = "is_variance", floor: float = 1.0
) -> float:
    """Variance cost of learning from a source's verified-correct rows.

    Args:
        logp_current, logp_source, mask: (B, T), as in :func:`importance_weights`.
        estimator: ``"is_variance"`` (floor + Var(w)), ``"chi2"`` (floor + mean(w^2) - 1) or
            ``"log_ratio"`` (floor + mean((log w)^2)).
        floor: v0, the on-policy cost.

    Returns:
        a float >= 0 (``is_variance`` and ``log_ratio``: >= floor), or NaN when no token is unmasked.
    """
    if estimator not in ("is_variance", "chi2", "log_ratio"):
        raise ValueError(f"unknown estimator {estimator!r}")
    ### BEGIN SOLUTION
    w = importance_weights(logp_current, logp_source, mask)  # (N,)
    if w.numel() == 0:
        return float("nan")
    if estimator == "is_variance":
        return floor + w.var(unbiased=False).item()
    if estimator == "log_ratio":
        return floor + w.log().pow(2).mean().item()
    return floor + (w.pow(2).mean() - 1.0).item()
    ### END SOLUTION


# %% tags=["selfcheck"]
# Self-check 3.3: each estimator against npo_lab.core.signal.v_hat; a source equal to pi_t costs only the floor.
for est in ("is_variance", "chi2", "log_ratio"):
    mine, ref = v_hat(logp_cur, logp_src, mask, est), lib.v_hat(logp_cur, logp_src, mask, estimator=est)
    assert abs(mine - ref) < 1e-9, (est, mine, ref)
assert v_hat(logp_src, logp_src, mask) == 1.0
print("3.3 OK")

# %% [markdown]
# ## 3.4 The effective signal Ŝ and the choice of Δ
#
# `s_hat`: a source that solves no failed prompt (Q̂ = 0) has Ŝ = 0, whatever V̂ (it has no correct row to
# measure V̂ on, so V̂ may be NaN); otherwise Ŝ is NaN when Q̂ or V̂ is NaN or V̂ ≤ 0.
#
# `choose_delta`: Δ* = argmax Ŝ over the candidates; a NaN never wins; on a tie, the smallest Δ wins (the
# cheapest look-ahead); None when no candidate has a defined Ŝ. The candidates may come in any order; the
# returned Ŝ list is in the order of the input. Raise `ValueError` when the three lists differ in length.


# %%
def s_hat(q: float, v: float) -> float:
    """Effective learning signal S = Q / V (0 when Q = 0; NaN when undefined)."""
    ### BEGIN SOLUTION
    if q == 0:
        return 0.0
    if math.isnan(q) or math.isnan(v) or v <= 0:
        return float("nan")
    return q / v
    ### END SOLUTION


def choose_delta(deltas: Sequence[int], q: Sequence[float], v: Sequence[float]) -> tuple[int | None, list[float]]:
    """Delta* = argmax of Q-hat / V-hat over the candidates (ties: the smallest Delta).

    Args:
        deltas: candidate look-ahead distances.
        q, v: Q-hat and V-hat of each candidate (same order as ``deltas``).

    Returns:
        (Delta* or None, S-hat of every candidate in the input order).
    """
    ### BEGIN SOLUTION
    if not (len(deltas) == len(q) == len(v)):
        raise ValueError(f"deltas, q and v must have the same length, got {len(deltas)}, {len(q)}, {len(v)}")
    s = [s_hat(qq, vv) for qq, vv in zip(q, v)]
    best, best_s = None, -math.inf
    for d, ss in sorted(zip(deltas, s)):  # increasing Delta: a tie keeps the smaller one
        if not math.isnan(ss) and ss > best_s:
            best, best_s = d, ss
    return best, s
    ### END SOLUTION


# %% tags=["selfcheck"]
# Self-check 3.4.
assert s_hat(0.0, float("nan")) == 0.0 and math.isnan(s_hat(0.5, float("nan"))) and s_hat(0.5, 2.0) == 0.25
cases = [
    ([5, 10, 20], [0.2, 0.5, 0.6], [1.1, 1.2, 2.0]),
    ([40, 10, 20, 5], [0.4, 0.4, 0.4, 0.4], [2.0, 1.0, 1.0, 2.0]),  # a tie between 10 and 20
    ([5, 10], [float("nan"), 0.0], [1.0, float("nan")]),
]
for case in cases:
    (best, s), (ref_best, ref_s) = choose_delta(*case), lib.choose_delta(*case)
    assert best == ref_best and len(s) == len(ref_s), (case, best, ref_best)
    assert all(a == b or (math.isnan(a) and math.isnan(b)) for a, b in zip(s, ref_s)), (case, s, ref_s)
print("3.4 OK")

# %% [markdown]
# ## An interior optimum
#
# Suppose Q grows with Δ and saturates (a checkpoint further ahead solves more of today's failures) while V
# grows without bound (it writes trajectories today's policy finds ever less likely). Run the cell: where
# does S peak, and what happens to Δ* when V grows faster?

# %% tags=["demo"]
deltas = [1, 2, 5, 10, 20, 40, 80]
q = [1 - math.exp(-d / 10) for d in deltas]
for speed in (60.0, 20.0):
    v = [1 + (d / speed) ** 2 for d in deltas]
    best, s = choose_delta(deltas, q, v)
    print(f"V = 1 + (Δ/{speed:g})²: Δ* = {best}; S =", [round(x, 3) for x in s])

# %% [markdown]
# ## Questions (not graded automatically)
#
# 1. Why does `is_variance` need a floor v₀ > 0? What would Ŝ do as Δ → 0 without it?
# 2. A confident far source writes tokens with π_src ≈ 1 that π_t gives probability 0.01. What are w, Var(w)
#    over such tokens, and mean((log w)²)? Which estimator notices that the source is far?
# 3. Q̂ counts a prompt as solved when *one* of k samples is correct. How does Q̂ change with k, and why must
#    candidates be compared with the same k?

# %% tags=["instructor"]
# Answers.
# 1. As the source approaches pi_t, w -> 1 and Var(w) -> 0: without the floor S = Q / Var(w) would blow up for
#    any Q > 0, always choosing the smallest Delta (which solves nothing new). The floor is the variance of
#    on-policy learning itself (E[w^2] = 1), so S compares sources against learning from pi_t's own samples.
# 2. w = 0.01 on every such token: Var(w) = 0 if all tokens look alike, at most 1/4 for w in [0, 1]; mean((log
#    w)^2) = (log 100)^2 = 21.2. is_variance (and chi2, which even goes below the floor) sees such a source as
#    cheap; log_ratio grows with the distance: that is why npo_lab offers it.
# 3. Q-hat = 1 - (1 - p)^k for a prompt solved with probability p per sample: it grows with k, so a larger k
#    inflates every candidate's quality; comparing candidates needs the same k (AutoNPO: autonpo.q_samples).
for name, w in (("far, confident", torch.full((50,), 0.01)), ("near", 1 + 0.1 * torch.randn(50))):
    lp = w.log().unsqueeze(0)  # (1, 50): pi_t's log-probs; the source's are 0 (it is sure of every token)
    zeros, ones = torch.zeros_like(lp), torch.ones_like(lp)
    print(name, {e: round(v_hat(lp, zeros, ones, e), 3) for e in ("is_variance", "chi2", "log_ratio")})
