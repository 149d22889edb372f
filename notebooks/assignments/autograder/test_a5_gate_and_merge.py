"""Autograder of assignment 5 (the 0.6 gate and the one-slot merge): npo_lab.core.guidance is the reference."""

from __future__ import annotations

import pytest
import torch

from npo_lab.batch import RolloutBatch
from npo_lab.core import guidance as lib

ASSIGNMENT = "a5_gate_and_merge"


def rows(rewards: list[float], group_ids: list[int], prefix: str, t: int, seed: int) -> RolloutBatch:
    """Rows named in ``extras`` (so a merge's row order can be read off), of random lengths up to ``t``."""
    gen = torch.Generator().manual_seed(seed)
    n = len(rewards)
    lengths = torch.randint(1, t + 1, (n,), generator=gen)
    mask = (torch.arange(t) < lengths.unsqueeze(-1)).float()  # (n, t)
    return RolloutBatch.from_rows(
        behavior_logprobs=-torch.rand(n, t, generator=gen) * mask,
        mask=mask,
        rewards=torch.tensor(rewards),
        group_ids=torch.tensor(group_ids),
        extras=[f"{prefix}{i}" for i in range(n)],
    )


def random_case(seed: int, g: int = 4):
    gen = torch.Generator().manual_seed(seed)
    prompts = torch.randperm(100, generator=gen)[:6].tolist()
    on_ids = [p for p in prompts for _ in range(g)]
    on_rewards = (torch.rand(len(on_ids), generator=gen) < 0.4).float().tolist()
    cand_ids = [prompts[i] for i in torch.randint(0, 6, (14,), generator=gen).tolist()] + [999]  # 999: no group
    cand_rewards = (torch.rand(15, generator=gen) < 0.6).float().tolist()
    on = rows(on_rewards, on_ids, "on", t=5, seed=seed)
    cand = rows(cand_rewards, cand_ids, "guide", t=8, seed=seed + 100)  # longer rows than the on-policy ones
    acc = lib.group_accuracy(on.rewards, on.group_ids)
    gated = [p for p, a in acc.items() if a <= 0.6]
    return on, cand, gated


def assert_same_batch(mine: RolloutBatch, ref: RolloutBatch) -> None:
    assert isinstance(mine, RolloutBatch), f"return a RolloutBatch, got {type(mine).__name__}"
    mine, ref = mine.trim(), ref.trim()
    assert mine.extras == ref.extras, f"row order: {mine.extras} != npo_lab's {ref.extras}"
    assert mine.is_guide.tolist() == ref.is_guide.tolist(), "is_guide must be True exactly on the inserted rows"
    assert mine.rewards.tolist() == ref.rewards.tolist() and mine.group_ids.tolist() == ref.group_ids.tolist()
    for name in ("behavior_logprobs", "old_logprobs", "mask"):
        torch.testing.assert_close(getattr(mine, name), getattr(ref, name), msg=lambda m, n=name: f"{n}: {m}")


@pytest.mark.parametrize("seed", range(3))
def test_group_accuracy_matches_npo_lab(sub, seed):
    on, _, _ = random_case(seed)
    assert sub.group_accuracy(on.rewards, on.group_ids) == pytest.approx(lib.group_accuracy(on.rewards, on.group_ids))


def test_group_accuracy_threshold(sub):
    rewards, ids = torch.tensor([0.6, 0.4, 0.9, 0.1]), torch.tensor([3, 3, 5, 5])
    assert sub.group_accuracy(rewards, ids) == {3: 0.5, 5: 0.5}
    assert sub.group_accuracy(rewards, ids, correct_threshold=0.8) == {3: 0.0, 5: 0.5}


def test_gate_is_at_most_the_threshold(sub):
    acc = torch.tensor([0.0, 0.125, 0.5, 0.59, 0.6, 0.75, 1.0])
    out = sub.guide_gate(acc)
    assert out.dtype == torch.bool and out.shape == acc.shape, (out.dtype, tuple(out.shape))
    assert out.tolist() == lib.guide_gate(acc).tolist() == [True, True, True, True, True, False, False], (
        "the paper's gate guides p-hat <= 0.6: a group at exactly 0.6 is guided"
    )
    assert sub.guide_gate(acc, 0.6, "le").tolist() == out.tolist()
    assert sub.guide_gate(acc, threshold=1.0).tolist() == lib.guide_gate(acc, 1.0).tolist() == [True] * 7
    # the authors' public code: strictly below
    assert sub.guide_gate(acc, op="lt").tolist() == lib.guide_gate(acc, op="lt").tolist()
    assert sub.guide_gate(acc, op="lt").tolist() == [True, True, True, True, False, False, False]
    assert sub.guide_gate(torch.tensor([3 / 5]), 0.6, "lt").tolist() == [False]  # G = 5, 3 correct rows
    with pytest.raises(ValueError):
        sub.guide_gate(acc, op="ge")


@pytest.mark.parametrize("k", [1, 2])
@pytest.mark.parametrize("seed", range(4))
def test_merge_matches_npo_lab(sub, seed, k):
    on, cand, gated = random_case(seed)
    ref, _ = lib.merge_guides(on, cand, gated, k)
    assert_same_batch(sub.merge_guides(on, cand, gated, k), ref)


def test_merge_replaces_the_last_slot_with_the_first_correct_candidate(sub):
    on = rows([0.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 0.0], [7, 7, 7, 7, 8, 8, 8, 8], "on", t=4, seed=0)
    cand = rows([0.0, 1.0, 1.0, 1.0], [7, 7, 7, 8], "guide", t=4, seed=1)
    merged = sub.merge_guides(on, cand, gated=[7])
    assert merged.extras == ["on0", "on1", "on2", "guide1", "on4", "on5", "on6", "on7"], merged.extras
    assert merged.is_guide.tolist() == [False, False, False, True, False, False, False, False]
    assert merged.size == on.size, "the group size stays G"


def test_a_wrong_guide_row_is_never_inserted(sub):
    on = rows([0.0] * 4, [3] * 4, "on", t=3, seed=2)
    cand = rows([0.0, 0.4, 0.5], [3, 3, 3], "guide", t=3, seed=3)  # 0.5 is not above the threshold
    merged = sub.merge_guides(on, cand, gated=[3])
    assert merged.extras == ["on0", "on1", "on2", "on3"] and not merged.is_guide.any()


def test_ungated_groups_are_untouched(sub):
    on = rows([0.0, 1.0, 0.0, 0.0, 0.0, 0.0], [1, 1, 1, 2, 2, 2], "on", t=3, seed=4)
    cand = rows([1.0, 1.0], [1, 2], "guide", t=3, seed=5)
    merged = sub.merge_guides(on, cand, gated=[2])
    assert merged.extras == ["on0", "on1", "on2", "on3", "on4", "guide1"], merged.extras


def test_k_slots_need_k_correct_candidates(sub):
    on = rows([0.0] * 4, [3] * 4, "on", t=3, seed=6)
    cand = rows([1.0, 0.0], [3, 3], "guide", t=3, seed=7)  # one correct candidate for k = 2
    assert sub.merge_guides(on, cand, gated=[3], k=2).extras == ["on0", "on1", "on2", "on3"]


def test_replacing_a_whole_group_is_refused(sub):
    on = rows([0.0, 0.0], [3, 3], "on", t=3, seed=8)
    cand = rows([1.0, 1.0], [3, 3], "guide", t=3, seed=9)
    with pytest.raises(ValueError):
        sub.merge_guides(on, cand, gated=[3], k=2)


def test_inputs_are_not_modified(sub):
    on, cand, gated = random_case(5)
    before = (on.is_guide.clone(), cand.is_guide.clone(), on.rewards.clone(), list(on.extras))
    sub.merge_guides(on, cand, gated)
    after = (on.is_guide, cand.is_guide, on.rewards, on.extras)
    assert all(torch.equal(a, b) if torch.is_tensor(a) else a == b for a, b in zip(before, after))
