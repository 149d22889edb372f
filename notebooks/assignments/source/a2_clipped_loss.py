# %% [markdown]
# # Assignment 2: the clipped surrogate loss, with guide rows
#
# **Goal.** Write GRPO's per-token loss, the LUFFY-style shaped loss that some methods use on off-policy guide
# rows, the three ways of averaging a (B, T) loss into a scalar, and the whole `policy_loss` that mixes
# on-policy and guide rows. Your values *and gradients* are checked against `npo_lab.core.losses`. About 45
# minutes on a CPU.
#
# **Notation** (defined once in `npo_lab/batch.py`): B rows (prompts x G), T tokens; `logprobs` (B, T) are
# the current policy's log-probabilities of the sampled tokens (differentiable), `old_logprobs` (B, T) the
# same before the update (the ratio anchor, no gradient), `advantages` (B,) one per row (assignment 1),
# `mask` (B, T) is 1 on completion tokens and 0 on padding, `is_guide` (B,) marks guide rows.
#
# **The clipped surrogate** (PPO, Schulman et al. 2017; docs/algorithm.md section 1), per token t of row i:
#
# $$\rho_{i,t} = \exp(\log\pi_\theta(y_{i,t}) - \log\pi_{old}(y_{i,t})),$$
# $$\ell_{i,t} = -\min\big(\rho_{i,t} A_i,\ \mathrm{clip}(\rho_{i,t}, 1-\epsilon_{low}, 1+\epsilon_{high})\,A_i\big)$$
#
# **Guide rows.** NPO inserts verified-correct rows sampled by the near-future checkpoint. npo_lab's default
# (`guide_loss="on_policy"`) treats them exactly like on-policy rows, with the ratio against `old_logprobs`
# recomputed by the current policy. LUFFY (arXiv 2504.14945) instead uses a *shaped*, unclipped loss on
# off-policy rows, with p = exp(logprobs) and γ = 0.1:
#
# $$\ell_{i,t} = -A_i\, f(p_{i,t}),\qquad f(p) = \frac{p}{p + \gamma}$$
#
# **Rules.** Replace every `raise NotImplementedError`, torch only. Keep the names and signatures. Padding
# positions (mask 0) may hold any finite value and must not change the result.

# %%
import torch
from torch import Tensor

# %% [markdown]
# ## 2.1 The clipped surrogate, per token


# %%
def clipped_surrogate(
    logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    clip_eps_low: float = 0.2,
    clip_eps_high: float = 0.2,
) -> Tensor:
    """PPO's clipped per-token loss.

    Args:
        logprobs: (B, T) current log-probs (differentiable).
        old_logprobs: (B, T) log-probs before the update.
        advantages: (B,) one advantage per row, broadcast over its tokens.
        clip_eps_low, clip_eps_high: the ratio is clipped to [1 - clip_eps_low, 1 + clip_eps_high].

    Returns:
        (B, T) per-token loss, differentiable in ``logprobs``.
    """
    ### BEGIN SOLUTION
    adv = advantages.unsqueeze(-1)  # (B, 1)
    ratio = torch.exp(logprobs - old_logprobs)  # (B, T)
    clipped = torch.clamp(ratio, 1.0 - clip_eps_low, 1.0 + clip_eps_high)
    return -torch.minimum(ratio * adv, clipped * adv)
    ### END SOLUTION


# %% tags=["selfcheck"]
# Self-check 2.1: each token's loss and gradient against npo_lab.core.losses.policy_loss, which averages over
# the mask: a one-hot mask picks out one token. (The library also clamps log(ratio) at +-20, verl's overflow guard;
# it is switched off here so that the plain surrogate is compared.)
import functools

from npo_lab.core.losses import policy_loss

lib_policy_loss = functools.partial(policy_loss, log_ratio_clamp=0.0)

torch.manual_seed(0)
B, T = 4, 5
old = -torch.rand(B, T) * 3
logp = (old + 0.4 * torch.randn(B, T)).requires_grad_()  # ratios on both sides of the clip range
adv = torch.randn(B)
mine = clipped_surrogate(logp, old, adv)
assert mine.shape == (B, T), mine.shape
for i in range(B):
    for t in range(T):
        one_hot = torch.zeros(B, T)
        one_hot[i, t] = 1.0
        ref, _ = lib_policy_loss(logp, old, adv, one_hot)
        torch.testing.assert_close(mine[i, t], ref)
ref, _ = lib_policy_loss(logp, old, adv, torch.ones(B, T))  # token_mean over every token: mine.mean()
(g_mine,) = torch.autograd.grad(mine.mean(), logp)
(g_ref,) = torch.autograd.grad(ref, logp)
torch.testing.assert_close(g_mine, g_ref)
print("2.1 OK")

# %% [markdown]
# Where is the gradient zero? Plot the loss of one token against the ratio ρ for A = +1 and A = -1 (this cell
# only runs once 2.1 works).

# %% tags=["demo"]
import matplotlib.pyplot as plt

rho = torch.linspace(0.5, 1.5, 201)
fig, ax = plt.subplots(figsize=(6, 3))
for a in (1.0, -1.0):
    loss = clipped_surrogate(rho.log().unsqueeze(0), torch.zeros(1, 201), torch.tensor([a]))[0]
    ax.plot(rho, loss, label=f"A = {a:+.0f}")
ax.axvspan(0.8, 1.2, alpha=0.1)
ax.set(xlabel="ratio ρ", ylabel="per-token loss ℓ", title="clipped surrogate (ε = 0.2)")
ax.legend()

# %% [markdown]
# ## 2.2 The shaped loss of guide rows (LUFFY)


# %%
def shaped_guide_loss(logprobs: Tensor, advantages: Tensor, gamma: float = 0.1) -> Tensor:
    """LUFFY's regularised importance-sampling loss: -A * p / (p + gamma), p = exp(logprobs), unclipped.

    Args:
        logprobs: (B, T) current log-probs (differentiable).
        advantages: (B,) one advantage per row.
        gamma: the shaping constant.

    Returns:
        (B, T) per-token loss.
    """
    ### BEGIN SOLUTION
    p = torch.exp(logprobs)  # (B, T)
    return -advantages.unsqueeze(-1) * (p / (p + gamma))
    ### END SOLUTION


# %% tags=["selfcheck"]
# Self-check 2.2: with every row marked as a guide row and guide_loss="shaped", npo_lab uses only this loss.
mine = shaped_guide_loss(logp, adv)
guide = torch.ones(B, dtype=torch.bool)
for i in range(B):
    for t in range(T):
        one_hot = torch.zeros(B, T)
        one_hot[i, t] = 1.0
        ref, _ = lib_policy_loss(logp, old, adv, one_hot, is_guide=guide, guide_loss="shaped")
        torch.testing.assert_close(mine[i, t], ref)
print("2.2 OK")

# %% [markdown]
# ## 2.3 Aggregation: from (B, T) to a scalar
#
# With m the mask (docs/algorithm.md section 1):
#
# * `token_mean` (DAPO): $L = \sum_{i,t} m\,\ell / \sum_{i,t} m$, every token weighs the same;
# * `seq_mean` (the original GRPO): the token mean inside each row, then the mean over the B rows;
# * `sum_norm` (Dr. GRPO, LUFFY): $L = \sum_{i,t} m\,\ell / (B \cdot C)$ with C = `norm_constant`, or T (the
#   padded length) when it is None.
#
# A row (or a whole batch) without any unmasked token must give a finite result: divide by a count clamped to
# at least 1.


# %%
def aggregate(loss_mat: Tensor, mask: Tensor, mode: str = "token_mean", norm_constant: float | None = None) -> Tensor:
    """Reduce a per-token loss to a scalar.

    Args:
        loss_mat: (B, T) per-token loss.
        mask: (B, T) 1 on tokens that enter the loss, 0 on padding.
        mode: ``"token_mean"``, ``"seq_mean"`` or ``"sum_norm"``.
        norm_constant: C of ``sum_norm`` (None: T).

    Returns:
        a scalar (0-dim) tensor.
    """
    if mode not in ("token_mean", "seq_mean", "sum_norm"):
        raise ValueError(f"unknown aggregation {mode!r}")
    ### BEGIN SOLUTION
    masked = loss_mat * mask  # (B, T), padding contributes 0
    if mode == "token_mean":
        return masked.sum() / mask.sum().clamp(min=1.0)
    if mode == "seq_mean":
        return (masked.sum(-1) / mask.sum(-1).clamp(min=1.0)).mean()  # (B,) -> scalar
    c = float(loss_mat.shape[-1]) if norm_constant is None else float(norm_constant)
    return masked.sum() / (loss_mat.shape[0] * c)
    ### END SOLUTION


# %% tags=["selfcheck"]
# Self-check 2.3: against npo_lab.core.losses.aggregate, with padding (rows of different lengths).
from npo_lab.core.losses import aggregate as lib_aggregate

loss_mat = torch.randn(B, T)
lengths = torch.tensor([5, 3, 1, 4])
mask = (torch.arange(T) < lengths.unsqueeze(-1)).float()  # (B, T)
for mode in ("token_mean", "seq_mean", "sum_norm"):
    torch.testing.assert_close(aggregate(loss_mat, mask, mode), lib_aggregate(loss_mat, mask, mode))
print("2.3 OK")

# %% [markdown]
# ## 2.4 The whole loss
#
# Put the pieces together: on-policy rows get the clipped surrogate; guide rows get the clipped surrogate
# too when `guide_loss="on_policy"`, and the shaped loss when `guide_loss="shaped"`; then aggregate over the
# mask. `is_guide=None` means there are no guide rows. (npo_lab's `policy_loss` has two more treatments,
# `importance` and `shaped_is`, and KL and entropy terms; they are not part of this assignment.)


# %%
def policy_loss(
    logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    mask: Tensor,
    is_guide: Tensor | None = None,
    guide_loss: str = "on_policy",
    clip_eps_low: float = 0.2,
    clip_eps_high: float = 0.2,
    shaping_gamma: float = 0.1,
    aggregation: str = "token_mean",
    norm_constant: float | None = None,
) -> Tensor:
    """GRPO's loss with guide rows.

    Args:
        logprobs: (B, T) current log-probs (differentiable).
        old_logprobs: (B, T) log-probs before the update.
        advantages: (B,) advantages.
        mask: (B, T) 1 on tokens that enter the loss.
        is_guide: (B,) bool, True on guide rows; None: no guide rows.
        guide_loss: ``"on_policy"`` or ``"shaped"``: how guide rows enter the loss.
        clip_eps_low, clip_eps_high: the clip range of the surrogate.
        shaping_gamma: gamma of the shaped loss.
        aggregation, norm_constant: as in :func:`aggregate`.

    Returns:
        a scalar (0-dim) tensor, differentiable in ``logprobs``.
    """
    if guide_loss not in ("on_policy", "shaped"):
        raise ValueError(f"guide_loss must be 'on_policy' or 'shaped', got {guide_loss!r}")
    ### BEGIN SOLUTION
    loss_mat = clipped_surrogate(logprobs, old_logprobs, advantages, clip_eps_low, clip_eps_high)  # (B, T)
    if is_guide is not None and guide_loss == "shaped":
        shaped = shaped_guide_loss(logprobs, advantages, shaping_gamma)  # (B, T)
        loss_mat = torch.where(is_guide.unsqueeze(-1), shaped, loss_mat)  # (B, 1) broadcast over T
    return aggregate(loss_mat, mask, aggregation, norm_constant)
    ### END SOLUTION


# %% tags=["selfcheck"]
# Self-check 2.4: value and gradient against npo_lab, with padding, guide rows and every aggregation.
is_guide = torch.tensor([False, True, False, True])
for guide_loss in ("on_policy", "shaped"):
    for mode in ("token_mean", "seq_mean", "sum_norm"):
        mine = policy_loss(logp, old, adv, mask, is_guide, guide_loss, aggregation=mode)
        ref, _ = lib_policy_loss(logp, old, adv, mask, is_guide=is_guide, guide_loss=guide_loss, aggregation=mode)
        torch.testing.assert_close(mine, ref)
        g_mine, g_ref = (torch.autograd.grad(x, logp)[0] for x in (mine, ref))
        torch.testing.assert_close(g_mine, g_ref)
print("2.4 OK")

# %% [markdown]
# ## Questions (not graded automatically)
#
# 1. With one epoch and one minibatch per batch (npo_lab's default), `old_logprobs` equal `logprobs` at the
#    update, so ρ = 1. Is the clip ever active then? What is the gradient of the surrogate with respect to
#    `logprobs`?
# 2. Compare the gradient of the shaped loss with respect to log p, -A γ p / (p + γ)², with that of the
#    on-policy loss at ρ = 1. Which tokens of a guide row does the shaping emphasise?
# 3. A batch holds a short correct row (2 tokens) and a long wrong one (10 tokens). How do `token_mean` and
#    `seq_mean` weigh them? Which one penalises long wrong answers more?

# %% tags=["instructor"]
# Answers.
# 1. No: clip(1) = 1 lies inside the range, so the loss is -A per token and its gradient -A * m / N per token
#    (N the normaliser of the aggregation): the plain policy gradient. The clip matters with several epochs or
#    minibatches, once the policy has moved away from old_logprobs.
# 2. At rho = 1 the on-policy gradient weight is 1 for every token. The shaped weight g(p) = gamma p / (p + gamma)^2
#    is largest (1 / (4 gamma) * gamma = 1/4) at p = gamma and small at p -> 0 and p -> 1: tokens the policy is
#    already sure of contribute little, tokens around p = gamma (unlikely under the policy but not impossible)
#    contribute most. LUFFY argues these are the informative tokens of a teacher's trajectory.
# 3. token_mean: the long row has 10 of the 12 tokens, so it dominates; seq_mean: each row weighs 1/2, so every
#    token of the long row weighs 1/20 against 1/4 for the short one. token_mean penalises a long wrong answer
#    more per row; seq_mean dilutes its per-token loss (the length bias Dr. GRPO discusses).
p = torch.linspace(0.001, 1.0, 1000)
g = 0.1 * p / (p + 0.1) ** 2
print(f"shaped weight peaks at p = {p[g.argmax()].item():.3f} with {g.max().item():.3f}")
