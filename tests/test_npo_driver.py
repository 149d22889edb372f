"""Look-ahead and rollback: after restore, weights, optimizer, every RNG and the data cursor are bit-identical."""

import dataclasses
import random

import numpy as np
import pytest
import torch

from npo_lab.backend import ScriptedBackend
from npo_lab.config import GRPOConfig, MethodConfigs, NPOConfig, RunConfig
from npo_lab.methods import NPO
from npo_lab.train import LookaheadRequest, grpo_step, lookahead, make_state, train
from npo_lab.utils import seed_everything


def fingerprint(state):
    """Everything a rollback must restore, plus the next draw of every RNG stream (drawn on copies)."""
    be = state.backend
    params = [p.detach().clone() for p in be.parameters()]
    opt = state.optimizer.state_dict()
    opt_tensors = [v.clone() for s in opt["state"].values() for v in s.values() if torch.is_tensor(v)]
    torch_state, py_state, np_state = torch.get_rng_state(), random.getstate(), np.random.get_state()
    draws = (torch.rand(3).tolist(), random.random(), float(np.random.rand()))
    torch.set_rng_state(torch_state)
    random.setstate(py_state)
    np.random.set_state(np_state)
    gen_state = be.gen.get_state()
    backend_draw = torch.rand(3, generator=be.gen).tolist()
    be.gen.set_state(gen_state)
    return params, opt_tensors, draws, backend_draw, state.sampler.state_dict(), state.step


def assert_same(a, b):
    pa, oa, da, ba, sa, ta = a
    pb, ob, db, bb, sb, tb = b
    assert all(torch.equal(x, y) for x, y in zip(pa, pb))
    assert len(oa) == len(ob) and all(torch.equal(x, y) for x, y in zip(oa, ob))
    assert da == db and ba == bb and sa == sb and ta == tb


def _scripted_state():
    seed_everything(0)
    be = ScriptedBackend(n_prompts=8, seq_len=3, vocab=4, seed=0)
    g = GRPOConfig(batch_size=32, group_size=4, lr=0.1, minibatch_size=16, epochs=2)  # randperm uses the torch RNG
    st = make_state(be, g, seed=0)
    for _ in range(3):  # non-empty optimizer state before the snapshot
        grpo_step(st, g)
    return st, g


@pytest.mark.parametrize("backend", ["scripted", "arith"])
def test_rollback_is_bit_exact(backend, tiny_arith):
    if backend == "scripted":
        st, g = _scripted_state()
    else:
        seed_everything(0)
        be = tiny_arith(seed=0)
        # an untrained model earns no reward; the entropy bonus makes every step move the weights anyway
        g = GRPOConfig(batch_size=16, group_size=4, lr=1e-3, entropy_coef=0.01)
        st = make_state(be, g, seed=0)
        grpo_step(st, g)
    before = fingerprint(st)
    res = lookahead(st, 4, lambda: grpo_step(st, g))
    after = fingerprint(st)
    assert_same(before, after)
    # the near-future checkpoint really is 4 steps ahead: its weights differ from the restored ones
    future = res.checkpoint["weights"]
    current = {"table": st.backend.table} if backend == "scripted" else st.backend.model.state_dict()
    assert any(not torch.equal(future[k], current[k]) for k in future)
    assert res.steps == 4 and len(res.metrics) == 4


def test_rollback_without_optimizer_restore_keeps_the_advanced_optimizer():
    st, g = _scripted_state()
    before = fingerprint(st)
    lookahead(st, 2, lambda: grpo_step(st, g), restore_optimizer=False)
    after = fingerprint(st)
    assert all(torch.equal(x, y) for x, y in zip(before[0], after[0]))  # weights restored
    assert any(not torch.equal(x, y) for x, y in zip(before[1], after[1]))  # optimizer moved on


def test_after_rollback_the_run_replays_the_same_step():
    st, g = _scripted_state()
    res = lookahead(st, 1, lambda: grpo_step(st, g))
    replay = grpo_step(st, g)  # same data, same RNG -> the same step as the look-ahead's first
    assert res.metrics[0]["reward/on_policy_mean"] == replay["reward/on_policy_mean"]
    assert res.metrics[0]["loss/total"] == replay["loss/total"]


def test_schedule_and_guidance_window():
    cfg = NPOConfig(delta=3, interventions=(0, 10), every=0, guidance_window=4)
    assert cfg.intervention_steps(30) == [0, 10]
    assert NPOConfig(interventions=(0,), every=10).intervention_steps(35) == [0, 10, 20, 30]
    st, g = _scripted_state()
    st.step = 0
    src = NPO(dataclasses.replace(cfg, window="until_next"), 30, g)
    ask = src.wants_lookahead(st)
    assert ask == LookaheadRequest((3,), True)
    la = lookahead(st, ask.deltas, lambda: grpo_step(st, g))
    m = src.use_lookahead(st, la)
    assert m["npo/intervention"] == 1.0 and st.step == 0 and la.steps == 3
    assert src.policy_for(3) is not None and src.policy_for(4) is None
    st.step = 5
    assert src.wants_lookahead(st) is None


def test_npo_training_injects_guides_only_where_gated(monkeypatch):
    import npo_lab.train.step as step_mod
    from npo_lab.core.guidance import group_accuracy, merge_guides

    calls = []

    def spy(on_policy, guides, gated, *args, **kw):
        merged, m = merge_guides(on_policy, guides, gated, *args, **kw)
        acc = group_accuracy(on_policy.rewards, on_policy.group_ids)
        calls.append((acc, list(gated), merged))
        return merged, m

    monkeypatch.setattr(step_mod, "merge_guides", spy)
    seed_everything(0)
    be = ScriptedBackend(n_prompts=16, seq_len=3, vocab=4, seed=0)
    g = GRPOConfig(batch_size=64, group_size=8, lr=0.1)
    npo = NPOConfig(delta=5, interventions=(0, 6), gate=0.6)
    res = train(make_state(be, g, 0), NPO(npo, 12, g), RunConfig(steps=12, eval_every=4), g)
    assert res.interventions == [0, 6] and res.lookahead_steps == 10
    assert calls, "NPO never reached the merge"
    injected = 0
    for acc, gated, merged in calls:
        assert gated and all(acc[p] < npo.gate for p in gated)  # only groups below the gate are offered
        assert all(acc[p] >= npo.gate for p in acc if p not in gated)  # and every such group is
        for p in acc:
            rows = merged.group_ids == p
            n_guide = int(merged.is_guide[rows].sum())
            assert n_guide <= npo.guide_slots and (n_guide == 0 or p in gated)
            assert (merged.rewards[rows & merged.is_guide] == 1).all()  # only verified-correct guides
            injected += n_guide
    assert injected > 0, "NPO never injected a guide row"


def test_method_specs_override_npo_fields_per_method():
    from npo_lab.config import parse_method

    name, cfgs = parse_method("npo:delta=3:interventions=0+50:restore_optimizer=false", NPOConfig())
    cfg = cfgs.npo
    assert name == "npo" and cfg.delta == 3 and cfg.interventions == (0, 50) and cfg.restore_optimizer is False
    assert parse_method("grpo", NPOConfig()) == ("grpo", MethodConfigs())
    # autonpo reads its own section and npo's; other methods their own section only
    name, cfgs = parse_method("autonpo:cooldown=9:gate=0.5:candidates=5+10", MethodConfigs())
    assert (cfgs.autonpo.cooldown, cfgs.npo.gate, cfgs.autonpo.candidates) == (9, 0.5, (5, 10))
    assert parse_method("luffy:teacher_samples=2", MethodConfigs())[1].luffy.teacher_samples == 2
    assert parse_method("rlep:replay_per_group=1", MethodConfigs())[1].rlep.replay_per_group == 1
    assert parse_method("exgrpo:selection=random", MethodConfigs())[1].exgrpo.selection == "random"
    for bad, msg in [
        ("luffy:delta=3", "not field=value of luffy"),
        ("autonpo:delta=3", "not field=value of autonpo or npo"),  # AutoNPO chooses Delta itself
        ("autonpo:cooldwn=3", "did you mean 'cooldown'"),
        ("exgrpo:experience_ratio=1.5", "exgrpo.experience_ratio must be in"),
        ("npo:delat=3", "did you mean 'delta'"),
        ("ppo", "unknown method"),
        ("npo:gate=high", "npo.gate cannot be"),
        ("npo:delta=0", "npo.delta must be >= 1"),
        ("npo:slot=first", "npo.slot must be one of 'last', 'incorrect_first'"),
        ("npo:guide_loss=luffy", "npo.guide_loss must be one of"),
        ("grpo:delta=2", "no overrides"),
    ]:
        with pytest.raises(ValueError, match=msg):
            parse_method(bad, NPOConfig())
    from npo_lab.config import check_compatible

    with pytest.raises(ValueError, match="exgrpo.experience_ratio"):
        check_compatible(GRPOConfig(batch_size=8, group_size=8), MethodConfigs(), "exgrpo")


@pytest.mark.parametrize("field", ["advantage", "aggregation", "kl_estimator"])
def test_grpo_choice_fields_are_validated(field):
    with pytest.raises(ValueError, match=f"grpo.{field} must be one of"):
        GRPOConfig(**{field: "nonsense"})
