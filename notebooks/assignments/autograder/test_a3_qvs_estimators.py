"""Autograder of assignment 3 (Q-hat, V-hat, S-hat, choosing Delta): npo_lab.core.signal is the reference."""

from __future__ import annotations

import math

import pytest
import torch

from npo_lab.core import signal as lib

ASSIGNMENT = "a3_qvs_estimators"
ESTIMATORS = ["is_variance", "chi2", "log_ratio"]


def same(a: float, b: float, tol: float = 1e-9) -> bool:
    return (math.isnan(a) and math.isnan(b)) or abs(a - b) <= tol * max(1.0, abs(b))


def source_rows(seed: int, b: int = 8, t: int = 9, distance: float = 0.5):
    gen = torch.Generator().manual_seed(seed)
    logp_src = -torch.rand(b, t, generator=gen) * 2
    logp_cur = logp_src + distance * torch.randn(b, t, generator=gen)
    lengths = torch.randint(1, t + 1, (b,), generator=gen)
    mask = (torch.arange(t) < lengths.unsqueeze(-1)).float()  # (B, T) rows of different lengths
    logp_cur = torch.where(mask.bool(), logp_cur, torch.full_like(logp_cur, 50.0))  # padding must not count
    return logp_cur, logp_src, mask


@pytest.mark.parametrize("seed", range(4))
def test_q_hat_matches_npo_lab(sub, seed):
    gen = torch.Generator().manual_seed(seed)
    ids = torch.arange(20, 36).repeat_interleave(4)[torch.randperm(64, generator=gen)]  # 16 prompts, k = 4
    rewards = (torch.rand(64, generator=gen) < 0.25).float()
    failed = torch.randperm(40, generator=gen)[:12].add(10).tolist()  # some prompts have no sample at all
    assert sub.q_hat(rewards, ids, failed) == pytest.approx(lib.q_hat(rewards, ids, failed))


def test_q_hat_edge_cases(sub):
    rewards, ids = torch.tensor([0.6, 0.4, 0.0, 1.0]), torch.tensor([1, 2, 2, 3])
    assert sub.q_hat(rewards, ids, [1, 2]) == pytest.approx(0.5)  # 0.6 > 0.5 is correct; 0.4 is not
    assert sub.q_hat(rewards, ids, [1, 2], correct_threshold=0.7) == 0.0
    assert sub.q_hat(rewards, ids, [4]) == 0.0, "a failed prompt without samples is not solved"
    assert math.isnan(sub.q_hat(rewards, ids, [])), "no failed prompts: Q-hat is undefined (NaN)"


@pytest.mark.parametrize("seed", range(3))
def test_importance_weights_match_npo_lab(sub, seed):
    logp_cur, logp_src, mask = source_rows(seed)
    mine = sub.importance_weights(logp_cur, logp_src, mask)
    ref = lib.importance_weights(logp_cur, logp_src, mask)
    assert mine.shape == ref.shape, f"(N,) = {tuple(ref.shape)} unmasked tokens, got {tuple(mine.shape)}"
    assert mine.dtype == torch.float64, f"float64, got {mine.dtype}"
    torch.testing.assert_close(mine, ref)


def test_importance_weights_clamp_extreme_ratios(sub):
    logp_cur = torch.tensor([[-0.1, -80.0, -0.2]])
    logp_src = torch.tensor([[-90.0, -0.1, -0.2]])
    w = sub.importance_weights(logp_cur, logp_src, torch.ones(1, 3))
    torch.testing.assert_close(w, torch.tensor([math.exp(30.0), math.exp(-30.0), 1.0], dtype=torch.float64))


@pytest.mark.parametrize("estimator", ESTIMATORS)
@pytest.mark.parametrize("seed", range(3))
def test_v_hat_matches_npo_lab(sub, estimator, seed):
    logp_cur, logp_src, mask = source_rows(seed, distance=0.3 * (seed + 1))
    mine = sub.v_hat(logp_cur, logp_src, mask, estimator)
    ref = lib.v_hat(logp_cur, logp_src, mask, estimator=estimator)
    assert isinstance(mine, float), f"return a Python float, got {type(mine).__name__}"
    assert same(mine, ref), (mine, ref)


@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_v_hat_floor_and_empty_source(sub, estimator):
    logp_cur, _, mask = source_rows(1)
    assert sub.v_hat(logp_cur, logp_cur, mask, estimator, floor=1.0) == pytest.approx(1.0, abs=1e-12)
    assert sub.v_hat(logp_cur, logp_cur, mask, estimator, floor=0.25) == pytest.approx(0.25, abs=1e-12)
    assert math.isnan(sub.v_hat(logp_cur, logp_cur, torch.zeros_like(mask), estimator)), "no token: NaN"


def test_v_hat_stays_finite_for_extreme_ratios(sub):
    logp_cur = torch.tensor([[-0.1, -200.0, -0.2, 0.0]])
    logp_src = torch.tensor([[-200.0, -0.1, -0.2, 0.0]])
    for estimator in ESTIMATORS:
        v = sub.v_hat(logp_cur, logp_src, torch.ones(1, 4), estimator)
        assert math.isfinite(v), (estimator, v)
        assert same(v, lib.v_hat(logp_cur, logp_src, torch.ones(1, 4), estimator=estimator)), estimator


@pytest.mark.parametrize(
    ("q", "v"),
    [(0.5, 2.0), (0.3, 1.0), (0.0, float("nan")), (0.0, 3.0), (float("nan"), 1.0), (0.5, float("nan")), (0.5, 0.0)],
)
def test_s_hat_matches_npo_lab(sub, q, v):
    assert same(sub.s_hat(q, v), lib.s_hat(q, v)), (q, v, sub.s_hat(q, v), lib.s_hat(q, v))


CASES = [
    ([5, 10, 20, 40], [0.2, 0.5, 0.6, 0.7], [1.1, 1.2, 2.0, 4.0]),
    ([40, 10, 20, 5], [0.4, 0.4, 0.4, 0.4], [2.0, 1.0, 1.0, 2.0]),  # a tie: the smaller Delta wins
    ([5, 10], [float("nan"), 0.0], [1.0, float("nan")]),  # NaN never wins; Q = 0 gives S = 0
    ([5, 10], [float("nan"), 0.5], [1.0, float("nan")]),  # nothing defined: None
    ([3], [0.1], [1.5]),
]


@pytest.mark.parametrize("case", range(len(CASES)))
def test_choose_delta_matches_npo_lab(sub, case):
    deltas, q, v = CASES[case]
    best, s = sub.choose_delta(deltas, q, v)
    ref_best, ref_s = lib.choose_delta(deltas, q, v)
    assert best == ref_best, (best, ref_best)
    assert len(s) == len(ref_s) and all(same(a, b) for a, b in zip(s, ref_s)), (s, ref_s)


def test_choose_delta_on_random_candidates(sub):
    gen = torch.Generator().manual_seed(0)
    for _ in range(20):
        deltas = torch.randperm(50, generator=gen)[:5].add(1).tolist()
        q = torch.rand(5, generator=gen).round(decimals=1).tolist()  # rounding makes ties likely
        v = (1 + torch.rand(5, generator=gen)).round(decimals=1).tolist()
        assert sub.choose_delta(deltas, q, v)[0] == lib.choose_delta(deltas, q, v)[0], (deltas, q, v)


def test_choose_delta_rejects_lists_of_different_lengths(sub):
    with pytest.raises(ValueError):
        sub.choose_delta([5, 10], [0.1, 0.2], [1.0])
