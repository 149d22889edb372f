"""The comparison's statistics on synthetic runs with hand-known answers."""

import math

import numpy as np
import pytest
from helpers import fake_run

from npo_lab.experiments.report import aggregate, lookahead_before, regime_summary
from npo_lab.experiments.stats import (
    auc,
    bootstrap_ci,
    iqm,
    median_band,
    probability_of_improvement,
    probability_of_improvement_ci,
    steps_to_target,
    stratified_bootstrap_ci,
)

INF = math.inf


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


# ---- IQM: scipy.stats.trim_mean(x, 0.25): drop int(0.25 * n) sorted values from each end, average the rest


@pytest.mark.parametrize(
    "values, expected",
    [
        ([4.0, 1.0, 3.0, 100.0], 3.5),  # n=4: drop 1 + 1 -> mean(3, 4)
        ([8.0, 1.0, 7.0, 2.0, 6.0, 3.0, 5.0, 100.0], 5.25),  # n=8: drop 2 + 2 -> mean(3, 5, 6, 7)
        ([512.0, 1.0, 256.0, 2.0, 128.0, 4.0, 64.0, 8.0, 32.0, 16.0], 42.0),  # n=10: drop 2 + 2 (not 3) -> 252 / 6
    ],
)
def test_iqm_by_hand(values, expected):
    assert iqm(values) == pytest.approx(expected)


@pytest.mark.parametrize(
    "values, expected",
    [
        ([7.0], 7.0),  # n < 4: nothing trimmed
        ([1.0, 30.0], 15.5),
        ([1.0, 2.0, 30.0], 11.0),
        ([1.0, 2.0, 3.0, 4.0, 50.0], 3.0),  # n=5: int(1.25) = 1 from each end
        ([0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 60.0], 3.0),  # n=7: int(1.75) = 1 from each end
        ([0.0, 10.0, 20.0, 30.0, 40.0, 50.0, 60.0, 70.0, 80.0, 1000.0, -1000.0], 40.0),  # n=11: 2 from each end
    ],
)
def test_iqm_trims_floor_of_a_quarter(values, expected):
    assert iqm(values) == pytest.approx(expected)


def test_iqm_inf_and_nan():
    assert iqm([1.0, 2.0, 3.0, INF]) == 2.5  # the inf is trimmed
    assert iqm([1.0, 2.0, INF, INF]) == INF  # one inf survives
    assert iqm([1.0, 2.0, 3.0, 4.0, 5.0, 6.0, INF, INF]) == 4.5  # n=8 trims both infs
    assert iqm([1.0, 2.0, 3.0, 4.0, 5.0, INF, INF, INF]) == INF
    assert iqm([INF]) == INF
    assert math.isnan(iqm([])) and math.isnan(iqm([1.0, float("nan"), 2.0, 3.0]))


def test_iqm_matches_scipy_trim_mean():
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(1)
    for n in range(1, 30):
        x = rng.normal(size=n)
        assert iqm(x) == pytest.approx(float(stats.trim_mean(x, 0.25)))


# ---- stratified bootstrap


def test_stratified_bootstrap_keeps_each_stratum_size():
    small, big = [0.0, 1.0], [100.0 + i for i in range(20)]
    seen = []

    def record(pooled):
        seen.append(pooled.copy())
        return float(np.mean(pooled))

    point, lo, hi = stratified_bootstrap_ci({"small": small, "big": big}, record, n_boot=300, seed=3)
    assert point == pytest.approx(np.mean(small + big))
    boots = seen[1:]  # the first call is the point estimate on the original data
    assert len(boots) == 300
    for b in boots:
        assert len(b) == 22 and (b < 50).sum() == 2  # 2 runs of the small stratum, 20 of the big one, every time
        assert set(b[:2]) <= set(small) and set(b[2:]) <= set(big)
    assert len({tuple(b) for b in boots}) > 100  # and they are real resamples
    assert lo < point < hi


def test_stratified_bootstrap_single_stratum_is_the_plain_bootstrap():
    x = [0.3, 0.1, 0.9, 0.5, 0.7]
    assert stratified_bootstrap_ci(x, np.median, seed=4) == stratified_bootstrap_ci({"t": x}, np.median, seed=4)
    assert stratified_bootstrap_ci([0.4], iqm) == (0.4, 0.4, 0.4)
    assert all(math.isnan(v) for v in stratified_bootstrap_ci({"a": [], "b": []}, iqm))


def test_stratified_bootstrap_ci_contains_point_is_seeded_and_shrinks():
    rng = np.random.default_rng(0)
    few = {"a": rng.normal(0.0, 1.0, 6), "b": rng.normal(5.0, 1.0, 4)}
    many = {"a": rng.normal(0.0, 1.0, 300), "b": rng.normal(5.0, 1.0, 200)}
    p, lo, hi = stratified_bootstrap_ci(few, iqm, n_boot=500, seed=7)
    assert lo <= p <= hi and lo < hi
    assert stratified_bootstrap_ci(few, iqm, n_boot=500, seed=7) == (p, lo, hi)
    assert stratified_bootstrap_ci(few, iqm, n_boot=500, seed=8) != (p, lo, hi)
    p2, lo2, hi2 = stratified_bootstrap_ci(many, iqm, n_boot=500, seed=7)
    assert lo2 <= p2 <= hi2 and (hi2 - lo2) < 0.5 * (hi - lo)


def test_stratified_bootstrap_with_inf_gives_inf_bounds_not_nan():
    steps = {"a": [10.0, 20.0, INF, INF], "b": [30.0, INF]}
    p, lo, hi = stratified_bootstrap_ci(steps, iqm, n_boot=500)
    assert p == INF and hi == INF and not math.isnan(lo)
    p, lo, hi = stratified_bootstrap_ci([INF, INF, INF], iqm, n_boot=50)
    assert (p, lo, hi) == (INF, INF, INF)


# ---- probability of improvement: P(X > Y) + 0.5 P(X = Y) over all pairs


def test_probability_of_improvement_extremes_and_ties():
    assert probability_of_improvement([5.0, 6.0, 7.0], [1.0, 2.0]) == 1.0
    assert probability_of_improvement([1.0, 2.0], [5.0, 6.0, 7.0]) == 0.0
    same = [1.0, 2.0, 2.0, 3.0]
    assert probability_of_improvement(same, same) == 0.5
    # x=1: 0 wins; x=2: 2 ties (1.0), loses to 4; x=3: beats both 2s (2.0) -> U = 3 of 9 pairs
    assert probability_of_improvement([1.0, 2.0, 3.0], [2.0, 2.0, 4.0]) == pytest.approx(1 / 3)
    assert math.isnan(probability_of_improvement([], [1.0]))


def test_probability_of_improvement_matches_pairs_and_is_symmetric():
    rng = np.random.default_rng(2)
    for n, m in [(1, 1), (3, 7), (10, 4)]:
        x, y = rng.integers(0, 4, n).astype(float), rng.integers(0, 4, m).astype(float)
        brute = sum((a > b) + 0.5 * (a == b) for a in x for b in y) / (n * m)
        assert probability_of_improvement(x, y) == pytest.approx(brute)
        assert probability_of_improvement(x, y) + probability_of_improvement(y, x) == pytest.approx(1.0)


def test_probability_of_improvement_with_inf():
    # x=inf ties y=inf (0.5) and beats 10 (1); x=5 loses both -> 1.5 / 4
    assert probability_of_improvement([INF, 5.0], [INF, 10.0]) == 0.375
    # steps to target, lower is better: negated. x reaches at 10 (beats both) or never (loses both)
    assert probability_of_improvement([-10.0, -INF], [-20.0, -30.0]) == 0.5


def test_probability_of_improvement_ci():
    assert probability_of_improvement_ci([5.0, 6.0, 7.0], [1.0, 2.0]) == (1.0, 1.0, 1.0)
    x, y = [0.5, 0.6, 0.7, 0.8, 0.4], [0.3, 0.5, 0.45, 0.6, 0.2]
    p, lo, hi = probability_of_improvement_ci(x, y, n_boot=500, seed=1)
    assert p == pytest.approx(probability_of_improvement(x, y)) and lo < p < hi and 0.0 <= lo and hi <= 1.0
    assert probability_of_improvement_ci(x, y, n_boot=500, seed=1) == (p, lo, hi)


# ---- AUC: trapezoid area over step / step span


def test_auc_constant_linear_and_step_curves():
    assert auc([(0, 0.7), (10, 0.7), (30, 0.7)]) == pytest.approx(0.7)
    assert auc([(0, 0.7), (10, 0.7)], total_steps=100) == pytest.approx(0.7)
    assert auc([(0, 0.0), (2, 0.2), (10, 1.0)]) == pytest.approx(0.5)  # linear, uneven spacing
    assert auc([(10, 1.0), (0, 0.0)]) == pytest.approx(0.5)  # order of the points does not matter
    assert auc([(0, 0.2), (10, 0.2), (20, 0.8), (40, 0.8)]) == pytest.approx((2 + 5 + 16) / 40)
    assert auc([(0, 0.0), (10, 0.0), (10, 1.0), (20, 1.0)]) == pytest.approx(0.5)  # a jump at step 10
    assert auc([(0, 0.0), (10, 1.0)], total_steps=40) == pytest.approx((5 + 30) / 40)  # last value held flat
    assert auc([(100, 0.4), (300, 0.8)]) == pytest.approx(0.6)  # span starts at the first eval, not at 0


def test_auc_edge_cases():
    assert auc([(5, 0.3)]) == 0.3 and auc([(5, 0.3)], total_steps=50) == pytest.approx(0.3)
    assert math.isnan(auc([]))
    with pytest.raises(ValueError):
        auc([(0, 0.1), (20, 0.2)], total_steps=10)
