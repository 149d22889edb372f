"""The extrapolated future theta_t + alpha (theta_t - theta_{t-k}): its weights by hand, NPO guiding from it at no
look-ahead cost, and ``npo-lab qvs`` measuring it without changing the run."""

from __future__ import annotations

import pytest
import torch
from npo_lab.envs.arithmetic_backend import ArithmeticBackend
from npo_lab.envs.config import TinyLMConfig

from npo_lab.backend import ScriptedBackend
from npo_lab.config import GRPOConfig, NPOConfig, RunConfig
from npo_lab.experiments.qvs import measure_along_run
from npo_lab.methods import NPO
from npo_lab.metrics import MemoryLogger
from npo_lab.tasks.arithmetic import ArithmeticConfig
from npo_lab.train import make_state, train
from npo_lab.train.extrapolate import extrapolated_checkpoint, parameter_copy
from npo_lab.utils import seed_everything


def test_the_extrapolated_weights_by_hand_and_the_backend_left_as_it_was():
    be = ScriptedBackend(n_prompts=2, seq_len=1, vocab=2, seed=0)
    with torch.no_grad():
        be.table.copy_(torch.tensor([[[1.0, 2.0]], [[0.0, -1.0]]]))
    past = [torch.tensor([[[0.5, 2.0]], [[1.0, -1.0]]])]
    rng = be.gen.get_state()
    ck, norm = extrapolated_checkpoint(be, past, alpha=2.0)
    # theta + 2 (theta - past): 1 + 2 * 0.5 = 2, 2 + 0 = 2, 0 + 2 * (-1) = -2, -1 + 0 = -1
    assert torch.equal(ck["weights"]["table"], torch.tensor([[[2.0, 2.0]], [[-2.0, -1.0]]]))
    assert norm == pytest.approx(2.0 * (0.5**2 + 1.0**2) ** 0.5)
    assert torch.equal(be.table.detach(), torch.tensor([[[1.0, 2.0]], [[0.0, -1.0]]]))  # theta_t untouched
    assert torch.equal(be.gen.get_state(), rng)
    ck0, _ = extrapolated_checkpoint(be, past, alpha=0.0)
    assert torch.equal(ck0["weights"]["table"], be.table.detach())  # alpha = 0 is the present


def test_every_parameter_of_a_transformer_is_extrapolated():
    task = ArithmeticConfig(digits=2, n_train=64, n_eval=16)
    be = ArithmeticBackend(task, TinyLMConfig(d_model=16, n_head=2, warm_steps=0), seed=0)
    past = parameter_copy(be)
    with torch.no_grad():
        for p in be.parameters():
            p.add_(0.1)
    names = [n for n, _ in be.model.named_parameters()]
    ck, _ = extrapolated_checkpoint(be, past, alpha=3.0)
    for name, p, q in zip(names, be.parameters(), past):
        assert torch.allclose(ck["weights"][name], p.detach() + 3.0 * (p.detach() - q)), name


def test_a_copy_of_another_model_is_refused():
    be = ScriptedBackend(n_prompts=2, seq_len=1, vocab=2)
    with pytest.raises(ValueError, match="do not match"):
        extrapolated_checkpoint(be, [torch.zeros(3)], 1.0)
    with pytest.raises(ValueError, match="finite"):
        extrapolated_checkpoint(be, parameter_copy(be), float("nan"))


def _npo_run(npo: NPOConfig, steps: int = 12):
    seed_everything(0)
    be = ScriptedBackend(n_prompts=12, seq_len=2, vocab=4, seed=0)
    grpo = GRPOConfig(batch_size=24, group_size=4, lr=0.3)
    state = make_state(be, grpo, 0)
    method = NPO(npo, steps, grpo)
    res = train(state, method, RunConfig(steps=steps, eval_every=4), grpo, logger=MemoryLogger())
    return res, method


def test_npo_guides_from_the_extrapolated_future_at_no_extra_step():
    cfg = NPOConfig(future="extrapolate", extrapolate_k=3, delta=4, interventions=(0, 8))
    assert cfg.intervention_steps(12) == [3, 8] and cfg.alpha == pytest.approx(4 / 3)
    res, method = _npo_run(cfg)
    ev = [e for e in method.events if e["kind"] == "intervention"]
    assert [e["step"] for e in ev] == [3, 8]
    assert all(e["extrapolate_norm"] > 0 and e["window"] == [e["step"], e["step"] + 4] for e in ev)
    assert res.lookahead_steps == 0  # no step trained ahead


def test_extrapolate_with_a_plateau_schedule_is_refused():
    with pytest.raises(ValueError, match="npo.future"):
        NPOConfig(future="extrapolate", when="plateau")


def test_qvs_measures_the_extrapolated_future_and_the_run_stays_the_same():
    def run(at, k):
        seed_everything(0)
        be = ScriptedBackend(n_prompts=12, seq_len=2, vocab=4, seed=0)
        grpo = GRPOConfig(batch_size=24, group_size=4, lr=0.3)
        state = make_state(be, grpo, 0)
        recs = measure_along_run(state, grpo, 8, at, (1, 3), list(range(12)), k=4, extrapolate_k=k)
        return recs, be.table.detach().clone()

    _, w0 = run([], 0)
    recs, w1 = run([2, 6], 2)
    assert torch.equal(w0, w1)
    xs = {(r["step"], r["source"]) for r in recs if r["kind"] == "extrapolated"}
    assert xs == {(2, "x+1"), (2, "x+3"), (6, "x+1"), (6, "x+3")}
    assert all(r["delta"] in (1, 3) for r in recs if r["kind"] == "extrapolated")
