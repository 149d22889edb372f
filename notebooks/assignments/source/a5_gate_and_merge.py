# %% [markdown]
# # Assignment 5: NPO's gate and the one-slot merge
#
# **Goal.** Write the two pieces of NPO that decide *which* groups get help and *how* a guide row enters a
# group, and check them against `npo_lab.core.guidance`. About 40 minutes on a CPU.
#
# At a guided step (docs/algorithm.md section 2), for every prompt of the batch:
#
# 1. **gate** (the paper's value: 0.6): the prompt is guided when the accuracy of its on-policy group,
#    p̂(x) = (1/G) Σ_i 1[r_i > 0.5], is **at most** the threshold: p̂ ≤ 0.6, as the paper writes it
#    (`op="le"`, the default). The authors' public code compares with a strict `<` (`op="lt"`); the two differ
#    only when p̂ can equal the threshold (G = 5: 3/5 = 0.6; never with G = 8);
# 2. the guide rows come from the near-future checkpoint π_{t+Δ}: at the intervention it answered every
#    prompt of the guided segment a few times, the verifier (the same function as for on-policy rows) kept one
#    correct answer per prompt, and NPO cached it; a prompt π_{t+Δ} could not solve has no cached row;
# 3. **merge** (the paper: one slot): in each gated group, the last k = 1 on-policy rows are replaced by k
#    *verified-correct* guide rows. A wrong guide row is never inserted: a group for which fewer than k correct
#    candidates exist stays fully on-policy. The group size stays G, and the advantage is then computed
#    over the mixed group (assignment 1). Your merge takes any candidate rows (a cache's, or several samples
#    per prompt) and uses the first correct ones of each gated prompt.
#
# You work on `npo_lab.batch.RolloutBatch`, the one type that crosses the boundary between the algorithm and
# a backend. What you need of it:
#
# * per-row fields `rewards` (B,), `group_ids` (B,), `is_guide` (B,) bool, per-token `behavior_logprobs`,
#   `old_logprobs`, `mask` (B, T), and `extras`, a per-row list the core never reads (token ids, images);
# * `RolloutBatch.cat([a, b])`: the rows of `a` then those of `b` (the shorter one padded with mask 0);
# * `batch.select(index)`: the rows `index` (a list of ints), in that order, every field sliced together;
# * `batch.replace(is_guide=...)`: a copy with some fields changed; `batch.trim()`: drops padding columns.
#
# **Rules.** Replace every `raise NotImplementedError`, with torch, Python and RolloutBatch's methods only.
# Keep names and signatures.

# %%
from collections.abc import Sequence

import torch
from torch import Tensor

from npo_lab.batch import RolloutBatch

# %% [markdown]
# ## 5.1 Group accuracy and the gate


# %%
def group_accuracy(rewards: Tensor, group_ids: Tensor, correct_threshold: float = 0.5) -> dict[int, float]:
    """Fraction of correct rows (reward > ``correct_threshold``) in each group.

    Args:
        rewards: (B,) float.
        group_ids: (B,) int, the prompt id of each row.
        correct_threshold: a reward above this is correct.

    Returns:
        {prompt id: accuracy of its group}.
    """
    ### BEGIN SOLUTION
    acc: dict[int, list[float]] = {}
    for r, g in zip(rewards.tolist(), group_ids.tolist()):
        acc.setdefault(g, []).append(1.0 if r > correct_threshold else 0.0)
    return {g: sum(v) / len(v) for g, v in acc.items()}
    ### END SOLUTION


def guide_gate(group_acc: Tensor, threshold: float = 0.6, op: str = "le") -> Tensor:
    """Which groups are guided: accuracy at most ``threshold`` (``op="le"``) or strictly below it (``"lt"``).

    Args:
        group_acc: (n_groups,) float in [0, 1].
        threshold: the gate.
        op: ``le`` (p-hat <= threshold, the paper) or ``lt`` (p-hat < threshold, the authors' public code).

    Returns:
        (n_groups,) bool.
    """
    if op not in ("le", "lt"):
        raise ValueError(f"op must be 'le' or 'lt', got {op!r}")
    ### BEGIN SOLUTION
    if op == "le":
        return group_acc <= threshold
    return group_acc < threshold
    ### END SOLUTION


# %% tags=["selfcheck"]
# Self-check 5.1 against npo_lab.core.guidance.
from npo_lab.core import guidance as lib

rewards = torch.tensor([1.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 0.0, 1.0, 1.0, 1.0, 1.0])
group_ids = torch.tensor([5, 5, 5, 5, 9, 9, 9, 9, 2, 2, 2, 2])
assert group_accuracy(rewards, group_ids) == lib.group_accuracy(rewards, group_ids)
acc = torch.tensor([0.0, 0.25, 0.5, 0.6, 0.75, 1.0])
assert guide_gate(acc).tolist() == lib.guide_gate(acc).tolist() == [True, True, True, True, False, False]
strict = [True, True, True, False, False, False]  # the authors' code: 0.6 itself is not guided
assert guide_gate(acc, op="lt").tolist() == lib.guide_gate(acc, op="lt").tolist() == strict
print("5.1 OK:", group_accuracy(rewards, group_ids))

# %% [markdown]
# ## 5.2 The merge
#
# Steps: mark every candidate as a guide row (`is_guide` True); concatenate the on-policy rows and the
# candidates; build the list `index` of the B rows of the result (start with 0..B-1, the on-policy rows, and
# point the last k slots of each gated group with at least k correct candidates at its first k correct
# candidates, in their order); `select` it and `trim` the result. Raise `ValueError` when k would replace every
# row of a gated group (at least one on-policy row must stay).


# %%
def merge_guides(
    on_policy: RolloutBatch,
    guides: RolloutBatch,
    gated: Sequence[int],
    k: int = 1,
    correct_threshold: float = 0.5,
) -> RolloutBatch:
    """Replace the last ``k`` rows of each gated group with verified-correct guide rows.

    Args:
        on_policy: the on-policy batch, B rows in groups (``group_ids``).
        guides: candidate rows; their ``group_ids`` name the prompt each answers. Rows with
            reward <= ``correct_threshold`` are never used.
        gated: the prompt ids whose groups may receive guides.
        k: slots replaced per gated group.
        correct_threshold: a reward above this is correct.

    Returns:
        a RolloutBatch of B rows in the on-policy layout, ``is_guide`` True exactly on the inserted rows.
    """
    ### BEGIN SOLUTION
    n_on = on_policy.size
    guides = guides.replace(is_guide=torch.ones(guides.size, dtype=torch.bool))
    combined = RolloutBatch.cat([on_policy, guides])  # rows 0..n_on-1 on-policy, then the candidates
    rows_of: dict[int, list[int]] = {}
    for i, g in enumerate(on_policy.group_ids.tolist()):
        rows_of.setdefault(g, []).append(i)
    correct: dict[int, list[int]] = {}
    for j, (g, r) in enumerate(zip(guides.group_ids.tolist(), guides.rewards.tolist())):
        if r > correct_threshold:
            correct.setdefault(g, []).append(n_on + j)  # index into `combined`
    index = list(range(n_on))
    gated_set = {int(g) for g in gated}
    for g, rows in rows_of.items():
        if g not in gated_set:
            continue
        if k >= len(rows):
            raise ValueError(f"k={k} would replace every row of group {g} (size {len(rows)})")
        if len(correct.get(g, [])) < k:
            continue  # nothing verified to insert: the group stays on-policy
        for target, src in zip(rows[-k:], correct[g][:k]):
            index[target] = src
    return combined.select(index).trim()  # unused (longer) candidates must not widen the batch
    ### END SOLUTION


# %% tags=["selfcheck"]
# Self-check 5.2: the merged batch equals npo_lab's, row by row (extras name each row, to see which is which).
def make_rows(rewards: list[float], group_ids: list[int], names: list[str], t: int) -> RolloutBatch:
    n = len(rewards)
    return RolloutBatch.from_rows(
        behavior_logprobs=-torch.rand(n, t),
        mask=torch.ones(n, t),
        rewards=torch.tensor(rewards),
        group_ids=torch.tensor(group_ids),
        extras=names,
    )


on = make_rows(rewards.tolist(), group_ids.tolist(), [f"on{i}" for i in range(12)], t=5)
cand = make_rows([0.0, 1.0, 1.0, 1.0, 0.0], [5, 5, 5, 9, 7], [f"guide{j}" for j in range(5)], t=7)
gated = [g for g, a in group_accuracy(on.rewards, on.group_ids).items() if a <= 0.6]  # [5]: accuracy 0.25
for k in (1, 2):
    mine = merge_guides(on, cand, gated, k)
    ref, _ = lib.merge_guides(on, cand, gated, k)
    assert mine.extras == ref.extras, (mine.extras, ref.extras)
    assert mine.is_guide.tolist() == ref.is_guide.tolist()
    torch.testing.assert_close(mine.behavior_logprobs, ref.behavior_logprobs)
    torch.testing.assert_close(mine.mask, ref.mask)
print("5.2 OK:", merge_guides(on, cand, gated).extras)

# %% [markdown]
# ## Questions (not graded automatically)
#
# 1. Why does the gate use the accuracy of the *on-policy* group, computed before any slot is replaced?
# 2. Why is replacing the *last* slot as good as replacing a uniformly random one?
# 3. A gated group of 8 has 2 correct on-policy rows, and the last slot held one of them. What do you lose by
#    replacing it with a (correct) guide row, and what does the option `slot="incorrect_first"` of
#    `npo_lab.core.guidance.merge_guides` do about it?
# 4. With G = 8, do `op="le"` and `op="lt"` ever guide different groups at the threshold 0.6? With G = 5?

# %% tags=["instructor"]
# Answers.
# 1. The gate asks whether the *current* policy needs help on this prompt; after a merge the group contains
#    a guide row, and its accuracy no longer measures the policy (the mistake pool of AutoNPO reads the
#    on-policy rows before the merge for the same reason).
# 2. The G rows of a group are i.i.d. samples of the same prompt, so their order carries no information: any
#    fixed slot is, in distribution, a uniformly random one.
# 3. You lose an on-policy success (the policy's own correct trajectory, which has the lowest variance cost)
#    and the group keeps the same number of correct rows; incorrect_first replaces wrong rows first, so the
#    guide adds a success instead of swapping one. npo_lab defaults to "last", the paper's one slot, as an
#    assumption.
# 4. With G = 8, p-hat is a multiple of 1/8 (0.5, 0.625, ...), never 0.6, so the two gates agree. With G = 5,
#    p-hat = 3/5 = 0.6 is guided by "le" and not by "lt": a group with 3 correct rows of 5 gets a guide row under
#    the paper's gate and none under the authors' code.
