"""AutoNPO as the paper describes it: the present teaches its past (retrospective AutoNPO).

The warning needs both signals; Q-hat is pi_t's pass rate on the right pool slice; V-hat comes from the per-token KL
between pi_t and the snapshot; the rollback restores the snapshot bit-exactly, the replay meets the same prompts, only
mistake-pool prompts are guided, the discarded steps are counted as extra steps and the logs keep the trajectory
the run kept."""

from __future__ import annotations

import math

import pytest
import torch
from helpers import make_batch

from npo_lab.backend import ScriptedBackend
from npo_lab.config import AutoNPOConfig, GRPOConfig, MethodConfigs, NPOConfig, RunConfig
from npo_lab.core.signal import token_kl, v_hat
from npo_lab.methods import GRPO, AutoNPO, AutoNPOController, make_method
from npo_lab.methods.controller import MistakePool
from npo_lab.metrics import MemoryLogger
from npo_lab.train import make_state, train
from npo_lab.utils import capture_rng, seed_everything

LENIENT = dict(window=4, smoothing=1.0, stagnation_slope=1.0, entropy_slope=1.0, cooldown=50, snapshot_every=2,
               candidates=(2, 4), max_interventions=1, q_samples=4)  # fmt: skip
"""Thresholds that fire as soon as a window of observations is full (the tests steer when, not the task)."""


def controller(**kw) -> AutoNPOController:
    return AutoNPOController(AutoNPOConfig(window=5, cooldown=3, smoothing=1.0, **kw))


@pytest.mark.parametrize(
    "reward,entropy,fires",
    [
        (lambda t: 0.5, lambda t: 1.0 - 0.01 * t, True),  # stagnant reward, falling entropy: the warning
        (lambda t: 0.5, lambda t: 1.0 + 0.01 * t, False),  # stagnant reward, entropy not falling
        (lambda t: 0.1 * t, lambda t: 1.0 - 0.01 * t, False),  # falling entropy, reward still rising
        (lambda t: 0.1 * t, lambda t: 1.0 + 0.01 * t, False),
    ],
)
def test_the_warning_needs_both_signals(reward, entropy, fires):
    c = controller()
    for t in range(10):
        c.observe(t, reward(t), entropy(t))
    assert (c.warning(10) == "plateau") is fires


def test_the_warning_waits_for_a_full_window_a_cooldown_and_the_cap():
    c = controller(max_interventions=1)
    for t in range(4):
        c.observe(t, 0.5, 1.0 - 0.01 * t)
    assert c.warning(4) is None  # 4 observations < window 5
    c.observe(4, 0.5, 0.95)
    assert c.warning(5) == "plateau"
    c.record(5)
    for t in range(5, 20):
        c.observe(t, 0.5, 0.9 - 0.01 * t)
    assert c.warning(20) is None  # the cap: one intervention


def test_the_pool_slices_are_the_failures_around_t_minus_delta():
    pool = MistakePool(capacity=100)
    for step, prompts in [(1, [10]), (3, [11]), (6, [12]), (8, [13]), (9, [14])]:
        pool.update({p: 0.0 for p in prompts}, gate=0.6, step=step)
    auto = AutoNPO(AutoNPOConfig(candidates=(2, 4, 8), snapshot_every=2), NPOConfig(), 20, GRPOConfig())
    auto.pool = pool
    assert auto.slices(10, [2, 4, 8]) == {2: [14, 13], 4: [12], 8: [11]}  # bands [8,10), [6,8), [2,6)
    auto.auto = AutoNPOConfig(candidates=(2, 4, 8), snapshot_every=2, slice="since")
    assert auto.slices(10, [2, 4, 8]) == {2: [14, 13], 4: [14, 13, 12], 8: [14, 13, 12, 11]}
    pool.forget_from(8)
    assert pool.prompts() == [12, 11, 10]


def test_q_hat_is_the_pass_rate_on_the_slice_and_v_hat_the_kl_to_the_snapshot():
    """On hand-made probe rows: Q-hat counts only the slice's prompts; V-hat = exp(beta * KL(pi_t || pi_past)) on
    pi_t's correct rows, the past policy's log-probs read from the snapshot."""
    be = ScriptedBackend(n_prompts=6, seq_len=2, vocab=4, seed=0)
    auto = AutoNPO(AutoNPOConfig(snapshot_every=2, candidates=(2,), kl_beta=2.0), NPOConfig(), 10, GRPOConfig())
    state = make_state(be, GRPOConfig(batch_size=8, group_size=4), 0)
    past_table = torch.randn(6, 2, 4)
    past = {"weights": {"table": past_table}, "rng": be.gen.get_state()}
    tokens = [torch.tensor([1, 2]), torch.tensor([0, 3]), torch.tensor([2, 2]), torch.tensor([3, 1])]
    logp_t = torch.log(torch.tensor([[0.5, 0.25], [0.4, 0.3], [0.9, 0.8], [0.1, 0.2]]))  # pi_t's, recorded
    rows = make_batch(
        [1.0, 0.0, 1.0, 1.0], [1, 1, 2, 4], t=2, behavior=logp_t,
        extras=[{"prompt": p, "tokens": tok} for p, tok in zip([1, 1, 2, 4], tokens)],
    )  # fmt: skip
    sc = auto._score(state, rows, [1, 2, 3], past)  # prompt 4 is probed but outside the slice; 3 had no probe row
    assert sc["q"] == pytest.approx(2 / 3) and sc["correct_rows"] == 2.0
    sel = torch.tensor([0, 2])  # the slice's correct rows
    lp_past = torch.log_softmax(past_table, -1)[torch.tensor([1, 2])]  # (2, T, V)
    lp_past = lp_past.gather(-1, torch.stack([tokens[0], tokens[2]]).unsqueeze(-1)).squeeze(-1)  # (2, T)
    log_r = lp_past - logp_t[sel]  # k3 of KL(pi_t || pi_past) on pi_t's samples, by hand
    kl = (torch.exp(log_r) - 1 - log_r).mean().item()
    assert sc["v"] == pytest.approx(math.exp(2.0 * kl)) and sc["s"] == pytest.approx(sc["q"] / sc["v"])
    assert token_kl(lp_past, logp_t[sel], torch.ones(2, 2)) == pytest.approx(kl)
    assert v_hat(logp_t, logp_t, torch.ones(4, 2), estimator="kl_exp") == 1.0  # the same policy costs nothing


class Recorder(AutoNPO):
    """AutoNPO that keeps what the tests look at: the prompts of every main step, the state right after a rollback,
    the groups guided."""

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.prompts_at: list[tuple[int, list[int]]] = []
        self.after_rollback: dict = {}
        self.guided: list[list[int]] = []

    def choose_prompts(self, state, prompts):
        self.prompts_at.append((state.step, list(prompts)))
        return prompts

    def use_rollback(self, state, request):
        be = state.backend
        self.after_rollback = {
            "step": state.step,
            "table": be.table.detach().clone(),
            "gen": be.gen.get_state(),
            "opt": [v.clone() for s in state.optimizer.state_dict()["state"].values() for v in s.values()],
            "rng": capture_rng(),
            "sampler": state.sampler.state_dict(),
        }
        return super().use_rollback(state, request)

    def guides(self, state, batch, grpo):
        plan = super().guides(state, batch, grpo)
        if plan is not None:
            self.guided.append(plan.rows.group_ids.tolist())
        return plan


def _run(steps: int = 16, **auto_kw):
    seed_everything(0)
    be = ScriptedBackend(n_prompts=64, seq_len=2, vocab=4, seed=0)
    grpo = GRPOConfig(batch_size=32, group_size=4, lr=0.3)
    auto = AutoNPOConfig(**{**LENIENT, **auto_kw})
    method = Recorder(auto, NPOConfig(), steps, grpo)
    log = MemoryLogger()
    res = train(make_state(be, grpo, 0), method, RunConfig(steps=steps, eval_every=2), grpo, logger=log)
    return res, method, log


def test_a_rollback_restores_the_snapshot_bit_exactly():
    res, method, _ = _run()
    (s,) = res.interventions
    t = next(e for e in res.events if e["kind"] == "intervention")["step"]
    assert res.intervention_costs == [t - s] and t - s in (2, 4)
    # the state at step s of the first pass is plain GRPO's state at s (no guide row before the first trigger)
    seed_everything(0)
    be = ScriptedBackend(n_prompts=64, seq_len=2, vocab=4, seed=0)
    grpo = GRPOConfig(batch_size=32, group_size=4, lr=0.3)
    state = make_state(be, grpo, 0)
    if s:
        train(state, GRPO(), RunConfig(steps=s, eval_every=2), grpo)
    got = method.after_rollback
    assert got["step"] == state.step == s
    assert torch.equal(got["table"], be.table.detach()) and torch.equal(got["gen"], be.gen.get_state())
    want_opt = [v for st in state.optimizer.state_dict()["state"].values() for v in st.values()]
    assert len(got["opt"]) == len(want_opt) and all(torch.equal(a, b) for a, b in zip(got["opt"], want_opt))
    assert got["sampler"] == state.sampler.state_dict()
    now = capture_rng()
    assert torch.equal(got["rng"]["torch"], now["torch"]) and got["rng"]["python"] == now["python"]
    assert got["rng"]["numpy"][1] == now["numpy"][1]


def test_the_replay_meets_the_same_prompts_and_guides_only_mistake_pool_prompts():
    res, method, _ = _run()
    (s,) = res.interventions
    ev = next(e for e in res.events if e["kind"] == "intervention")
    t = ev["step"]
    assert t - s == ev["delta"] and res.intervention_costs == [t - s]
    first = {step: p for step, p in method.prompts_at[:t]}  # steps 0 .. t-1 of the first pass
    replay = dict(method.prompts_at[t : t + (t - s)])
    assert sorted(replay) == list(range(s, t)) and all(replay[k] == first[k] for k in replay)
    cached = set(method.cache.rows)
    assert cached, "pi_t solved none of the slice: the test needs a cache"
    assert all(set(g) <= cached for g in method.guided)  # only mistake-pool prompts with pi_t's answer
    assert sum(len(g) for g in method.guided) > 0


def test_the_discarded_steps_are_extra_steps_and_the_log_keeps_the_kept_trajectory():
    res, method, log = _run()
    (s,) = res.interventions
    t = next(e for e in res.events if e["kind"] == "intervention")["step"]
    steps = [st for st, m in log.rows if "reward/on_policy_mean" in m]
    assert steps == list(range(1, 17))  # every training step once: the first pass of [s, t) was rewound
    assert [st for st, _ in res.evals] == list(range(0, 17, 2))
    la = [m for _, m in log.rows if "lookahead/reward/on_policy_mean" in m]
    assert len(la) == t - s  # the discarded steps' rewards, on the extra-step counter
    assert res.lookahead_steps == t - s and len(res.train_reward) == 16
    after = next(m for st, m in log.rows if "autonpo/delta" in m)
    assert after["autonpo/delta"] == t - s and after["npo/lookahead_steps"] == t - s


def test_a_logger_that_cannot_rewind_is_refused_before_training():
    class Plain:
        def log(self, metrics, step):
            pass

        def flush(self):
            pass

    grpo = GRPOConfig(batch_size=8, group_size=4)
    method = make_method("autonpo", MethodConfigs(), 4, grpo=grpo)
    with pytest.raises(TypeError, match="mark"):
        train(make_state(ScriptedBackend(), grpo, 0), method, RunConfig(steps=4), grpo, logger=Plain())


def test_candidates_must_be_snapshot_steps_in_retrospective_mode():
    with pytest.raises(ValueError, match="multiples of autonpo.snapshot_every"):
        AutoNPOConfig(candidates=(3, 10), snapshot_every=5)
    assert AutoNPOConfig(candidates=(3, 10), mode="lookahead").candidates == (3, 10)
    assert AutoNPOConfig().v == "kl_exp" and AutoNPOConfig(mode="lookahead").v == "is_variance"


def test_two_rollbacks_to_the_same_step_keep_the_first_ones_extra_steps_in_the_log():
    """The loop refreshes the snapshot's log mark after a rollback: a second rollback to the same step must not
    erase the first one's lookahead/ rows."""
    from npo_lab.train.method import RollbackRequest, SnapshotRing

    class Twice(GRPO):
        snapshots = SnapshotRing(every=2, horizon=4)

        def __init__(self):
            super().__init__()
            self.done: set[int] = set()

        def wants_rollback(self, state, past):
            if state.step in (6, 8) and state.step not in self.done and 4 in past:
                self.done.add(state.step)
                return RollbackRequest(to_step=4)
            return None

    seed_everything(0)
    grpo = GRPOConfig(batch_size=8, group_size=4, lr=0.1)
    log = MemoryLogger()
    res = train(make_state(ScriptedBackend(), grpo, 0), Twice(), RunConfig(steps=10, eval_every=5), grpo, logger=log)
    assert res.interventions == [4, 4] and res.intervention_costs == [2, 4]
    assert len(log.series("lookahead/reward/on_policy_mean")[0]) == 6
    assert log.series("reward/on_policy_mean")[0] == list(range(1, 11))


def test_the_probe_reaches_every_candidate_slice_when_recent_failures_flood_the_pool():
    be = ScriptedBackend(n_prompts=64, seq_len=2, vocab=4, seed=0)
    grpo = GRPOConfig(batch_size=8, group_size=4)
    state = make_state(be, grpo, 0)
    auto = AutoNPO(
        AutoNPOConfig(candidates=(5, 10), snapshot_every=5, q_prompts=8, q_samples=2), NPOConfig(), 40, grpo
    )
    auto.pool.update({p: 0.0 for p in range(40, 60)}, gate=0.6, step=18)  # 20 recent failures (slice of 5)
    auto.pool.update({p: 0.0 for p in range(3)}, gate=0.6, step=12)  # 3 older ones (slice of 10)
    auto.controller.warning = lambda t: "plateau"  # type: ignore[method-assign]
    state.step = 20
    past = {10: be.save(), 15: be.save()}
    auto.wants_rollback(state, past)
    ev = auto.events[-1]
    assert ev["kind"] == "intervention" and ev["probe_prompts"] == 4 + 3  # 8 split over two slices; the older has 3
    assert ev["candidates"][5]["slice"] == 4 and ev["candidates"][10]["slice"] == 3


@pytest.mark.parametrize("bias,rolls_back", [(-30.0, False), (30.0, True)])
def test_no_rollback_when_pi_t_has_nothing_to_teach(bias, rolls_back):
    """pi_t that solves none of the probed prompts (its answer token has logit -30) has no verified answer for the
    replay, which would then repeat the discarded steps exactly: the warning is skipped, not counted against the cap,
    and the cache stays empty. The same warning with a pi_t that solves them (+30) rolls back."""
    be = ScriptedBackend(n_prompts=64, seq_len=2, vocab=4, seed=0, init_bias=bias)
    grpo = GRPOConfig(batch_size=8, group_size=4)
    state = make_state(be, grpo, 0)
    auto = AutoNPO(
        AutoNPOConfig(candidates=(5, 10), snapshot_every=5, q_prompts=8, q_samples=2), NPOConfig(), 40, grpo
    )
    auto.pool.update({p: 0.0 for p in range(40, 44)}, gate=0.6, step=17)
    auto.pool.update({p: 0.0 for p in range(3)}, gate=0.6, step=12)
    auto.controller.warning = lambda t: "plateau"  # type: ignore[method-assign]
    state.step = 20
    request = auto.wants_rollback(state, {10: be.save(), 15: be.save()})
    ev = auto.events[-1]
    if rolls_back:
        assert request is not None and ev["kind"] == "intervention" and auto.cache.rows
        assert auto.controller.count == 1
    else:
        assert (
            request is None and ev["kind"] == "skipped" and "no verified answer" in ev["why"] and not auto.cache.rows
        )
        assert all(c["q"] == 0.0 for c in ev["candidates"].values())
        assert auto.controller.count == 0  # not counted: the cap is still whole


def test_nested_since_slices_share_the_probe_with_the_older_failures():
    """slice=since: B_10 contains B_5; the longer candidate's share comes from what B_5 does not hold, so a pool
    flooded with recent failures still probes the older ones (as the band slices do)."""
    be = ScriptedBackend(n_prompts=64, seq_len=2, vocab=4, seed=0)
    grpo = GRPOConfig(batch_size=8, group_size=4)
    state = make_state(be, grpo, 0)
    cfg = AutoNPOConfig(candidates=(5, 10), snapshot_every=5, q_prompts=8, q_samples=2, slice="since")
    auto = AutoNPO(cfg, NPOConfig(), 40, grpo)
    auto.pool.update({p: 0.0 for p in range(3)}, gate=0.6, step=12)  # 3 older failures, only in B_10
    auto.pool.update({p: 0.0 for p in range(40, 60)}, gate=0.6, step=18)  # then 20 recent ones, newest first
    auto.controller.warning = lambda t: "plateau"  # type: ignore[method-assign]
    state.step = 20
    auto.wants_rollback(state, {10: be.save(), 15: be.save()})
    ev = auto.events[-1]
    assert ev["probe_prompts"] == 4 + 3
    assert ev["candidates"][5]["slice"] == 4 and ev["candidates"][10]["slice"] == 4 + 3
