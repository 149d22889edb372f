"""The comparison's statistics on synthetic runs with hand-known answers."""

import math

import pytest

from npo_lab.compare import aggregate, lookahead_before, regime_summary
from npo_lab.stats import bootstrap_ci, median_band, steps_to_target


def fake_run(method, seed, evals, interventions=(), delta=0, final=None):
    return {
        "method": method,
        "seed": seed,
        "evals": evals,
        "interventions": list(interventions),
        "delta": delta,
        "lookahead_steps": delta * len(interventions),
        "lookahead_s": 0.1 * len(interventions),
        "wall_s": 1.0,
        "final_accuracy": evals[-1][1] if final is None else final,
        "train_reward": [0.0] * 8 + [0.5, 0.5],
        "zero_std_groups": [1.0] * 10,
    }


def test_steps_to_target_and_lookahead_cost():
    ev = [(0, 0.1), (10, 0.4), (20, 0.8), (30, 0.9)]
    assert steps_to_target(ev, 0.8) == 20 and steps_to_target(ev, 0.95) == math.inf
    r = fake_run("npo", 0, ev, interventions=(0, 15, 25), delta=5)
    assert lookahead_before(r, 20) == 10  # interventions at 0 and 15 happened before step 20


def test_aggregate_speedups_by_hand():
    runs = [fake_run("grpo", s, [(0, 0.0), (10, 0.2), (20, 0.5), (30, 0.8), (40, 1.0)]) for s in range(3)] + [
        fake_run("npo", s, [(0, 0.0), (10, 0.5), (20, 0.9), (30, 1.0), (40, 1.0)], interventions=(0,), delta=5)
        for s in range(3)
    ]
    doc = aggregate(runs, ["grpo", "npo"], target=None, target_fraction=0.8, n_boot=200)
    assert doc["target_accuracy"] == pytest.approx(0.8)  # 0.8 x grpo's median final accuracy 1.0
    g, n = doc["methods"]["grpo"], doc["methods"]["npo"]
    assert g["steps_to_target"]["median"] == 30 and n["steps_to_target"]["median"] == 20
    assert n["steps_to_target_with_lookahead"]["median"] == 25
    assert n["speedup"] == pytest.approx(1.5) and n["speedup_with_lookahead"] == pytest.approx(30 / 25)
    assert g["speedup"] == pytest.approx(1.0) and n["lookahead_steps"] == 5
    # paired by seed: every npo seed ends equal to its grpo seed (both reach 1.0)
    assert n["paired_final_delta"]["median"] == 0.0 and n["wins"] == [0, 3, 0]


def test_unreached_target_is_reported_not_hidden():
    runs = [fake_run("grpo", s, [(0, 0.0), (10, 0.5)]) for s in range(3)]
    doc = aggregate(runs, ["grpo"], target=0.9, target_fraction=0.9, n_boot=200)
    m = doc["methods"]["grpo"]
    assert m["steps_to_target"]["median"] is None and m["reached_target"] == 0 and m["speedup"] is None


def test_regime_summary():
    r = fake_run("grpo", 0, [(0, 0.1), (25, 0.5), (50, 0.6), (75, 0.7), (100, 0.72)])
    rs = regime_summary(r)
    assert rs["early_train_reward"] == 0.0 and rs["early_zero_std_groups"] == 1.0  # first 10% of 10 steps
    assert rs["gain_first_quarter"] == pytest.approx(0.4) and rs["gain_last_quarter"] == pytest.approx(0.02)


def test_bootstrap_ci_contains_the_median_and_shrinks_with_agreement():
    m, lo, hi = bootstrap_ci([0.1, 0.5, 0.9, 0.3, 0.7])
    assert m == 0.5 and lo <= m <= hi and hi - lo > 0.1
    m2, lo2, hi2 = bootstrap_ci([0.5] * 5)
    assert (m2, lo2, hi2) == (0.5, 0.5, 0.5)
    assert bootstrap_ci([0.4]) == (0.4, 0.4, 0.4)


def test_median_band_shapes():
    import numpy as np

    med, lo, hi = median_band(np.array([[0.0, 1.0], [1.0, 2.0], [2.0, 3.0]]), n_boot=100)
    assert med.tolist() == [1.0, 2.0] and (lo <= med).all() and (med <= hi).all()


def test_paired_difference_and_wins():
    runs = [fake_run("grpo", s, [(0, 0.0), (10, 0.5)], final=f) for s, f in enumerate([0.5, 0.6, 0.7])]
    runs += [fake_run("npo", s, [(0, 0.0), (10, 0.5)], final=f) for s, f in enumerate([0.7, 0.6, 0.6])]
    doc = aggregate(runs, ["grpo", "npo"], target=0.5, target_fraction=0.9, n_boot=200)
    n = doc["methods"]["npo"]
    assert n["wins"] == [1, 1, 1]  # seed 0 better by 0.2, seed 1 equal, seed 2 worse by 0.1
    assert n["paired_final_delta"]["median"] == pytest.approx(0.0)
