"""Gradient accumulation over micro-batches gives the minibatch's exact update for every aggregation."""

import pytest
import torch

from npo_lab.backend import ScriptedBackend
from npo_lab.config import GRPOConfig
from npo_lab.core.advantages import group_advantages
from npo_lab.train import make_state
from npo_lab.train.step import update_minibatch
from npo_lab.utils import seed_everything


def _step(aggregation: str, micro: int, guide_loss: str = "on_policy") -> tuple[torch.Tensor, dict[str, float]]:
    seed_everything(0)
    be = ScriptedBackend(n_prompts=6, seq_len=5, vocab=4, seed=0)
    grpo = GRPOConfig(batch_size=12, group_size=4, lr=0.5, aggregation=aggregation, micro_batch_size=micro)
    state = make_state(be, grpo, seed=0)
    state.optimizer = torch.optim.SGD(list(be.parameters()), lr=0.5)  # plain SGD: the update is the gradient
    b = be.rollout([0, 1, 2], 4)
    g = torch.Generator().manual_seed(1)
    lengths = torch.randint(1, 6, (b.size,), generator=g)
    mask = (torch.arange(5).unsqueeze(0) < lengths.unsqueeze(1)).float()  # ragged rows: token counts differ
    is_guide = torch.zeros(b.size, dtype=torch.bool)
    is_guide[[3, 7]] = True
    b = b.replace(mask=mask, is_guide=is_guide, old_logprobs=be.logprobs(b)[0].detach() - 0.1)
    adv, _ = group_advantages(b.rewards + torch.linspace(0, 1, b.size), b.group_ids, "grpo")
    kw = dict(
        clip_eps_low=0.2,
        clip_eps_high=0.2,
        aggregation=aggregation,
        norm_constant=5.0,
        kl_coef=0.0,
        kl_estimator="k3",
        entropy_coef=0.01,
        guide_loss=guide_loss,
    )
    lm = update_minibatch(state, b, adv, torch.arange(b.size), grpo, kw)
    return be.table.detach().clone(), lm


@pytest.mark.parametrize("aggregation", ["token_mean", "seq_mean", "sum_norm"])
@pytest.mark.parametrize("micro", [1, 5, 7])
def test_micro_batches_give_the_minibatch_update(aggregation, micro):
    full, lm_full = _step(aggregation, 0)
    acc, lm_acc = _step(aggregation, micro)
    assert not torch.equal(full, ScriptedBackend(n_prompts=6, seq_len=5, vocab=4, seed=0).table.detach())
    torch.testing.assert_close(acc, full, rtol=1e-5, atol=1e-6)
    for k in ("loss/policy", "loss/total", "policy/grad_norm"):
        assert lm_acc[k] == pytest.approx(lm_full[k], rel=1e-5, abs=1e-7), k


def test_micro_batches_with_a_guide_treatment():
    full, _ = _step("token_mean", 0, guide_loss="shaped")
    acc, _ = _step("token_mean", 3, guide_loss="shaped")
    torch.testing.assert_close(acc, full, rtol=1e-5, atol=1e-6)


def test_micro_batch_size_is_validated():
    with pytest.raises(ValueError, match="grpo.micro_batch_size"):
        GRPOConfig(micro_batch_size=-1)


class _CountingStrategy:
    """An UpdateStrategy whose 'engine' owns the optimizer, backward and the step (the DeepSpeed seam)."""

    world_size, rank = 1, 0

    def __init__(self):
        self.calls = {"make_optimizer": 0, "backward": 0, "step": 0}

    def make_optimizer(self, params, lr):
        self.calls["make_optimizer"] += 1
        return torch.optim.Adam(params, lr=lr)

    def backward(self, loss):
        self.calls["backward"] += 1
        loss.backward()

    def step(self, optimizer, max_grad_norm):
        self.calls["step"] += 1
        params = [p for g in optimizer.param_groups for p in g["params"]]
        gn = torch.nn.utils.clip_grad_norm_(params, max_grad_norm or float("inf"))
        if torch.isfinite(gn):
            optimizer.step()
        return float(gn)


class _EngineBackend(ScriptedBackend):
    """A backend with its own update strategy (as the Qwen3-VL backend under ZeRO-3)."""

    def __init__(self, **kw):
        super().__init__(**kw)
        self.update_strategy = _CountingStrategy()


def test_an_engine_owned_optimizer_gives_the_same_update():
    """A backend's UpdateStrategy (make_optimizer / backward / step) replaces the trainer's own Adam, backward and
    clip+step, with the same result, and each is called (micro-batches: one backward each, one step per minibatch)."""
    from npo_lab.train import grpo_step

    out = []
    for cls in (ScriptedBackend, _EngineBackend):
        seed_everything(0)
        be = cls(n_prompts=6, seq_len=3, vocab=4, seed=0, init_bias=1.5)  # some rows right: non-zero advantages
        grpo = GRPOConfig(batch_size=12, group_size=4, lr=0.1, micro_batch_size=5, max_grad_norm=0.5)
        state = make_state(be, grpo, seed=0)
        for _ in range(3):
            grpo_step(state, grpo)
        out.append(be)
    plain, engine = out
    torch.testing.assert_close(engine.table.detach(), plain.table.detach())
    start = ScriptedBackend(n_prompts=6, seq_len=3, vocab=4, seed=0, init_bias=1.5).table
    assert not torch.equal(plain.table.detach(), start)
    assert engine.update_strategy.calls == {"make_optimizer": 1, "backward": 3 * 3, "step": 3}


def test_an_engine_step_reporting_a_non_finite_norm_stops_the_run():
    from npo_lab.train import NonFiniteError, grpo_step

    seed_everything(0)
    be = _EngineBackend(n_prompts=6, seq_len=3, vocab=4, seed=0)
    be.update_strategy.step = lambda optimizer, max_grad_norm: float("nan")
    grpo = GRPOConfig(batch_size=12, group_size=4, lr=0.1)
    state = make_state(be, grpo, seed=0)
    with pytest.raises(NonFiniteError, match="step 0: policy/grad_norm is nan"):
        grpo_step(state, grpo)
