"""The Q/V/S estimators on hand-computed cases."""

from __future__ import annotations

import math

import pytest
import torch

from npo_lab.core.signal import importance_weights, q_hat, s_hat, v_hat


def test_q_hat_counts_prompts_with_a_correct_sample():
    rewards = torch.tensor([0.0, 1.0, 0.0, 0.0, 1.0, 1.0])
    gids = torch.tensor([1, 1, 2, 2, 3, 3])
    assert q_hat(rewards, gids, [1, 2, 3]) == pytest.approx(2 / 3)
    assert q_hat(rewards, gids, [2]) == 0.0
    assert math.isnan(q_hat(rewards, gids, []))


def test_v_hat_by_hand():
    # per-token weights w = pi_t / pi_src = [1, 0.5, 2] on the three unmasked tokens (the fourth is padding)
    lp_t = torch.log(torch.tensor([[0.4, 0.2], [0.6, 0.9]]))
    lp_s = torch.log(torch.tensor([[0.4, 0.4], [0.3, 0.1]]))
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0]])
    w = importance_weights(lp_t, lp_s, mask)
    assert w.tolist() == pytest.approx([1.0, 0.5, 2.0])
    mean = 3.5 / 3
    var = sum((x - mean) ** 2 for x in (1.0, 0.5, 2.0)) / 3
    assert v_hat(lp_t, lp_s, mask) == pytest.approx(1.0 + var)
    assert v_hat(lp_t, lp_s, mask, estimator="chi2") == pytest.approx(1.0 + (1 + 0.25 + 4) / 3 - 1)
    log_sq = (0 + math.log(0.5) ** 2 + math.log(2.0) ** 2) / 3
    assert v_hat(lp_t, lp_s, mask, estimator="log_ratio", floor=0.5) == pytest.approx(0.5 + log_sq)
    assert v_hat(estimator="grad_norm", grad_norms=torch.tensor([1.0, 3.0])) == pytest.approx(1.0 + 1.0)


def test_v_hat_is_the_floor_for_the_policy_itself_and_nan_without_rows():
    lp = torch.log(torch.rand(3, 4) * 0.9 + 0.05)
    mask = torch.ones(3, 4)
    for est in ("is_variance", "log_ratio", "chi2"):
        assert v_hat(lp, lp, mask, estimator=est, floor=1.0) == pytest.approx(1.0)
    assert math.isnan(v_hat(lp, lp, torch.zeros(3, 4)))
    with pytest.raises(ValueError, match="estimator"):
        v_hat(lp, lp, mask, estimator="kl")
    with pytest.raises(ValueError, match="grad_norms"):
        v_hat(estimator="grad_norm")


def test_log_ratio_keeps_growing_where_is_variance_saturates():
    # a confident source (pi_src = 1) on tokens pi_t finds ever less likely: w -> 0, Var(w) stays bounded
    mask = torch.ones(1, 4)
    src = torch.zeros(1, 4)
    prev_lr = 0.0
    for p in (0.5, 1e-2, 1e-4, 1e-8):
        cur = torch.log(torch.tensor([[1.0, 1.0, p, p]]))
        assert v_hat(cur, src, mask) <= 1.25
        lr = v_hat(cur, src, mask, estimator="log_ratio")
        assert lr > prev_lr
        prev_lr = lr
    assert prev_lr > 100


def test_s_hat():
    assert s_hat(0.6, 1.5) == pytest.approx(0.4)
    assert math.isnan(s_hat(float("nan"), 1.0))
    assert math.isnan(s_hat(0.5, 0.0))


def test_kl_exp_is_the_exponential_of_the_mean_token_kl_by_hand():
    """The paper's V-hat: exp(beta * per-token KL(pi_src || pi_t)) on the source's rows, k3 estimator."""
    from npo_lab.core.signal import token_kl

    src = torch.log(torch.tensor([[0.5, 0.25, 0.9]]))  # the source wrote these tokens
    cur = torch.log(torch.tensor([[0.25, 0.25, 0.3]]))  # pi_t's log-probs of them
    mask = torch.tensor([[1.0, 1.0, 0.0]])  # the third token is padding
    r = torch.tensor([0.5, 1.0])  # pi_t / pi_src on the two real tokens
    kl = (r - 1 - torch.log(r)).mean().item()
    assert token_kl(cur, src, mask) == pytest.approx(kl)
    assert v_hat(cur, src, mask, estimator="kl_exp", kl_beta=3.0) == pytest.approx(math.exp(3.0 * kl))
    assert v_hat(cur, src, mask, estimator="kl_exp", floor=5.0) == pytest.approx(math.exp(kl))  # no floor
    assert math.isnan(v_hat(cur, src, torch.zeros(1, 3), estimator="kl_exp"))
