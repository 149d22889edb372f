import math

import pytest
import torch

from npo_lab.core.kl import kl_penalty
from npo_lab.core.losses import aggregate, policy_loss

# 2 rows x 3 tokens; row 0 has 3 valid tokens, row 1 has 2
MASK = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
ADV = torch.tensor([1.0, -2.0])


def test_ratio_one_loss_and_gradient_by_hand():
    # with logp == old, ratio = 1 and l_t = -A; d l_t / d logp_t = -A (ratio' = ratio = 1)
    logp = torch.zeros(2, 3, requires_grad=True)
    loss, m = policy_loss(logp, torch.zeros(2, 3), ADV, MASK, aggregation="token_mean")
    # token mean: (-1 -1 -1 +2 +2) / 5 = 0.2
    assert loss.item() == pytest.approx(0.2)
    loss.backward()
    expected = torch.tensor([[-1.0, -1.0, -1.0], [2.0, 2.0, 0.0]]) / 5
    assert torch.allclose(logp.grad, expected)
    assert m["policy/clipfrac"] == 0.0 and m["policy/ratio_mean"] == pytest.approx(1.0)


@pytest.mark.parametrize(
    "mode,expected",
    [
        ("token_mean", (1 + 2 + 3 + 4 + 5) / 5),  # sum over tokens / 5 valid tokens
        ("seq_mean", ((1 + 2 + 3) / 3 + (4 + 5) / 2) / 2),  # per-row mean, then mean of rows
        ("sum_norm", (1 + 2 + 3 + 4 + 5) / (2 * 3)),  # sum / (B * T)
    ],
)
def test_aggregation_modes(mode, expected):
    x = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 99.0]])  # 99 is masked out
    assert aggregate(x, MASK, mode).item() == pytest.approx(expected)


def test_sum_norm_constant():
    x = torch.ones(2, 3)
    assert aggregate(x, MASK, "sum_norm", norm_constant=10.0).item() == pytest.approx(5 / 20)


def test_clipping_by_hand():
    # positive advantage, ratio e^0.5 = 1.65 > 1.2: clipped -> loss = -1.2 * A and zero gradient
    logp = torch.full((1, 1), 0.5, requires_grad=True)
    loss, m = policy_loss(logp, torch.zeros(1, 1), torch.tensor([1.0]), torch.ones(1, 1))
    assert loss.item() == pytest.approx(-1.2)
    loss.backward()
    assert logp.grad.item() == 0.0
    assert m["policy/clipfrac"] == 1.0
    # negative advantage, ratio 1.65: min picks the unclipped -r*A branch -> gradient -A * r
    logp2 = torch.full((1, 1), 0.5, requires_grad=True)
    loss2, _ = policy_loss(logp2, torch.zeros(1, 1), torch.tensor([-1.0]), torch.ones(1, 1))
    assert loss2.item() == pytest.approx(math.exp(0.5))
    loss2.backward()
    assert logp2.grad.item() == pytest.approx(math.exp(0.5))


def test_guide_on_policy_is_the_ordinary_loss():
    logp = torch.randn(2, 3)
    old = torch.randn(2, 3)
    g = torch.tensor([False, True])
    a, _ = policy_loss(logp, old, ADV, MASK)
    b, _ = policy_loss(logp, old, ADV, MASK, is_guide=g, guide_loss="on_policy")
    assert a.item() == b.item()


def test_guide_shaped_by_hand():
    # guide row 1: l_t = -A * p/(p+0.1) with p = e^logp; gradient = -A * 0.1 p / (p+0.1)^2
    logp = torch.log(torch.tensor([[0.5, 0.5, 0.5], [0.2, 0.4, 0.9]])).requires_grad_(True)
    g = torch.tensor([False, True])
    loss, _ = policy_loss(logp, logp.detach(), ADV, MASK, is_guide=g, guide_loss="shaped", aggregation="sum_norm")
    p = torch.tensor([0.2, 0.4])
    row1 = (2.0 * p / (p + 0.1)).sum()  # -A = +2
    assert loss.item() == pytest.approx((-3.0 + row1.item()) / 6)
    loss.backward()
    assert torch.allclose(logp.grad[1, :2], 2.0 * 0.1 * p / (p + 0.1) ** 2 / 6, atol=1e-6)
    assert logp.grad[1, 2].item() == 0.0  # masked


def test_guide_importance_truncated():
    logp = torch.zeros(2, 3, requires_grad=True)
    behavior = torch.tensor([[0.0, 0.0, 0.0], [-2.0, 0.0, 0.0]])  # rho_b = e^2 = 7.4 -> capped at 2, then 1, 1
    g = torch.tensor([False, True])
    kw = dict(is_guide=g, guide_loss="importance", is_cap=2.0, aggregation="sum_norm")
    loss, _ = policy_loss(logp, logp.detach(), ADV, MASK, behavior_logprobs=behavior, **kw)
    assert loss.item() == pytest.approx((-3.0 + 2.0 * (2.0 + 1.0)) / 6)
    loss.backward()
    # the capped token still learns, with the constant weight min(rho_b, c) = 2: dl/dlogp = -A * 2 / (B * T)
    assert logp.grad[1].tolist() == pytest.approx([4 / 6, 2 / 6, 0.0])
    with pytest.raises(ValueError, match="behavior_logprobs"):
        policy_loss(logp, logp, ADV, MASK, is_guide=g, guide_loss="importance")


def test_kl_estimators_by_hand():
    lp, ref = torch.tensor([[0.0]]), torch.tensor([[-1.0]])
    assert kl_penalty(lp, ref, "k1").item() == pytest.approx(1.0)
    assert kl_penalty(lp, ref, "k3").item() == pytest.approx(math.exp(-1) + 1 - 1)
    loss, m = policy_loss(lp, lp, torch.tensor([0.0]), torch.ones(1, 1), ref_logprobs=ref, kl_coef=0.5)
    assert loss.item() == pytest.approx(0.5 * math.exp(-1))
    assert m["loss/kl"] == pytest.approx(math.exp(-1))
    with pytest.raises(ValueError, match="ref_logprobs"):
        policy_loss(lp, lp, torch.tensor([0.0]), torch.ones(1, 1), kl_coef=0.1)


def test_entropy_bonus_and_metric():
    ent = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 0.0]])
    lp = torch.zeros(2, 3)
    base, _ = policy_loss(lp, lp, ADV, MASK)
    loss, m = policy_loss(lp, lp, ADV, MASK, entropy=ent, entropy_coef=0.1)
    assert m["policy/entropy"] == pytest.approx(3.0)
    assert loss.item() == pytest.approx(base.item() - 0.1 * 3.0)


def test_unknown_guide_loss():
    with pytest.raises(ValueError, match="guide_loss"):
        policy_loss(torch.zeros(1, 1), torch.zeros(1, 1), torch.ones(1), torch.ones(1, 1), guide_loss="luffy")


def test_shaped_is_guide_rows_weight_the_ratio_to_the_recorded_logprobs():
    # ExGRPO: w = pi / pi_recorded, loss -A * w / (w + gamma), no clip; d loss / d logp = -A * gamma * w / (w + g)^2
    logp = torch.log(torch.tensor([[0.5], [0.3]])).requires_grad_(True)
    recorded = torch.log(torch.tensor([[0.5], [0.1]]))
    adv = torch.tensor([1.0, 2.0])
    loss, _ = policy_loss(
        logp,
        logp.detach(),
        adv,
        torch.ones(2, 1),
        is_guide=torch.tensor([False, True]),
        behavior_logprobs=recorded,
        guide_loss="shaped_is",
        shaping_gamma=0.1,
        aggregation="seq_mean",
    )
    w = 3.0  # 0.3 / 0.1, far outside the PPO clip range: nothing clips it
    assert loss.item() == pytest.approx((-1.0 + -2.0 * w / (w + 0.1)) / 2, rel=1e-5)
    loss.backward()
    assert logp.grad[1, 0].item() == pytest.approx(-2.0 * 0.1 * w / (w + 0.1) ** 2 / 2, rel=1e-4)
    assert logp.grad[0, 0].item() == pytest.approx(-0.5, rel=1e-5)


def test_guide_behavior_clipped_by_hand():
    """NPO's objective for the guide slot: the clipped ratio to the policy that sampled it (pi_{t+Delta})."""
    logp = torch.log(torch.tensor([[0.5, 0.2], [0.3, 0.3]])).requires_grad_(True)
    old = torch.log(torch.tensor([[0.5, 0.2], [0.3, 0.3]]))  # the recomputed anchor: ratio 1 on every token
    behavior = torch.log(torch.tensor([[0.5, 0.2], [0.2, 0.6]]))  # row 1 was sampled by the guide
    adv = torch.tensor([-1.0, 2.0])
    guide = torch.tensor([False, True])
    loss, _ = policy_loss(logp, old, adv, torch.ones(2, 2), is_guide=guide, behavior_logprobs=behavior,
                          guide_loss="behavior_clipped", aggregation="seq_mean")  # fmt: skip
    # row 1: rho_b = 0.3/0.2 = 1.5 (clipped to 1.2: A > 0, so -1.2 * 2) and 0.3/0.6 = 0.5 (unclipped: -0.5 * 2)
    rho = torch.tensor([1.5, 0.5])
    row1 = (-torch.minimum(rho * 2.0, rho.clamp(0.8, 1.2) * 2.0)).mean()
    row0 = torch.tensor(1.0)  # on-policy row at ratio 1: -(1 * -1)
    torch.testing.assert_close(loss, (row0 + row1) / 2)
    loss.backward()
    # the clipped token has no gradient; the other: d(-A rho)/d logp = -A rho / T / B = -2 * 0.5 / 2 / 2
    torch.testing.assert_close(logp.grad[1], torch.tensor([0.0, -0.25]))
    with pytest.raises(ValueError, match="behavior_logprobs"):
        policy_loss(logp, old, adv, torch.ones(2, 2), is_guide=guide, guide_loss="behavior_clipped")


def test_dual_clip_caps_the_loss_of_a_negative_advantage_by_hand():
    logp = torch.tensor([[math.log(5.0), math.log(2.0)]], requires_grad=True)  # ratios 5 and 2 against old = 0
    adv = torch.tensor([-1.0])
    loss, m = policy_loss(logp, torch.zeros(1, 2), adv, torch.ones(1, 2), dual_clip_c=3.0, aggregation="seq_mean")
    # plain clipped loss would be max(-A rho, -A clip(rho)) = 5 and 2; the dual clip caps the first at -c A = 3
    torch.testing.assert_close(loss, torch.tensor((3.0 + 2.0) / 2))
    loss.backward()
    torch.testing.assert_close(logp.grad, torch.tensor([[0.0, 1.0]]))  # d(2 exp(x))/dx / 2 = rho / 2 = 1
    assert m["policy/clipfrac"] == 0.5  # the capped token (the other: ratio 2 > 1.2 but A < 0, not clipped)
    plain, _ = policy_loss(logp.detach(), torch.zeros(1, 2), adv, torch.ones(1, 2), aggregation="seq_mean")
    torch.testing.assert_close(plain, torch.tensor(3.5))  # off by default


def test_the_log_ratio_clamp_keeps_an_exploding_ratio_finite():
    logp = torch.tensor([[100.0]], requires_grad=True)
    loss, m = policy_loss(logp, torch.zeros(1, 1), torch.tensor([-1.0]), torch.ones(1, 1))
    assert math.isfinite(loss.item()) and loss.item() == pytest.approx(math.exp(20.0))
    unclamped, _ = policy_loss(logp, torch.zeros(1, 1), torch.tensor([-1.0]), torch.ones(1, 1), log_ratio_clamp=0.0)
    assert math.isinf(unclamped.item())
