"""Each method's guide source: group composition and loss treatment on hand-made batches (ScriptedBackend)."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from helpers import make_batch

from npo_lab.backend import ScriptedBackend
from npo_lab.batch import RolloutBatch
from npo_lab.config import (
    AutoNPOConfig,
    ExGRPOConfig,
    GRPOConfig,
    LuffyConfig,
    MethodConfigs,
    NPOConfig,
    RLEPConfig,
    RunConfig,
)
from npo_lab.core.guidance import append_guides, merge_guides
from npo_lab.methods import GRPO, RLEP, AutoNPOLookahead, ExGRPO, Luffy, make_method
from npo_lab.train import StepOutcome, grpo_step, make_state, train


def sharp(be: ScriptedBackend, prompts=None, margin: float = 20.0) -> dict:
    """A checkpoint that emits the right answer (for ``prompts``, default all) almost surely."""
    table = torch.zeros_like(be.table)
    for p in range(be.num_prompts) if prompts is None else prompts:
        table[p].scatter_(1, be.answers[p].unsqueeze(-1), margin)
    return {"weights": {"table": table}, "rng": be.gen.get_state()}


def hand_batch(correct_per_group: list[int], g: int = 4, t: int = 2) -> RolloutBatch:
    """Groups 0, 1, ... of g rows; the first ``c`` rows of group i are correct."""
    rewards, gids, extras = [], [], []
    for gi, c in enumerate(correct_per_group):
        for j in range(g):
            rewards.append(1.0 if j < c else 0.0)
            gids.append(gi)
            extras.append({"prompt": gi, "tokens": torch.tensor([gi % 4, j % 4])})
    n = len(rewards)
    lp = -torch.arange(1, n * t + 1, dtype=torch.float32).reshape(n, t) / (n * t)  # distinct recorded log-probs
    return make_batch(rewards, gids, t, behavior=lp, extras=extras)


def test_luffy_puts_one_verified_teacher_row_in_every_unsolved_group():
    be = ScriptedBackend(n_prompts=6, seq_len=2, vocab=4, seed=0)
    grpo = GRPOConfig(batch_size=24, group_size=4)
    state = make_state(be, grpo, 0)
    src = Luffy(LuffyConfig(), sharp(be))
    b = be.rollout(list(range(6)), 4)
    plan = src.guides(state, b, grpo)
    assert plan is not None and plan.mode == "replace" and plan.k == 1
    assert plan.loss == {"guide_loss": "shaped", "shaping_gamma": 0.1}  # LUFFY: p / (p + 0.1), no clip
    merged, m = merge_guides(b, plan.rows, plan.targets, plan.k, plan.slot)
    assert merged.size == b.size
    for g in range(6):
        rows = merged.group_ids == g
        solved = bool((b.rewards[b.group_ids == g] > 0.5).all())
        assert int(merged.is_guide[rows].sum()) == (0 if solved else 1)
        assert bool((merged.rewards[rows & merged.is_guide] == 1.0).all())
    assert m["guide/injected_frac"] == pytest.approx(len(plan.targets) / 6)


def test_luffy_gate_below_one_skips_groups_at_the_gate():
    be = ScriptedBackend(n_prompts=4, seq_len=1, vocab=2, seed=1)
    grpo = GRPOConfig(batch_size=8, group_size=2)
    src = Luffy(LuffyConfig(gate=0.5), sharp(be))
    b = hand_batch([0, 1, 2, 0], g=2, t=1)
    plan = src.guides(make_state(be, grpo, 0), b, grpo)
    assert sorted(plan.targets) == [0, 3]  # accuracy 0.5 and 1.0 are not below 0.5


def test_luffy_needs_a_teacher():
    with pytest.raises(ValueError, match="teacher"):
        Luffy(LuffyConfig(), None)


def test_exgrpo_collects_partial_groups_and_retires_solved_prompts():
    src = ExGRPO(ExGRPOConfig(rows_per_prompt=4), group_size=4)
    src.pool[2] = (3, [hand_batch([1], g=1).select([0])])  # prompt 2 was in the pool
    b = hand_batch([0, 2, 4])  # group 0: none correct, 1: half, 2: fully solved
    b = b.replace(old_logprobs=b.behavior_logprobs * 2)  # what the trainer recomputed at this step
    entropy = torch.tensor([[0.5, 0.5]] * 4 + [[0.9, 0.9], [0.1, 0.3]] + [[1.0, 1.0]] * 6)  # (B, T)
    src.after_step(SimpleNamespace(step=1), StepOutcome(b, b, entropy, {"reward/on_policy_mean": 0.5}))
    assert set(src.pool) == {1}  # no correct row for 0; 2 retired once fully solved
    k, rows = src.pool[1]
    assert k == 2 and len(rows) == 2
    # recorded log-probs are the policy's at collection time: shaped_is divides by them later
    assert torch.equal(rows[0].behavior_logprobs, b.old_logprobs[4:5])
    assert src.started  # 0.5 > start_solve_rate 0.35


def test_exgrpo_mixes_only_after_the_start_and_replays_the_lowest_entropy_row():
    src = ExGRPO(ExGRPOConfig(experience_ratio=0.5), group_size=4)
    b = hand_batch([0, 2])
    entropy = torch.tensor([[1.0, 1.0]] * 4 + [[0.9, 0.9], [0.1, 0.3]] + [[1.0, 1.0]] * 2)
    src.after_step(SimpleNamespace(step=1), StepOutcome(b, b, entropy, {"reward/on_policy_mean": 0.2}))
    assert not src.started and 1 in src.pool
    assert src.choose_prompts(None, [10, 11, 12, 13]) == [10, 11, 12, 13]  # not started: no replay
    src.started = True
    prompts = src.choose_prompts(None, [10, 11, 12, 13])
    assert prompts == [1, 10, 11, 12]  # half the batch wanted, the pool has one prompt
    plan = src.guides(None, b, GRPOConfig(batch_size=8, group_size=4))
    assert plan.targets == [1] and plan.k == 1 and plan.mode == "replace"
    assert plan.loss == {"guide_loss": "shaped_is", "shaping_gamma": 0.1}
    assert plan.rows.extras[0]["_entropy"] == pytest.approx(0.2)  # row 5: mean entropy (0.1 + 0.3) / 2


def test_exgrpo_buckets_favour_medium_difficulty():
    src = ExGRPO(ExGRPOConfig(bucket_sigma=1.0), group_size=8)
    assert src._bucket_weight(4) == 1.0
    assert src._bucket_weight(3) == pytest.approx(math.exp(-0.5))
    row = hand_batch([1], g=1).select([0])
    src.pool = {100: (4, [row]), 200: (1, [row])}  # medium vs hard: weight ratio exp(4.5) ~ 90
    picks = [src.sample_prompts(1)[0] for _ in range(2000)]
    assert picks.count(100) / len(picks) > 0.95
    assert sorted(src.sample_prompts(5)) == [100, 200]  # distinct prompts, at most the pool


def test_rlep_pool_holds_only_correct_rows_and_appends_two_per_group():
    be = ScriptedBackend(n_prompts=4, seq_len=2, vocab=4, seed=3)
    grpo = GRPOConfig(batch_size=16, group_size=4)
    state = make_state(be, grpo, 0)
    src = RLEP(RLEPConfig(replay_per_group=2, decode_samples=6), sharp(be, prompts=[0, 1]))
    src.setup(state)
    assert set(src.pool) >= {0, 1}
    assert all(bool(r.rewards.item() == 1.0) for rows in src.pool.values() for r in rows)
    assert src.events[0]["kind"] == "rlep_pool"
    b = be.rollout([0, 1, 2, 3], 4)
    plan = src.guides(state, b, grpo)
    assert plan.mode == "append" and plan.k == 2 and plan.loss == {"guide_loss": "on_policy"}
    merged, _ = append_guides(b, plan.rows, plan.targets, plan.k)
    for g in (0, 1):
        assert int((merged.group_ids == g).sum()) == 6  # G + M
        assert int((merged.is_guide & (merged.group_ids == g)).sum()) == 2
    # a prompt with fewer pool rows than M gets what there is (RLEP pads; we do not duplicate rows)
    assert merged.size == b.size + sum(min(2, len(src.pool.get(g, []))) for g in range(4))


def test_append_guides_never_adds_wrong_rows_and_keeps_groups_together():
    on = hand_batch([1, 0], g=2, t=1)
    guides = RolloutBatch.from_rows(
        behavior_logprobs=torch.zeros(3, 3),
        mask=torch.ones(3, 3),
        rewards=torch.tensor([1.0, 0.0, 1.0]),
        group_ids=torch.tensor([1, 1, 0]),
    )
    merged, m = append_guides(on, guides, [0, 1], k=2)
    assert merged.group_ids.tolist() == [0, 0, 0, 1, 1, 1]
    assert merged.rewards.tolist() == [1.0, 0.0, 1.0, 0.0, 0.0, 1.0]
    assert m["guide/rows"] == 2.0
    with pytest.raises(ValueError, match="k"):
        append_guides(on, guides, [0], k=0)


class Recorder(GRPO):
    """Wraps a source and keeps the batch each step trained on."""

    def __init__(self, inner: GRPO) -> None:
        super().__init__()
        self.inner, self.batches = inner, []

    def choose_prompts(self, state, prompts):
        return self.inner.choose_prompts(state, prompts)

    def guides(self, state, batch, grpo):
        return self.inner.guides(state, batch, grpo)

    def after_step(self, state, outcome):
        self.batches.append(outcome.batch)
        self.inner.after_step(state, outcome)


@pytest.mark.parametrize("method", ["luffy", "rlep"])
def test_grpo_step_trains_on_the_merged_groups(method):
    be = ScriptedBackend(n_prompts=8, seq_len=2, vocab=4, seed=5)
    grpo = GRPOConfig(batch_size=16, group_size=4)
    state = make_state(be, grpo, 0)
    inner = make_method(method, MethodConfigs(), 10, grpo=grpo, teacher=sharp(be), previous=sharp(be))
    inner.setup(state)
    rec = Recorder(inner)
    m = grpo_step(state, grpo, rec)
    b = rec.batches[0]
    assert m["guide/rows"] == float(b.is_guide.sum()) > 0
    assert bool((b.rewards[b.is_guide] == 1.0).all())
    if method == "luffy":
        assert b.size == 16
    else:
        assert b.size == 16 + int(b.is_guide.sum())


def test_autonpo_triggers_scores_candidates_and_guides_with_the_argmax():
    be = ScriptedBackend(n_prompts=16, seq_len=2, vocab=4, seed=2)
    grpo = GRPOConfig(batch_size=32, group_size=4, lr=0.5)
    auto = AutoNPOConfig(
        mode="lookahead", candidates=(1, 3), bootstrap_floor=0.5, bootstrap_until=5, cooldown=4, q_samples=4
    )
    src = AutoNPOLookahead(auto, NPOConfig(), 12, grpo)
    events = []
    res = train(make_state(be, grpo, 0), src, RunConfig(steps=12, eval_every=4), grpo, events=events.append)
    first = next(e for e in events if e["kind"] == "intervention")
    assert first["reason"] == "bootstrap" and first["step"] == 1
    scores = first["candidates"]
    assert set(scores) == {1, 3}
    s = {d: sc["s"] for d, sc in scores.items() if sc["s"] == sc["s"]}
    assert first["delta"] == max(s, key=lambda d: (s[d], -d))
    assert res.intervention_costs[0] == 3  # one look-ahead run of max(candidates) steps
    assert first["scoring_rows"] == len(src.pool.prompts(auto.q_prompts)) * 4 * 2 or first["scoring_rows"] > 0
    assert res.interventions[0] == 1 and all(b - a >= 4 for a, b in zip(res.interventions, res.interventions[1:]))


def test_autonpo_guides_with_the_chosen_checkpoint_after_an_intervention(monkeypatch):
    import npo_lab.train.step as step_mod

    be = ScriptedBackend(n_prompts=16, seq_len=2, vocab=4, seed=2)
    grpo = GRPOConfig(batch_size=32, group_size=4, lr=0.5)
    auto = AutoNPOConfig(
        mode="lookahead", candidates=(1, 3), bootstrap_floor=0.5, bootstrap_until=5, cooldown=4, q_samples=4
    )
    src = AutoNPOLookahead(auto, NPOConfig(), 8, grpo)
    merged_guides = []
    real = step_mod.merge_guides

    def spy(on_policy, guides, targets, *args, **kw):
        merged_guides.append(guides)
        return real(on_policy, guides, targets, *args, **kw)

    monkeypatch.setattr(step_mod, "merge_guides", spy)
    steps_with_guides = []

    class Log:
        def log(self, m, step):
            if m.get("guide/rows", 0) > 0:
                steps_with_guides.append(step)

        def flush(self):
            pass

    res = train(make_state(be, grpo, 0), src, RunConfig(steps=8, eval_every=4), grpo, logger=Log())
    assert res.interventions[0] == 1 and src.chosen
    assert steps_with_guides and all(1 <= s < 1 + auto.cooldown for s in steps_with_guides[:1])
    ev = next(e for e in src.events if e["kind"] == "intervention")
    assert ev["scoring_rows"] == ev["pool"] * auto.q_samples * len(auto.candidates)
    # the first guided steps sample from the chosen near-future checkpoint, not from the current weights
    chosen = src.checkpoint["weights"]["table"] if len(res.interventions) == 1 else None
    if chosen is not None:
        for guides in merged_guides:
            logp_all = torch.log_softmax(chosen[guides.group_ids], -1)  # (B, T, V)
            toks = torch.stack([e["tokens"] for e in guides.extras])  # (B, T)
            expect = logp_all.gather(-1, toks.unsqueeze(-1)).squeeze(-1)  # (B, T)
            assert torch.allclose(guides.behavior_logprobs, expect)
            now = torch.log_softmax(be.table.detach()[guides.group_ids], -1).gather(-1, toks.unsqueeze(-1))
            assert not torch.allclose(now.squeeze(-1), expect)


def test_exgrpo_replayed_rows_reach_the_loss_with_their_recorded_logprobs(monkeypatch):
    import npo_lab.train.step as step_mod

    be = ScriptedBackend(n_prompts=8, seq_len=2, vocab=4, seed=4, init_bias=1.5)
    grpo = GRPOConfig(batch_size=16, group_size=4, lr=0.2)
    src = ExGRPO(ExGRPOConfig(start_solve_rate=0.0), group_size=4)
    calls = []
    real = step_mod.policy_loss

    def spy(logp, old, adv, mask, **kw):
        calls.append((old, kw, {p: r.behavior_logprobs.clone() for p, r in src.replay.items()}))
        return real(logp, old, adv, mask, **kw)

    monkeypatch.setattr(step_mod, "policy_loss", spy)
    state = make_state(be, grpo, 0)
    for _ in range(8):
        grpo_step(state, grpo, src)
    replayed = [(old, kw, rec) for old, kw, rec in calls if kw["is_guide"].any()]
    assert replayed, "ExGRPO never replayed a row"
    for old, kw, recorded in replayed:
        assert kw["guide_loss"] == "shaped_is" and kw["shaping_gamma"] == 0.1
        g = kw["is_guide"]
        assert int(g.sum()) == len(recorded)  # one replayed row per experience prompt
        got = kw["behavior_logprobs"][g]  # (n_replayed, T)
        want = torch.cat(list(recorded.values()))
        assert torch.allclose(got, want[:, : got.shape[1]])  # groups (and so guide rows) in replay order
        # the ratio anchor of shaped_is is the recorded policy, which is no longer the current one
        assert not torch.allclose(got, old[g])


def test_make_method_rejects_unknown_methods_and_missing_inputs():
    grpo = GRPOConfig(batch_size=8, group_size=4)
    with pytest.raises(ValueError, match="unknown method"):
        make_method("ppo", MethodConfigs(), 10, grpo=grpo)
    rlep = make_method("rlep", MethodConfigs(), 10, grpo=grpo)  # checked at setup: a resumed run restores its pool
    with pytest.raises(ValueError, match="previous run"):
        rlep.setup(make_state(ScriptedBackend(), grpo, 0))
    with pytest.raises(ValueError, match="make_method"):
        train(make_state(ScriptedBackend(), grpo, 0), "npo", RunConfig(steps=1), grpo)
