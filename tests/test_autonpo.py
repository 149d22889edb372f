"""AutoNPO's controller and mistake pool on synthetic curves, and the choice of Delta."""

from __future__ import annotations

import math

import pytest

from npo_lab.config import AutoNPOConfig
from npo_lab.core.signal import choose_delta
from npo_lab.methods.autonpo import AutoNPOController, MistakePool, slope


def drive(ctrl: AutoNPOController, rewards, entropies=None, record=True) -> list[tuple[int, str]]:
    """Feed a curve step by step, asking for a trigger before each step (as train() does)."""
    fired = []
    for t, r in enumerate(rewards):
        reason = ctrl.trigger(t)
        if reason is not None:
            fired.append((t, reason))
            if record:
                ctrl.record(t)
        ctrl.observe(t, r, None if entropies is None else entropies[t])
    return fired


def quiet_cfg(**kw) -> AutoNPOConfig:
    base = dict(window=20, cooldown=30, bootstrap_until=0, entropy_fraction=0.0)
    base.update(kw)
    return AutoNPOConfig(**base)


def test_slope_matches_least_squares():
    assert slope([0.0, 1.0, 2.0, 3.0]) == pytest.approx(1.0)
    assert slope([3.0, 1.0]) == pytest.approx(-2.0)
    assert slope([0.2] * 10) == 0.0


def test_fires_on_a_flat_reward_curve():
    ctrl = AutoNPOController(quiet_cfg())
    fired = drive(ctrl, [0.4 + 0.01 * ((t * 7919) % 5 - 2) for t in range(60)])
    assert fired and fired[0][1] == "stagnation"
    assert 20 <= fired[0][0] <= 30  # soon after a full window has been observed (the EMA starts at 0.39)


def test_stays_quiet_on_a_rising_curve():
    ctrl = AutoNPOController(quiet_cfg())
    rising = [0.1 + 0.004 * t for t in range(200)]  # 0.004 per step, well above the 5e-4 threshold
    assert drive(ctrl, rising) == []


def test_fires_on_collapsing_entropy_and_not_on_steady_entropy():
    cfg = quiet_cfg(entropy_fraction=0.5, stagnation_slope=-1.0)  # stagnation can never fire
    rising = [0.1 + 0.004 * t for t in range(120)]
    collapse = [1.0 if t < 20 else max(0.1, 1.0 - 0.02 * (t - 20)) for t in range(120)]
    fired = drive(AutoNPOController(cfg), rising, collapse)
    assert fired and fired[0][1] == "entropy_collapse"
    # the EMA of entropy crosses half its early value (1.0) some steps after the raw curve does (t = 45)
    assert 45 <= fired[0][0] <= 70
    assert drive(AutoNPOController(cfg), rising, [1.0] * 120) == []


def test_absolute_entropy_floor():
    cfg = quiet_cfg(entropy_floor=0.3, stagnation_slope=-1.0)
    fired = drive(AutoNPOController(cfg), [0.1 + 0.004 * t for t in range(80)], [0.2] * 80)
    assert fired and fired[0] == (20, "entropy_collapse")


def test_cooldown_is_respected_and_the_window_restarts():
    cfg = quiet_cfg(cooldown=30, window=10, max_interventions=0)
    fired = drive(AutoNPOController(cfg), [0.5] * 200)
    steps = [t for t, _ in fired]
    assert len(steps) >= 3
    assert all(b - a >= 30 for a, b in zip(steps, steps[1:]))


def test_max_interventions_caps_the_run():
    cfg = quiet_cfg(cooldown=5, window=5, max_interventions=2)
    assert len(drive(AutoNPOController(cfg), [0.5] * 200)) == 2


def test_bootstrap_fires_early_only():
    cfg = AutoNPOConfig(window=20, cooldown=10, bootstrap_floor=0.2, bootstrap_until=15, entropy_fraction=0.0)
    fired = drive(AutoNPOController(cfg), [0.05 + 0.01 * t for t in range(40)])
    assert fired[0] == (1, "bootstrap")  # the first step with an observation
    assert all(reason != "bootstrap" or t < 15 for t, reason in fired)
    # a strong start never bootstraps
    assert drive(AutoNPOController(cfg), [0.5 + 0.01 * t for t in range(40)]) == []


def test_controller_state_roundtrip():
    cfg = quiet_cfg()
    a = AutoNPOController(cfg)
    drive(a, [0.3] * 25, [1.0] * 25)
    b = AutoNPOController(cfg)
    b.load_state_dict(a.state_dict())
    assert b.trigger(25) == a.trigger(25)
    assert b.reward_slope() == a.reward_slope()


def test_choose_delta_is_the_argmax_of_q_over_v():
    deltas = [5, 10, 20, 40]
    q = [0.2, 0.5, 0.7, 0.9]
    v = [1.0, 1.1, 1.3, 3.0]
    best, s = choose_delta(deltas, q, v)
    assert best == 20 and s[2] == max(s)
    # a candidate with no defined V (no correct rows) never wins; ties go to the cheaper Delta
    assert choose_delta([5, 10], [0.5, 0.9], [1.0, math.nan])[0] == 5
    assert choose_delta([10, 5], [0.5, 0.5], [1.0, 1.0])[0] == 5
    assert choose_delta([5], [math.nan], [1.0])[0] is None
    with pytest.raises(ValueError, match="same length"):
        choose_delta([5, 10], [0.1], [1.0, 1.0])


def test_mistake_pool_stays_bounded_and_keeps_the_newest():
    pool = MistakePool(capacity=8)
    for step in range(50):
        pool.update({step * 3 + i: 0.0 for i in range(3)}, gate=0.6)
        assert len(pool) <= 8
    assert pool.prompts(3) == [149, 148, 147]
    assert min(pool.prompts()) == 142


def test_mistake_pool_refresh_rules():
    solved = MistakePool(capacity=10, refresh="solved")
    fifo = MistakePool(capacity=10, refresh="fifo")
    for pool in (solved, fifo):
        pool.update({1: 0.0, 2: 0.5, 3: 0.75}, gate=0.6)  # 3 is at the gate: not a mistake
        assert sorted(pool.prompts()) == [1, 2]
        pool.update({1: 1.0}, gate=0.6)  # prompt 1 is solved later
    assert solved.prompts() == [2]
    assert sorted(fifo.prompts()) == [1, 2]
    fifo.update({1: 0.0}, gate=0.6)  # failing again moves it to the front
    assert fifo.prompts(1) == [1]
    restored = MistakePool(capacity=10)
    restored.load_state_dict(fifo.state_dict())
    assert restored.prompts() == fifo.prompts()


def test_config_rejects_bad_values():
    with pytest.raises(ValueError, match="autonpo.candidates"):
        AutoNPOConfig(candidates=(0, 5))
    with pytest.raises(ValueError, match="autonpo.pool_refresh"):
        AutoNPOConfig(pool_refresh="lru")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="autonpo.v_estimator"):
        AutoNPOConfig(v_estimator="kl")  # type: ignore[arg-type]
    assert AutoNPOConfig(candidates=(20, 5, 5)).candidates == (5, 20)


def test_the_signals_the_triggers_read_are_logged():
    """autonpo/smoothed_reward is the EMA of the on-policy reward the controller saw (before each step), and
    autonpo/entropy_ema the EMA of the on-policy entropy, so a run's triggers can be read off its metrics."""
    from npo_lab.backend import ScriptedBackend
    from npo_lab.config import GRPOConfig, MethodConfigs, RunConfig
    from npo_lab.methods import make_method
    from npo_lab.train import make_state, train
    from npo_lab.utils import seed_everything

    class Memory:
        def __init__(self):
            self.rows = {}

        def log(self, metrics, step):
            self.rows.setdefault(step, {}).update(metrics)

        def mark(self, step):  # a logger of a method that may roll back can be rewound (npo_lab.metrics.Logger)
            return dict(self.rows)

        def rewind(self, mark):
            self.rows = mark

        def flush(self):
            pass

    seed_everything(0)
    grpo = GRPOConfig(batch_size=16, group_size=4, lr=0.1)
    auto = AutoNPOConfig(smoothing=0.5, window=3, bootstrap_until=0, max_interventions=1)
    source = make_method("autonpo", MethodConfigs(autonpo=auto), 8, grpo=grpo)
    log = Memory()
    train(make_state(ScriptedBackend(n_prompts=8, seq_len=2, vocab=4, init_bias=1.0), grpo, 0), source,
          RunConfig(steps=8, eval_every=100), grpo, logger=log)  # fmt: skip
    rewards = [log.rows[s]["reward/on_policy_mean"] for s in range(1, 9)]  # step k's metrics are logged at k + 1
    ema = None
    for step in range(2, 9):  # before step k (logged at k + 1) the controller has seen steps 0 .. k - 1
        r = rewards[step - 2]
        ema = r if ema is None else ema + 0.5 * (r - ema)
        assert log.rows[step]["autonpo/smoothed_reward"] == pytest.approx(ema)
        assert log.rows[step]["autonpo/entropy_ema"] > 0
    assert math.isnan(log.rows[1]["autonpo/smoothed_reward"])  # nothing observed before the first step
