"""The analytic toy (npo_lab.experiments.toy): exact Q, V, S against brute force, against the sampled estimators of
core.signal, and the shape of Q(Delta) and S(Delta) along an exact gradient path."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from npo_lab.backend import Backend
from npo_lab.core.signal import q_hat, v_hat
from npo_lab.experiments.toy import (
    ToyBandit,
    exact_gradient,
    exact_gradient_path,
    exact_q,
    exact_s,
    exact_v,
    expected_reward,
    failed_prompts,
    make_toy,
    qvs_curve,
)


def tiny_instance() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """P = 3, A = 3; prompt 0 has two correct answers. Returns (theta_t, theta_src, correct)."""
    correct = torch.tensor([[True, True, False], [False, False, True], [True, False, False]])
    theta_t = torch.tensor([[-1.0, -0.5, 1.0], [0.3, 0.2, -0.4], [1.5, 0.0, -0.5]], dtype=torch.float64)
    theta_src = torch.tensor([[0.2, -0.3, 0.4], [0.1, -0.6, 0.9], [0.5, 0.7, -1.2]], dtype=torch.float64)
    return theta_t, theta_src, correct


def probs(theta: torch.Tensor) -> list[list[float]]:
    """Softmax written out by hand, as Python floats."""
    out = []
    for row in theta.tolist():
        z = sum(math.exp(v) for v in row)
        out.append([math.exp(v) / z for v in row])
    return out


def brute_force(theta_t, theta_src, correct, k, gate, floor):
    """Q and V (is_variance, chi2, log_ratio, grad_norm) from every k-tuple of source answers per failed prompt."""
    pt, ps, c = probs(theta_t), probs(theta_src), correct.tolist()
    n_prompts, n_answers = len(c), len(c[0])
    failed = [x for x in range(n_prompts) if sum(pt[x][a] for a in range(n_answers) if c[x][a]) < gate]
    # per-(x, a) gradient norm of log pi_t(a | x), by autograd
    gnorm = {}
    for x in failed:
        for a in range(n_answers):
            th = theta_t.clone().requires_grad_(True)
            (g,) = torch.autograd.grad(torch.log_softmax(th, -1)[x, a], th)
            gnorm[x, a] = g.norm().item()
    solved = 0.0
    count = s1 = s2 = g1 = g2 = l2 = 0.0  # expected number of correct rows and expected sums over them
    for x in failed:
        for tup in itertools.product(range(n_answers), repeat=k):
            prob = math.prod(ps[x][a] for a in tup)
            hits = [a for a in tup if c[x][a]]
            solved += prob * bool(hits)
            for a in hits:
                w = pt[x][a] / ps[x][a]
                count += prob
                s1, s2 = s1 + prob * w, s2 + prob * w * w
                l2 += prob * math.log(w) ** 2
                g1, g2 = g1 + prob * gnorm[x, a], g2 + prob * gnorm[x, a] ** 2
    q = solved / len(failed)
    ew, ew2, eg, eg2 = s1 / count, s2 / count, g1 / count, g2 / count
    v = {
        "is_variance": floor + ew2 - ew**2,
        "chi2": floor + ew2 - 1.0,
        "log_ratio": floor + l2 / count,
        "grad_norm": floor + eg2 - eg**2,
    }
    return failed, q, v


def test_exact_q_v_match_brute_force_enumeration():
    theta_t, theta_src, correct = tiny_instance()
    for k, gate, floor in [(3, 0.6, 1.0), (2, 0.5, 0.25), (4, 0.9, 1.0)]:
        failed, q, v = brute_force(theta_t, theta_src, correct, k, gate, floor)
        assert 0 < len(failed) and failed == failed_prompts(theta_t, correct, gate)
        assert exact_q(theta_t, theta_src, correct, k, gate) == pytest.approx(q, rel=1e-12)
        for est, val in v.items():
            got = exact_v(theta_t, theta_src, correct, k, gate, estimator=est, floor=floor)
            assert got == pytest.approx(val, rel=1e-10), est
            s = exact_s(theta_t, theta_src, correct, k, gate, est, floor)
            if val > 0:
                assert s == pytest.approx(q / val, rel=1e-10)
            else:  # chi2 can fall below 0 with a small floor: S is undefined there, as in core.signal.s_hat
                assert math.isnan(s)
    # the instance is not degenerate: the source is far from pi_t, V is well above the floor
    assert v["is_variance"] > 1.2 and abs(v["chi2"] - 1.0) > 0.02
    # gate 0.6 leaves prompt 2 (p_t ~ 0.72) out; nothing fails below a gate of 0 -> undefined
    assert failed_prompts(theta_t, correct, 0.6) == [0, 1]
    assert math.isnan(exact_q(theta_t, theta_src, correct, 3, gate=0.0))
    assert math.isnan(exact_v(theta_t, theta_src, correct, 3, gate=0.0))
    with pytest.raises(ValueError):
        exact_v(theta_t, theta_src, correct, estimator="nope")


def moments(theta_t, theta_src, correct, failed):
    """Exact pooled-row moments used for the standard errors: E[w^j], j = 1..4, and E[#correct rows per sample]."""
    pt, ps = torch.softmax(theta_t, -1)[failed], torch.softmax(theta_src, -1)[failed]  # (|F|, A)
    mass = ps * correct[failed]  # (|F|, A)
    w = pt / ps
    m = [((mass * w**j).sum() / mass.sum()).item() for j in range(1, 5)]
    return m, mass.sum().item()


def test_sampled_estimators_converge_to_exact():
    theta0, correct = make_toy(n_prompts=8, seed=3)
    path = exact_gradient_path(theta0, correct, steps=40, lr=8.0)
    present, source = path[10], path[30]
    failed = failed_prompts(present, correct)
    assert len(failed) >= 4
    be = ToyBandit(present, correct, seed=0)
    src = ToyBandit(source, correct, seed=1).save()
    k = 4

    # Q: mean of q_hat over independent draws of k source samples per failed prompt
    draws = 600
    qs = [q_hat(b.rewards, b.group_ids, failed) for b in (be.rollout(failed, k, policy=src) for _ in range(draws))]
    p_src = torch.softmax(source, -1).mul(correct).sum(-1)[failed]  # (|F|,)
    solve = 1 - (1 - p_src) ** k
    se_q = (solve * (1 - solve)).sum().sqrt().item() / len(failed) / math.sqrt(draws)
    q_exact = exact_q(present, source, correct, k)
    assert abs(sum(qs) / draws - q_exact) < 4 * se_q
    assert abs(p_src.mean().item() - q_exact) > 10 * se_q  # the test tells k samples from one

    # V: v_hat on the pooled correct rows, as the sample grows
    (m1, m2, m3, m4), rate = moments(present, source, correct, failed)
    var = m2 - m1**2
    spread = {  # asymptotic sd of one pooled row's contribution (delta method)
        "is_variance": math.sqrt(m4 - 4 * m3 * m1 + 6 * m2 * m1**2 - 3 * m1**4 - var**2),
        "chi2": math.sqrt(m4 - m2**2),
    }
    errors = {est: [] for est in spread}
    for n in (20, 200, 2000, 20000):
        b = be.rollout(failed, n, policy=src)
        rows = b.select(torch.nonzero(b.rewards > 0.5).flatten())
        logp_now, _ = be.logprobs(rows)
        n_rows = n * rate  # expected pooled rows
        for est in spread:
            v = v_hat(logp_now.detach(), rows.behavior_logprobs, rows.mask, estimator=est)
            err = abs(v - exact_v(present, source, correct, k, estimator=est))
            assert err < 4 * spread[est] / math.sqrt(n_rows), (est, n, err)
            errors[est].append(err)
    for est, errs in errors.items():
        assert errs[-1] < errs[0], (est, errs)
        # at the largest size the estimate resolves V - floor (the test is not vacuous)
        assert abs(exact_v(present, source, correct, estimator=est) - 1.0) > 8 * spread[est] / math.sqrt(20000 * rate)


def test_source_equal_to_present():
    theta0, correct = make_toy(seed=5)
    theta = exact_gradient_path(theta0, correct, steps=15, lr=16.0)[-1]
    k, gate = 6, 0.6
    p = [sum(pr for pr, ok in zip(row, ok_row) if ok) for row, ok_row in zip(probs(theta), correct.tolist())]
    failed = [x for x, px in enumerate(p) if px < gate]
    assert 0 < len(failed) < len(p)
    expected = sum(1 - (1 - p[x]) ** k for x in failed) / len(failed)
    assert exact_q(theta, theta, correct, k, gate) == pytest.approx(expected, rel=1e-12)
    for floor in (1.0, 0.5):
        assert exact_v(theta, theta, correct, k, gate, "is_variance", floor) == floor
        assert exact_v(theta, theta, correct, k, gate, "chi2", floor) == floor
    # the sampled estimator agrees exactly: a current-policy source has w = 1 on every row
    be = ToyBandit(theta, correct, seed=2)
    b = be.rollout(failed, 50, policy=be.save())
    rows = b.select(torch.nonzero(b.rewards > 0.5).flatten())
    logp_now, _ = be.logprobs(rows)
    assert rows.size > 0 and v_hat(logp_now.detach(), rows.behavior_logprobs, rows.mask) == 1.0


def test_gradient_path_ascends_and_matches_autograd():
    theta0, correct = make_toy(n_prompts=6, n_answers=5, n_correct=2, seed=7)
    lr = 3.0
    path = exact_gradient_path(theta0, correct, steps=60, lr=lr)
    assert len(path) == 61 and torch.equal(path[0], theta0)
    js = [expected_reward(th, correct) for th in path]
    assert all(b > a for a, b in zip(js, js[1:]))
    assert js[-1] > js[0] + 0.2
    for th in (path[0], path[30]):
        x = th.clone().requires_grad_(True)
        (g,) = torch.autograd.grad(torch.softmax(x, -1).mul(correct).sum(-1).mean(), x)
        assert torch.allclose(exact_gradient(th, correct), g, rtol=1e-10, atol=1e-14)
    assert torch.allclose(path[31] - path[30], lr * exact_gradient(path[30], correct), rtol=0, atol=1e-12)
    # deterministic
    assert all(torch.equal(a, b) for a, b in zip(path, exact_gradient_path(theta0, correct, steps=60, lr=lr)))


def test_make_toy_is_seeded_and_weak():
    theta0, correct = make_toy()
    again = make_toy()
    assert torch.equal(theta0, again[0]) and torch.equal(correct, again[1])
    assert not torch.equal(theta0, make_toy(seed=1)[0])
    assert correct.sum(-1).tolist() == [2] * 16
    assert failed_prompts(theta0, correct) == list(range(16))
    assert expected_reward(theta0, correct) < 0.25  # below the chance level 2 / 8


def test_q_and_s_along_the_default_path():
    """Default instance, lr = 16, present t = 20, k = 8."""
    theta0, correct = make_toy()
    path = exact_gradient_path(theta0, correct, steps=200, lr=16.0)
    t, k = 20, 8
    future = [1, 2, 5, 10, 15, 20, 25, 30, 40, 60, 80, 120, 150, 180]
    past = [-20, -10, -5, -1]
    q_future = qvs_curve(path, t, future, correct, k).q
    assert all(b >= a for a, b in zip(q_future, q_future[1:]))
    assert q_future[-1] > q_future[0] + 0.3
    q_past = qvs_curve(path, t, past, correct, k).q
    assert all(b > a for a, b in zip(q_past, q_past[1:]))
    assert max(q_past) < exact_q(path[t], path[t], correct, k) < min(q_future)
    # S(Delta) has an interior maximum on this instance: Q saturates while V keeps growing, because the future
    # policy concentrates on one of the two correct answers and the other gets large weights pi_t / pi_src
    for est in ("is_variance", "chi2"):
        curve = qvs_curve(path, t, future, correct, k, estimator=est)
        best = curve.best_delta
        assert best is not None and future[0] < best < future[-1], (est, curve.s)
        assert 15 <= best <= 30, (est, best)
        assert max(curve.s) > 1.02 * curve.s[0] and max(curve.s) > 1.1 * curve.s[-1], (est, curve.s)
    with pytest.raises(ValueError):
        qvs_curve(path, t, [-21], correct, k)


def test_toy_bandit_backend_protocol_and_rng():
    theta0, correct = make_toy(n_prompts=5, n_answers=4, n_correct=1, seed=2)
    be = ToyBandit(theta0, correct, seed=11)
    assert isinstance(be, Backend) and be.num_prompts == 5
    assert be.evaluate()["eval/accuracy"] == expected_reward(theta0, correct)

    ckpt = be.save()
    first = be.rollout([0, 3, 4], 7)
    with torch.no_grad():  # move the weights and the generator away from the checkpoint
        be.theta.add_(torch.randn_like(be.theta))
    be.rollout([1], 3)
    be.load(ckpt)
    second = be.rollout([0, 3, 4], 7)
    assert torch.equal(first.behavior_logprobs, second.behavior_logprobs)
    assert torch.equal(first.rewards, second.rewards) and first.extras == second.extras
    assert torch.equal(be.theta.detach(), theta0)

    # batch layout and scoring
    assert tuple(first.behavior_logprobs.shape) == (21, 1) and torch.equal(first.mask, torch.ones(21, 1))
    assert first.group_ids.tolist() == [0] * 7 + [3] * 7 + [4] * 7
    answers = torch.tensor([e["answer"] for e in first.extras])
    assert torch.equal(first.rewards, correct[first.group_ids, answers].double())
    logp, ent = be.logprobs(first)
    assert torch.allclose(logp.detach(), first.behavior_logprobs)
    pi = torch.softmax(theta0, -1)[first.group_ids]  # (B, A)
    assert torch.allclose(ent.detach(), -(pi * pi.log()).sum(-1, keepdim=True))
    logp.sum().backward()
    assert be.theta.grad is not None and be.theta.grad[[1, 2]].abs().sum() == 0

    # sampling from a checkpoint uses its table and leaves the current weights alone
    other = ToyBandit(torch.zeros(5, 4, dtype=torch.float64), correct).save()
    b = be.rollout([2], 5, policy=other)
    assert torch.allclose(b.behavior_logprobs, torch.full((5, 1), math.log(0.25), dtype=torch.float64))
    assert torch.equal(be.theta.detach(), theta0)
