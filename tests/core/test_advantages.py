import pytest
import torch

from npo_lab.core.advantages import (
    ADVANTAGES,
    dr_grpo_advantages,
    group_advantages,
    grpo_advantages,
    grpo_advantages_loop,
)


def test_grpo_hand_computed():
    # group 0: rewards 1,0,0,0 -> mean .25, unbiased std sqrt(.25) = .5 -> (1-.25)/.5 = 1.5, (0-.25)/.5 = -.5
    # group 1: rewards 1,1 -> std 0 -> advantages 0
    r = torch.tensor([1.0, 0.0, 0.0, 0.0, 1.0, 1.0])
    g = torch.tensor([5, 5, 5, 5, 9, 9])
    adv, m = grpo_advantages(r, g, eps=0.0 + 1e-12)
    assert torch.allclose(adv, torch.tensor([1.5, -0.5, -0.5, -0.5, 0.0, 0.0]), atol=1e-6)
    assert m["reward/frac_zero_std"] == pytest.approx(0.5)  # one of two groups teaches nothing


def test_dr_grpo_is_mean_only():
    r = torch.tensor([1.0, 0.0, 0.0, 0.0])
    adv, _ = dr_grpo_advantages(r, torch.zeros(4, dtype=torch.long))
    assert adv.tolist() == pytest.approx([0.75, -0.25, -0.25, -0.25])


def test_vectorised_matches_loop_on_random_groups():
    gen = torch.Generator().manual_seed(0)
    r = torch.randint(0, 2, (48,), generator=gen).float()
    g = torch.randint(0, 7, (48,), generator=gen) * 13  # non-contiguous, unsorted ids
    adv, _ = grpo_advantages(r, g)
    ref = grpo_advantages_loop(r.tolist(), g.tolist())
    assert adv.tolist() == pytest.approx(ref, abs=1e-5)


def test_group_order_does_not_matter():
    r = torch.tensor([1.0, 0.0, 1.0, 0.0, 0.0, 1.0])
    g = torch.tensor([0, 1, 0, 1, 0, 1])
    perm = torch.tensor([5, 3, 1, 0, 2, 4])
    a, _ = group_advantages(r, g)
    b, _ = group_advantages(r[perm], g[perm])
    assert torch.allclose(a[perm], b)


def test_registry_rejects_unknown_name():
    assert set(ADVANTAGES.names()) == {"grpo", "dr_grpo"}
    with pytest.raises(ValueError, match="unknown advantage estimator 'grpoo'.*did you mean 'grpo'"):
        group_advantages(torch.zeros(2), torch.zeros(2, dtype=torch.long), "grpoo")
