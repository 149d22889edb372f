"""NPO as the paper describes it (issue: NPO and AutoNPO as the paper describes them): the guide cache, the replayed
segment as the guided window, the gate p-hat <= 0.6, interventions at a detected plateau, and the recipe presets."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from helpers import make_batch

from npo_lab.backend import ScriptedBackend
from npo_lab.config import (
    AutoNPOConfig,
    ExGRPOConfig,
    GRPOConfig,
    LuffyConfig,
    MethodConfigs,
    NPOConfig,
    RunConfig,
    method_grpo,
    parse_method,
)
from npo_lab.methods import NPO, failing_groups, make_method
from npo_lab.methods.npo import GuideCache
from npo_lab.metrics import MemoryLogger
from npo_lab.train import lookahead, make_state, train
from npo_lab.train.step import grpo_step
from npo_lab.utils import PromptSampler, seed_everything


def guide_for(be: ScriptedBackend, solvable: list[int], margin: float = 20.0) -> dict:
    """A checkpoint that writes the right answer for ``solvable`` prompts almost surely, a wrong one for the rest."""
    table = torch.zeros_like(be.table)
    for p in range(be.num_prompts):
        target = be.answers[p] if p in solvable else (be.answers[p] + 1) % be.vocab  # (T,)
        table[p].scatter_(1, target.unsqueeze(-1), margin)
    return {"weights": {"table": table}, "rng": be.gen.get_state()}


def test_the_cache_keeps_one_verified_row_per_solvable_prompt_and_none_for_unsolved_ones():
    be = ScriptedBackend(n_prompts=12, seq_len=3, vocab=4, seed=1)
    grpo = GRPOConfig(batch_size=16, group_size=4)
    state = make_state(be, grpo, 0)
    solvable = [0, 2, 5, 7, 11]
    guide = guide_for(be, solvable)
    cache = GuideCache()
    sampled = cache.fill(state, guide, list(range(12)), samples=4, thr=0.5)
    assert sampled == 12 * 4
    assert sorted(cache.rows) == solvable  # the unsolved prompts have no row: nothing wrong is ever cached
    for p, row in cache.rows.items():
        assert row.size == 1 and int(row.group_ids[0]) == p and float(row.rewards[0]) == 1.0
        expect = torch.log_softmax(guide["weights"]["table"][p], -1).gather(-1, row.extras[0]["tokens"][:, None])
        torch.testing.assert_close(row.behavior_logprobs[0], expect.squeeze(-1))  # the guide's behaviour log-probs
    rows, hits = cache.plan_rows([0, 1, 2, 3], make_batch([0.0], [0], t=3))
    assert hits == [0, 2] and rows.group_ids.tolist() == [0, 2]
    assert cache.coverage([0, 1, 2, 3]) == 0.5
    again = GuideCache()
    again.load_state_dict(cache.state_dict())
    assert sorted(again.rows) == solvable and torch.equal(
        again.rows[5].behavior_logprobs, cache.rows[5].behavior_logprobs
    )


def test_the_sampler_peeks_the_prompts_a_segment_will_draw():
    s = PromptSampler(10, seed=3)
    s.next(4)
    ahead = s.peek(5, 4)  # crosses an epoch boundary: the rest of an epoch is skipped, as next() does
    before = s.state_dict()
    assert [s.next(4) for _ in range(5)] == ahead and before != s.state_dict()


def _npo_run(npo: NPOConfig, steps: int = 8, seed: int = 0, logger=None):
    """NPO on a scripted bandit with every sampled prompt recorded (main and look-ahead steps apart)."""
    seed_everything(seed)
    be = ScriptedBackend(n_prompts=40, seq_len=2, vocab=4, seed=seed)
    grpo = GRPOConfig(batch_size=16, group_size=4, lr=0.5)
    state = make_state(be, grpo, seed)
    drawn: list[list[int]] = []
    real = state.sampler.next
    state.sampler.next = lambda k: drawn.append(real(k)) or drawn[-1]  # type: ignore[method-assign]
    method = NPO(npo, steps, grpo)
    res = train(state, method, RunConfig(steps=steps, eval_every=100), grpo, logger=logger)
    return res, method, drawn


def test_the_replayed_segment_sees_the_prompts_of_the_look_ahead_and_the_cache_holds_their_answers():
    npo = NPOConfig(delta=3, interventions=(0, 4), guide_samples=4)
    res, method, drawn = _npo_run(npo, steps=8)
    # each intervention: 3 look-ahead draws, then the replay draws the same 3 prompt sets
    assert res.interventions == [0, 4] and res.intervention_costs == [3, 3]
    assert drawn[0:3] == drawn[3:6]  # intervention at 0: look ahead 0..2, replay 0..2
    assert drawn[7:10] == drawn[10:13]  # step 3 was unguided (drawn[6]); intervention at 4: look ahead, replay
    segment = {p for step in drawn[10:13] for p in step}
    assert set(method.cache.rows) <= segment and method.start == 4 and method.until == 7


def test_guidance_covers_the_replayed_segment_or_until_the_next_intervention():
    log = MemoryLogger()
    _npo_run(NPOConfig(delta=2, interventions=(0, 6), guide_samples=4), steps=10, logger=log)
    guided = [s for s, m in log.rows if m.get("npo/guided") == 1.0]
    assert guided == [1, 2, 7, 8]  # steps 0-1 and 6-7 (a step's metrics are logged at its number + 1)
    log = MemoryLogger()
    _npo_run(NPOConfig(delta=2, interventions=(0, 6), guide_samples=4, window="until_next"), steps=10, logger=log)
    assert [s for s, m in log.rows if m.get("npo/guided") == 1.0] == list(range(1, 11))
    assert all("guide/cache_coverage" in m for s, m in log.rows if m.get("npo/guided") == 1.0)


def test_online_guides_sample_every_step_from_the_checkpoint():
    log = MemoryLogger()
    npo = NPOConfig(delta=2, interventions=(0,), guide_samples=4, guide_source="online", window="until_next")
    res, method, _ = _npo_run(npo, steps=5, logger=log)
    assert len(method.cache) == 0 and not any("guide/cache_size" in m for _, m in log.rows)
    assert sum(m.get("npo/guided", 0.0) for _, m in log.rows) == 5


def test_the_gate_is_at_most_the_threshold_or_strictly_below():
    # G = 5: a group with 3 of 5 right has accuracy exactly 0.6
    b = make_batch([1, 1, 1, 0, 0] + [1, 1, 1, 1, 0] + [0] * 5, [0] * 5 + [1] * 5 + [2] * 5, t=2)
    assert failing_groups(b, 0.6, 0.5, "le")[1] == [0, 2]
    assert failing_groups(b, 0.6, 0.5, "lt")[1] == [2]


def test_npo_can_intervene_at_a_plateau_it_detects():
    """npo.when=plateau: the early bootstrap at step 0, then an intervention once the smoothed reward is flat."""
    auto = AutoNPOConfig(window=4, smoothing=1.0, stagnation_slope=1e-3, cooldown=5)
    npo = NPOConfig(delta=2, interventions=(0, 1), guide_samples=2, when="plateau")
    seed_everything(0)
    be = ScriptedBackend(n_prompts=40, seq_len=2, vocab=4, seed=0)
    grpo = GRPOConfig(batch_size=16, group_size=4, lr=1e-9)  # no learning: the reward is flat from the start
    method = NPO(npo, 20, grpo, auto)
    res = train(make_state(be, grpo, 0), method, RunConfig(steps=20, eval_every=100), grpo)
    kinds = [(e["kind"], e["step"]) for e in res.events]
    assert res.interventions[0] == 0 and len(res.interventions) == 2  # at most len(npo.interventions)
    assert ("plateau", res.interventions[1]) in kinds and res.interventions[1] >= auto.window
    with pytest.raises(ValueError, match="npo.every"):
        NPOConfig(when="plateau", every=10)


@pytest.mark.parametrize("interventions,want", [((0,), [0]), ((), [])])
def test_npo_at_a_plateau_never_exceeds_its_interventions(interventions, want):
    """when=plateau with no intervention after step 0 listed: the flat reward must not trigger any (the controller
    reads max_interventions=0 as no cap, so NPO builds no detector then)."""
    auto = AutoNPOConfig(window=4, smoothing=1.0, stagnation_slope=1e-3, cooldown=5)
    npo = NPOConfig(delta=2, interventions=interventions, guide_samples=2, when="plateau")
    seed_everything(0)
    be = ScriptedBackend(n_prompts=40, seq_len=2, vocab=4, seed=0)
    grpo = GRPOConfig(batch_size=16, group_size=4, lr=1e-9)  # the reward is flat: a detector would fire
    res = train(make_state(be, grpo, 0), NPO(npo, 30, grpo, auto), RunConfig(steps=30, eval_every=100), grpo)
    assert res.interventions == want


def test_an_npo_checkpoint_of_the_earlier_reading_is_refused_with_a_reason():
    method = NPO(NPOConfig(), 10, GRPOConfig())
    with pytest.raises(ValueError, match="before NPO cached its guides"):
        method.load_state_dict({"events": [], "checkpoint": None, "until": 5})


def test_the_paper_recipes_change_the_grpo_step_of_their_method_only():
    grpo = GRPOConfig()
    _, cfgs = parse_method("luffy:recipe=paper", MethodConfigs())
    g = method_grpo("luffy", cfgs, grpo)
    assert (g.advantage, g.aggregation, g.entropy_coef, g.kl_coef) == ("dr_grpo", "sum_norm", 0.001, 0.0)
    assert method_grpo("npo", cfgs, grpo) is grpo and method_grpo("luffy", MethodConfigs(), grpo) is grpo
    g = method_grpo("exgrpo", MethodConfigs(exgrpo=ExGRPOConfig(recipe="paper")), grpo)
    assert g.advantage == "dr_grpo" and g.lr == grpo.lr and g.batch_size == grpo.batch_size
    with pytest.raises(ValueError, match="luffy.recipe"):
        LuffyConfig(recipe="verl")  # type: ignore[arg-type]


def test_a_look_ahead_and_its_cache_cost_what_the_metrics_say():
    log = MemoryLogger()
    res, method, _ = _npo_run(NPOConfig(delta=3, interventions=(0,), guide_samples=4), steps=4, logger=log)
    first = next(m for _, m in log.rows if "npo/intervention" in m)
    assert first["npo/lookahead_steps"] == 3 and first["npo/cache_rollouts"] == 3 * 4 * 4  # 3 steps x 4 prompts x 4
    assert first["npo/cache_size"] == len(method.cache)


def test_make_method_builds_npo_with_the_grpo_step_it_guides():
    grpo = GRPOConfig(batch_size=24, group_size=4, correct_threshold=0.3)
    npo = make_method("npo", MethodConfigs(npo=NPOConfig(delta=2)), 10, grpo=grpo)
    assert isinstance(npo, NPO) and npo.prompts_per_step == 6 and npo.thr == 0.3
    st = make_state(ScriptedBackend(n_prompts=30), grpo, 0)
    la = lookahead(st, 2, lambda: grpo_step(st, grpo))
    npo.use_lookahead(st, la)
    assert npo.until == 2 and dataclasses.replace(npo.cfg) == npo.cfg
