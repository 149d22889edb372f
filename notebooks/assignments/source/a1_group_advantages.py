# %% [markdown]
# # Assignment 1: group-relative advantages (GRPO and Dr. GRPO)
#
# **Goal.** Write the advantage estimator at the heart of GRPO, in its two variants, and check it against
# `npo_lab.core.advantages`. About 30 minutes; everything runs on a CPU in seconds.
#
# GRPO samples a *group* of G completions for every prompt and scores each with a verifier (reward 1 if the
# answer is correct, 0 if not). It needs no value network: the advantage of a row is its reward relative to
# the other rows of its group (docs/algorithm.md, section 1):
#
# $$\text{grpo:}\quad A_i = \frac{r_i - \operatorname{mean}_g(r)}{\operatorname{std}_g(r) + \varepsilon}
# \qquad\qquad \text{dr\_grpo:}\quad A_i = r_i - \operatorname{mean}_g(r)$$
#
# (Shao et al. 2024, arXiv 2402.03300; Liu et al. 2025, "Dr. GRPO", arXiv 2503.20783.) Here g is the group
# of row i, that is every row with the same `group_ids` value; std is the **unbiased** standard deviation
# (divide by n - 1), a group of one row has std 0, and ε = 1e-6.
#
# **Why it matters for NPO.** NPO replaces one slot of a failing group with a verified-correct row sampled
# from the policy's own near future. The advantage is computed over the mixed group, so one correct row among
# seven wrong ones gets a large positive advantage: that row is where the learning signal comes from.
#
# **Rules.** Replace every `raise NotImplementedError` with your code, using torch only (the self-check cells
# import npo_lab to compare with it; your answers must not). Keep the names and signatures: the autograder
# calls them. Group ids are arbitrary integers (prompt ids), not 0..n-1, and the rows of a group need not be
# next to each other.

# %%
import torch
from torch import Tensor

# %% [markdown]
# ## 1.1 Group statistics
#
# For every row, return the mean, the unbiased standard deviation and the size of *its* group, each of shape
# (B,), in float64 (the statistics of a large group in float32 lose digits). Hint: `torch.unique(...,
# return_inverse=True)` maps ids to 0..n_groups-1, and `Tensor.index_add_` sums rows into their group.


# %%
def group_stats(rewards: Tensor, group_ids: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Per-row statistics of the row's group.

    Args:
        rewards: (B,) float, the verifier's score of each row.
        group_ids: (B,) int, the prompt id of each row; rows with equal ids form a group.

    Returns:
        mean (B,), std (B,) (unbiased; 0 for a group of one row), count (B,): all float64.
    """
    ### BEGIN SOLUTION
    _, inv = torch.unique(group_ids, return_inverse=True)  # (B,) dense group index
    n = int(inv.max()) + 1
    r = rewards.to(torch.float64)
    zeros = torch.zeros(n, dtype=torch.float64)
    count = zeros.clone().index_add_(0, inv, torch.ones_like(r))  # (n,)
    mean = zeros.clone().index_add_(0, inv, r) / count  # (n,)
    sq = zeros.clone().index_add_(0, inv, (r - mean[inv]) ** 2)  # (n,) sum of squared deviations
    std = torch.sqrt(sq / (count - 1).clamp(min=1.0))  # unbiased; a group of one has sq = 0, so std 0
    return mean[inv], std[inv], count[inv]
    ### END SOLUTION


# %% tags=["selfcheck"]
# Self-check 1.1: your group_stats against npo_lab.core.functional.group_mean_std on random rewards.
from npo_lab.core.functional import group_mean_std

torch.manual_seed(0)
rewards = torch.randint(0, 2, (24,)).float()
group_ids = torch.tensor([7, 42, 3]).repeat_interleave(8)[torch.randperm(24)]  # 3 groups of 8, rows shuffled
mine, ref = group_stats(rewards, group_ids), group_mean_std(rewards, group_ids)
for what, a, b in zip(("mean", "std", "count"), mine, ref):
    torch.testing.assert_close(a.to(torch.float64), b, msg=lambda m, what=what: f"{what}: {m}")
print("1.1 OK: group_stats agrees with npo_lab")

# %% [markdown]
# ## 1.2 Advantages
#
# Return the advantages of both estimators as a (B,) **float32** tensor (compute in float64, cast at the
# end). A group whose rewards are all equal (all wrong, or all right) must get exactly 0 for every row, with
# no NaN: such a group teaches nothing.


# %%
def group_advantages(rewards: Tensor, group_ids: Tensor, estimator: str = "grpo", eps: float = 1e-6) -> Tensor:
    """Group-relative advantages.

    Args:
        rewards: (B,) float.
        group_ids: (B,) int; rows with equal ids form a group.
        estimator: ``"grpo"`` (divide by the group std + eps) or ``"dr_grpo"`` (mean only).
        eps: added to the group std (``grpo`` only).

    Returns:
        (B,) float32 advantages.
    """
    if estimator not in ("grpo", "dr_grpo"):
        raise ValueError(f"estimator must be 'grpo' or 'dr_grpo', got {estimator!r}")
    ### BEGIN SOLUTION
    mean, std, _ = group_stats(rewards, group_ids)
    adv = rewards.to(torch.float64) - mean  # (B,)
    if estimator == "grpo":
        adv = adv / (std + eps)
    return adv.to(torch.float32)
    ### END SOLUTION


# %% tags=["selfcheck"]
# Self-check 1.2: both estimators against npo_lab.core.advantages.group_advantages.
from npo_lab.core.advantages import group_advantages as lib_group_advantages

for estimator in ("grpo", "dr_grpo"):
    mine = group_advantages(rewards, group_ids, estimator)
    ref, _ = lib_group_advantages(rewards, group_ids, estimator)
    assert mine.shape == ref.shape and mine.dtype == torch.float32, (mine.shape, mine.dtype)
    torch.testing.assert_close(mine, ref)
one_right = group_advantages(torch.tensor([0.0] * 7 + [1.0]), torch.zeros(8, dtype=torch.long))
print("1.2 OK. One correct row among seven wrong ones:", [round(a, 3) for a in one_right.tolist()])

# %% [markdown]
# ## 1.3 Groups that teach nothing
#
# Return the fraction of *groups* (not rows) whose rewards are all equal. npo_lab logs it as
# `reward/frac_zero_std`; early in training on a hard task most groups are all wrong, and this number is
# what NPO's guide rows bring down.


# %%
def frac_zero_std(rewards: Tensor, group_ids: Tensor) -> float:
    """Fraction of groups whose rewards are all equal (their std is 0).

    Args:
        rewards: (B,) float.
        group_ids: (B,) int.

    Returns:
        a float in [0, 1].
    """
    ### BEGIN SOLUTION
    _, std, count = group_stats(rewards, group_ids)
    w = 1.0 / count  # (B,): the rows of a group sum to 1, so a sum over rows counts groups
    return float(((std == 0).double() * w).sum() / w.sum())
    ### END SOLUTION


# %% tags=["selfcheck"]
# Self-check 1.3: against the metric npo_lab logs.
_, metrics = lib_group_advantages(rewards, group_ids)
assert abs(frac_zero_std(rewards, group_ids) - metrics["reward/frac_zero_std"]) < 1e-9
all_wrong = torch.tensor([0.0] * 8 + [0.0, 1.0] * 4)
assert frac_zero_std(all_wrong, torch.tensor([1] * 8 + [2] * 8)) == 0.5
print("1.3 OK")

# %% [markdown]
# ## Questions (not graded automatically)
#
# 1. A group has one correct row out of G. What are the advantages of its rows under `grpo` and under
#    `dr_grpo`, as a function of G? Which estimator gives the rare correct row more weight?
# 2. Why is the standard deviation of an all-wrong group a problem for `grpo` without ε, and why does ε not
#    matter for the result (what is the numerator)?
# 3. NPO replaces one slot of a group whose accuracy is below 0.6. Take G = 8 and a group with k correct
#    on-policy rows; how does the advantage of the injected correct row change with k?

# %% tags=["instructor"]
# Answers.
# 1. rewards (0, ..., 0, 1): mean 1/G, unbiased std sqrt(1/G) (the variance is (1/G)(1 - 1/G) * G/(G - 1) = 1/G).
#    grpo: the correct row gets (1 - 1/G) * sqrt(G) = (G - 1)/sqrt(G) (2.47 for G = 8), each wrong row
#    -1/sqrt(G); dr_grpo: 1 - 1/G and -1/G. grpo scales the rare success up by 1/std, which grows as
#    successes get rarer; Dr. GRPO argues that this per-group scaling biases the objective.
# 2. std = 0 gives 0/0 = NaN without eps; with eps the numerator r_i - mean is exactly 0 in such a group, so
#    the advantage is exactly 0 whatever eps is.
# 3. With k correct on-policy rows (the replaced slot being one of the wrong ones), the mixed group has k + 1
#    correct rows; the injected row's grpo advantage (1 - p) / std with p = (k + 1)/G falls as k grows:
#    the guide helps most where the group was failing completely.
for k in range(5):
    r = torch.tensor([1.0] * k + [0.0] * (7 - k) + [1.0])  # k correct on-policy rows, the guide in the last slot
    print(k, round(group_advantages(r, torch.zeros(8, dtype=torch.long))[-1].item(), 3))
