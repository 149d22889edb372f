"""Autograder of assignment 2 (clipped surrogate, shaped guide loss, aggregation): npo_lab.core is the reference."""

from __future__ import annotations

import functools

import pytest
import torch

from npo_lab.core.losses import aggregate as lib_aggregate
from npo_lab.core.losses import policy_loss

# the plain surrogate the assignment teaches: the library's overflow guard on the log-ratio (verl's clamp at 20) is
# off, since the random test batches reach ratios past it
lib_policy_loss = functools.partial(policy_loss, log_ratio_clamp=0.0)

ASSIGNMENT = "a2_clipped_loss"
MODES = ["token_mean", "seq_mean", "sum_norm"]


def batch(seed: int, b: int = 6, t: int = 7, spread: float = 0.4):
    """Log-probs on both sides of the clip range, advantages of both signs, rows of different lengths, and
    garbage (finite) values on the padding, which must not matter."""
    gen = torch.Generator().manual_seed(seed)
    old = -torch.rand(b, t, generator=gen) * 3
    logp = old + spread * torch.randn(b, t, generator=gen)
    adv = torch.randn(b, generator=gen)
    lengths = torch.randint(1, t + 1, (b,), generator=gen)
    mask = (torch.arange(t) < lengths.unsqueeze(-1)).float()  # (B, T)
    garbage = 5 * torch.randn(b, t, generator=gen)
    logp = torch.where(mask.bool(), logp, garbage)
    old = torch.where(mask.bool(), old, -garbage.abs())
    is_guide = torch.rand(b, generator=gen) < 0.4
    return logp.requires_grad_(), old, adv, mask, is_guide


def per_token_reference(logp, old, adv, **kw):
    """npo_lab's per-token loss: token_mean over a one-hot mask picks out one token."""
    b, t = logp.shape
    out = torch.zeros(b, t)
    for i in range(b):
        for j in range(t):
            one_hot = torch.zeros(b, t)
            one_hot[i, j] = 1.0
            out[i, j] = lib_policy_loss(logp, old, adv, one_hot, **kw)[0].detach()
    return out


@pytest.mark.parametrize("seed", range(3))
def test_clipped_surrogate_matches_npo_lab(sub, seed):
    logp, old, adv, _, _ = batch(seed)
    mine = sub.clipped_surrogate(logp, old, adv)
    assert mine.shape == logp.shape, f"per-token loss must be (B, T) = {tuple(logp.shape)}, got {tuple(mine.shape)}"
    torch.testing.assert_close(mine.detach(), per_token_reference(logp, old, adv))


def test_clipped_surrogate_asymmetric_clip_range(sub):
    logp, old, adv, _, _ = batch(7, spread=0.6)
    mine = sub.clipped_surrogate(logp, old, adv, 0.1, 0.28)
    ref = per_token_reference(logp, old, adv, clip_eps_low=0.1, clip_eps_high=0.28)
    torch.testing.assert_close(mine.detach(), ref)


def test_clipped_surrogate_gradient_vanishes_where_clipped(sub):
    old = torch.zeros(1, 4)
    logp = torch.log(torch.tensor([[0.5, 0.9, 1.1, 1.5]])).requires_grad_()  # ratios
    for a in (1.0, -1.0):
        (grad,) = torch.autograd.grad(sub.clipped_surrogate(logp, old, torch.tensor([a])).sum(), logp)
        active = [0.9, 1.1] + ([0.5] if a > 0 else [1.5])  # A > 0: only rho > 1.2 is clipped; A < 0: rho < 0.8
        expected = torch.tensor([[-a * r if r in active else 0.0 for r in (0.5, 0.9, 1.1, 1.5)]])
        torch.testing.assert_close(grad, expected)


@pytest.mark.parametrize("seed", range(2))
def test_shaped_guide_loss_matches_npo_lab(sub, seed):
    logp, old, adv, _, _ = batch(seed)
    mine = sub.shaped_guide_loss(logp, adv, 0.1)
    all_guide = torch.ones(logp.shape[0], dtype=torch.bool)
    ref = per_token_reference(logp, old, adv, is_guide=all_guide, guide_loss="shaped", shaping_gamma=0.1)
    assert mine.shape == logp.shape
    torch.testing.assert_close(mine.detach(), ref)


def test_shaped_guide_loss_by_hand(sub):
    logp = torch.log(torch.tensor([[0.1, 0.3]]))
    mine = sub.shaped_guide_loss(logp, torch.tensor([2.0]), 0.1)
    torch.testing.assert_close(mine, torch.tensor([[-2 * 0.1 / 0.2, -2 * 0.3 / 0.4]]))


@pytest.mark.parametrize("mode", MODES)
def test_aggregate_matches_npo_lab(sub, mode):
    _, _, _, mask, _ = batch(3)
    loss_mat = torch.randn(mask.shape)
    torch.testing.assert_close(sub.aggregate(loss_mat, mask, mode), lib_aggregate(loss_mat, mask, mode))
    torch.testing.assert_close(sub.aggregate(loss_mat, mask, mode, 11.0), lib_aggregate(loss_mat, mask, mode, 11.0))


@pytest.mark.parametrize("mode", MODES)
def test_aggregate_ignores_padding_and_survives_empty_rows(sub, mode):
    loss_mat = torch.tensor([[1.0, 2.0, 1e6], [3.0, -7.0, 5.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0], [0.0, 0.0, 0.0]])  # the second row is empty
    out = sub.aggregate(loss_mat, mask, mode)
    assert out.dim() == 0, f"a scalar, got shape {tuple(out.shape)}"
    assert torch.isfinite(out), out
    torch.testing.assert_close(out, lib_aggregate(loss_mat, mask, mode))
    assert torch.isfinite(sub.aggregate(loss_mat, torch.zeros_like(mask), mode)), "an all-padding batch gives NaN"


@pytest.mark.parametrize("guide_loss", ["on_policy", "shaped"])
@pytest.mark.parametrize("mode", MODES)
def test_policy_loss_value_and_gradient_match_npo_lab(sub, guide_loss, mode):
    logp, old, adv, mask, is_guide = batch(11)
    mine = sub.policy_loss(logp, old, adv, mask, is_guide, guide_loss, aggregation=mode)
    ref, _ = lib_policy_loss(logp, old, adv, mask, is_guide=is_guide, guide_loss=guide_loss, aggregation=mode)
    assert mine.dim() == 0, f"the loss must be a scalar, got shape {tuple(mine.shape)}"
    torch.testing.assert_close(mine, ref)
    (g_mine,) = torch.autograd.grad(mine, logp)
    (g_ref,) = torch.autograd.grad(ref, logp)
    torch.testing.assert_close(g_mine, g_ref)
    assert (g_mine * (1 - mask)).abs().max().item() == 0.0, "padding tokens must get no gradient"


def test_policy_loss_keyword_arguments(sub):
    logp, old, adv, mask, is_guide = batch(5, spread=0.6)
    kw = dict(clip_eps_low=0.1, clip_eps_high=0.28, shaping_gamma=0.5, aggregation="sum_norm", norm_constant=9.0)
    mine = sub.policy_loss(logp, old, adv, mask, is_guide=is_guide, guide_loss="shaped", **kw)
    ref, _ = lib_policy_loss(logp, old, adv, mask, is_guide=is_guide, guide_loss="shaped", **kw)
    torch.testing.assert_close(mine, ref)


def test_policy_loss_without_guide_rows(sub):
    logp, old, adv, mask, _ = batch(2)
    for guide_loss in ("on_policy", "shaped"):
        mine = sub.policy_loss(logp, old, adv, mask, None, guide_loss)
        torch.testing.assert_close(mine, lib_policy_loss(logp, old, adv, mask)[0])


def test_policy_loss_at_ratio_one_is_minus_the_token_mean_advantage(sub):
    logp = torch.log(torch.tensor([[0.5, 0.25, 0.9], [0.2, 0.7, 0.1]])).requires_grad_()
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
    adv = torch.tensor([1.5, -0.5])
    loss = sub.policy_loss(logp, logp.detach(), adv, mask)
    assert loss.item() == pytest.approx(-(2 * 1.5 + 3 * -0.5) / 5, rel=1e-5)
    (grad,) = torch.autograd.grad(loss, logp)
    torch.testing.assert_close(grad, -adv.unsqueeze(-1) * mask / 5)


def test_policy_loss_is_zero_with_zero_advantages(sub):
    logp, old, _, mask, is_guide = batch(4)
    for guide_loss in ("on_policy", "shaped"):
        loss = sub.policy_loss(logp, old, torch.zeros(logp.shape[0]), mask, is_guide, guide_loss)
        (grad,) = torch.autograd.grad(loss, logp)
        assert loss.item() == 0.0 and grad.abs().max().item() == 0.0
