"""Autograder of assignment 4 (AutoNPO's stagnation trigger); reference: npo_lab.methods.autonpo.AutoNPOController."""

from __future__ import annotations

import random

import pytest

from npo_lab.config import AutoNPOConfig
from npo_lab.methods.autonpo import AutoNPOController
from npo_lab.methods.autonpo import slope as lib_slope

ASSIGNMENT = "a4_autonpo_trigger"


def noisy(level: list[float], seed: int, sd: float = 0.04) -> list[float]:
    rng = random.Random(seed)
    return [min(1.0, max(0.0, x + rng.gauss(0, sd))) for x in level]


def plateaus(n: int, seed: int) -> list[float]:
    """Rise, plateau, rise, plateau (the shape AutoNPO is meant for)."""
    return noisy([0.1 + 0.004 * min(t, 80) + 0.003 * max(0, min(t, 260) - 180) for t in range(n)], seed)


def run_student(sub, cfg: dict, curve: list[float]) -> list[int]:
    trig = sub.StagnationTrigger(**cfg)
    fired = []
    for t, r in enumerate(curve):
        if trig.should_intervene(t):
            trig.record(t)
            fired.append(t)
        trig.observe(r)
    return fired


def run_npo_lab(cfg: dict, curve: list[float]) -> list[int]:
    ctl = AutoNPOController(AutoNPOConfig(**cfg, bootstrap_until=0, entropy_fraction=0.0))
    fired = []
    for t, r in enumerate(curve):
        reason = ctl.trigger(t)
        assert reason in (None, "stagnation"), reason
        if reason:
            ctl.record(t)
            fired.append(t)
        ctl.observe(t, r)
    return fired


def test_slope_matches_npo_lab(sub):
    rng = random.Random(0)
    for n in (2, 3, 10, 41):
        values = [rng.random() for _ in range(n)]
        assert sub.slope(values) == pytest.approx(lib_slope(values), abs=1e-12)


def test_slope_by_hand(sub):
    assert sub.slope([1.0, 3.0, 5.0, 7.0]) == pytest.approx(2.0)
    assert sub.slope([4.0, 4.0, 4.0]) == pytest.approx(0.0, abs=1e-15)
    assert sub.slope([0.5]) == 0.0 and sub.slope([]) == 0.0, "fewer than two values: slope 0"


@pytest.mark.parametrize("smoothing", [0.1, 0.5, 1.0])
def test_ema_matches_the_controllers_smoothed_curve(sub, smoothing):
    curve = noisy([0.3] * 50, seed=3, sd=0.2)
    ctl = AutoNPOController(AutoNPOConfig(window=50, smoothing=smoothing))
    for t, r in enumerate(curve):
        ctl.observe(t, r)
    mine = sub.ema(curve, smoothing)
    assert len(mine) == len(curve)
    assert mine == pytest.approx(ctl.smoothed, abs=1e-12)
    assert sub.ema([], smoothing) == []


def test_flat_curve_fires_once_the_window_is_full(sub):
    cfg = dict(window=20, smoothing=0.1, stagnation_slope=5e-4, cooldown=30, max_interventions=0)
    fired = run_student(sub, cfg, [0.5] * 100)
    assert fired == run_npo_lab(cfg, [0.5] * 100) == [20, 50, 80], fired


def test_rising_curve_never_fires(sub):
    cfg = dict(window=20, smoothing=0.1, stagnation_slope=5e-4, cooldown=30, max_interventions=0)
    assert run_student(sub, cfg, [min(1.0, 0.01 * t) for t in range(100)]) == []


def test_cooldown_holds_even_when_the_window_refills_sooner(sub):
    cfg = dict(window=10, smoothing=0.2, stagnation_slope=5e-4, cooldown=45, max_interventions=0)
    fired = run_student(sub, cfg, [0.4] * 150)
    assert fired == run_npo_lab(cfg, [0.4] * 150) == [10, 55, 100, 145], fired


def test_max_interventions_caps_the_triggers(sub):
    cfg = dict(window=10, smoothing=0.1, stagnation_slope=5e-4, cooldown=10, max_interventions=2)
    assert run_student(sub, cfg, [0.2] * 100) == [10, 20]


@pytest.mark.parametrize("seed", range(6))
def test_fires_on_the_same_steps_as_npo_lab(sub, seed):
    rng = random.Random(seed)
    cfg = dict(
        window=rng.choice([15, 30, 40]),
        smoothing=rng.choice([0.05, 0.1, 0.3]),
        stagnation_slope=rng.choice([2e-4, 5e-4, 1e-3]),
        cooldown=rng.choice([20, 40, 60]),
        max_interventions=rng.choice([0, 3, 4]),
    )
    curve = plateaus(400, seed)
    assert run_student(sub, cfg, curve) == run_npo_lab(cfg, curve), cfg


def test_defaults_are_npo_labs(sub):
    curve = plateaus(500, seed=11)
    defaults = {f: getattr(AutoNPOConfig(), f) for f in ("window", "smoothing", "stagnation_slope", "cooldown")}
    defaults["max_interventions"] = AutoNPOConfig().max_interventions
    assert run_student(sub, {}, curve) == run_npo_lab(defaults, curve)  # StagnationTrigger() with its defaults
