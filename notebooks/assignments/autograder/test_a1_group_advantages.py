"""Autograder of assignment 1 (group-relative advantages): npo_lab.core is the reference."""

from __future__ import annotations

import math

import pytest
import torch

from npo_lab.core.advantages import group_advantages as lib_group_advantages
from npo_lab.core.functional import group_mean_std

ASSIGNMENT = "a1_group_advantages"


def random_groups(n_groups: int, g: int, seed: int, p: float = 0.4) -> tuple[torch.Tensor, torch.Tensor]:
    """Rewards in {0, 1} and arbitrary prompt ids, rows of different groups shuffled together."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randperm(1000, generator=gen)[:n_groups].repeat_interleave(g)  # (n_groups * g,)
    rewards = (torch.rand(n_groups * g, generator=gen) < p).float()
    perm = torch.randperm(n_groups * g, generator=gen)
    return rewards[perm], ids[perm]


@pytest.mark.parametrize("seed", range(4))
def test_group_stats_match_npo_lab(sub, seed):
    rewards, ids = random_groups(6, 8, seed)
    mine = sub.group_stats(rewards, ids)
    assert len(mine) == 3, "return (mean, std, count)"
    for what, a, b in zip(("mean", "std", "count"), mine, group_mean_std(rewards, ids)):
        assert a.shape == (48,), f"{what} must have shape (B,) = (48,), got {tuple(a.shape)}"
        torch.testing.assert_close(a.double(), b, msg=lambda m, what=what: f"{what}: {m}")


def test_group_stats_std_is_unbiased_and_zero_for_a_group_of_one(sub):
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0])
    ids = torch.tensor([3, 3, 3, 8])  # group 8 has one row
    _, std, count = sub.group_stats(rewards, ids)
    assert std[0].item() == pytest.approx(math.sqrt(1 / 3)), "std divides by n - 1 (unbiased)"
    assert std[3].item() == 0.0 and count.tolist() == [3.0, 3.0, 3.0, 1.0]


@pytest.mark.parametrize("estimator", ["grpo", "dr_grpo"])
@pytest.mark.parametrize("seed", range(4))
def test_advantages_match_npo_lab(sub, estimator, seed):
    rewards, ids = random_groups(5, 4 + 2 * seed, seed)
    mine = sub.group_advantages(rewards, ids, estimator)
    ref, _ = lib_group_advantages(rewards, ids, estimator)
    assert mine.shape == ref.shape, f"shape {tuple(mine.shape)}, expected (B,) = {tuple(ref.shape)}"
    torch.testing.assert_close(mine.float(), ref)


@pytest.mark.parametrize("estimator", ["grpo", "dr_grpo"])
def test_all_equal_groups_give_exactly_zero_and_no_nan(sub, estimator):
    rewards = torch.tensor([0.0] * 8 + [1.0] * 8 + [1.0, 0.0] * 4)
    ids = torch.tensor([0] * 8 + [1] * 8 + [2] * 8)
    adv = sub.group_advantages(rewards, ids, estimator)
    assert torch.isfinite(adv).all(), f"NaN or inf in {adv.tolist()}"
    assert adv[:16].abs().max().item() == 0.0, "all-wrong and all-right groups teach nothing: A = 0"
    assert adv[16:].abs().min().item() > 0


def test_output_is_float32_of_shape_b(sub):
    rewards = torch.tensor([1.0, 0.0, 1.0, 1.0, 0.0, 0.0], dtype=torch.float64)
    ids = torch.tensor([4, 4, 4, 9, 9, 9], dtype=torch.int32)
    adv = sub.group_advantages(rewards, ids, "grpo")
    assert adv.dtype == torch.float32 and adv.shape == (6,), (adv.dtype, tuple(adv.shape))


def test_groups_are_found_by_id_not_by_position(sub):
    rewards = torch.tensor([1.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0])
    ids = torch.tensor([42, 7, 42, 7, 42, 7, 42, 7])  # interleaved groups with arbitrary ids
    mine = sub.group_advantages(rewards, ids, "dr_grpo")
    torch.testing.assert_close(mine.float(), torch.tensor([0.75, -0.25, -0.25, -0.25, -0.25, 0.75, -0.25, -0.25]))


def test_one_correct_row_among_seven_by_hand(sub):
    adv = sub.group_advantages(torch.tensor([0.0] * 7 + [1.0]), torch.zeros(8, dtype=torch.long), "grpo")
    # mean 1/8, unbiased std sqrt(1/8): (1 - 1/8) / sqrt(1/8) = 7 / sqrt(8)
    assert adv[-1].item() == pytest.approx(7 / math.sqrt(8), rel=1e-5)
    assert adv[0].item() == pytest.approx(-1 / math.sqrt(8), rel=1e-5)


def test_inputs_are_not_modified(sub):
    rewards, ids = random_groups(3, 4, seed=9)
    r0, i0 = rewards.clone(), ids.clone()
    sub.group_advantages(rewards, ids, "grpo")
    assert torch.equal(rewards, r0) and torch.equal(ids, i0)


@pytest.mark.parametrize("seed", range(3))
def test_frac_zero_std_matches_npo_lab(sub, seed):
    rewards, ids = random_groups(10, 4, seed, p=0.15)  # sparse success: many all-wrong groups
    _, metrics = lib_group_advantages(rewards, ids)
    assert sub.frac_zero_std(rewards, ids) == pytest.approx(metrics["reward/frac_zero_std"], abs=1e-9)


def test_frac_zero_std_counts_groups_not_rows(sub):
    rewards = torch.tensor([0.0, 0.0, 1.0, 0.0, 1.0, 0.0, 1.0, 1.0, 0.0, 1.0])
    ids = torch.tensor([1, 1, 2, 2, 2, 2, 2, 2, 2, 2])  # group 1 (2 rows) is all wrong, group 2 (8 rows) mixed
    assert sub.frac_zero_std(rewards, ids) == pytest.approx(0.5)
