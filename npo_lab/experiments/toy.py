"""An analytic toy where NPO's Q, V and S are known exactly, plus a backend that samples from it.

The toy is a tabular contextual bandit. There are P prompts and A answers; a trajectory is a single token
(one answer), so T = 1 and a row's token weight is its row weight. The policy is a softmax over a logit table
``theta`` of shape (P, A):

    pi(a | x) = softmax(theta[x])[a]

A boolean table ``correct`` of shape (P, A) marks the answers the verifier accepts. A prompt may have several
correct answers (several valid trajectories for one problem). The success probability of prompt x is

    p(x) = sum over correct a of pi(a | x)

and the expected reward is J(theta) = mean over x of p(x).

Exact Q, V and S of a source policy pi_src measured against the present policy pi_t (the estimators in
:mod:`npo_lab.core.signal` converge to these as the number of samples grows):

* Failed prompts: F_t = {x : p_t(x) < gate}, with gate = 0.6 by default (NPO's gate).
* Q(src) = mean over x in F_t of 1 - (1 - p_src(x))^k. This is the probability that k samples from the source
  contain at least one correct answer, averaged over the failed prompts; ``q_hat`` measures exactly this event
  on every draw.
* V(src): ``v_hat`` pools the verified-correct source rows over F_t (k samples per prompt) and uses the weight
  w = pi_t(a | x) / pi_src(a | x) of each row. With many samples the pooled rows follow

      P(x, a) = pi_src(a | x) / Z  for x in F_t and correct a,   Z = sum over x in F_t of p_src(x),

  (k cancels), so

      E[w]   = sum over x in F_t of p_t(x) / Z
      E[w^2] = sum over x in F_t, correct a of pi_t(a | x)^2 / pi_src(a | x) / Z

  and V = floor + E[w^2] - E[w]^2 (``is_variance``, the default) or V = floor + E[w^2] - 1 (``chi2``). The
  ``grad_norm`` estimator is exact here too: the gradient of log pi_t(a | x) with respect to theta[x] is
  e_a - pi_t(. | x), whose norm g(x, a) has squared value 1 - 2 pi_t(a | x) + sum_b pi_t(b | x)^2, and
  V = floor + E[g^2] - E[g]^2 under the same P(x, a).
* S = Q / V.

Learning dynamics are exact as well. :func:`exact_gradient_path` runs plain gradient ascent on J with the
closed-form softmax gradient

    dJ / dtheta[x, b] = pi(b | x) * (correct[x, b] - p(x)) / P,

so there is no sampling noise. Each prompt's logits move independently, and for a small learning rate every
p(x) rises monotonically along the path. Step t of the path is the run's present, step t + Delta its near
future (the NPO guide) and step t - Delta a past checkpoint (replay). :func:`qvs_curve` returns exact Q, V and
S for a grid of Delta values.

:class:`ToyBandit` implements the :class:`npo_lab.backend.Backend` protocol over the same table, so the real
NPO machinery (rollouts, ``q_hat``, ``v_hat``, look-ahead and rollback) can be checked against the exact values.

Everything exact is computed in float64.

>>> theta0, correct = make_toy(n_prompts=4, n_answers=3, n_correct=1, seed=0)
>>> tuple(theta0.shape), tuple(correct.shape)
((4, 3), (4, 3))
>>> exact_s(theta0, theta0, correct, k=4) == exact_q(theta0, theta0, correct, k=4)  # V = floor = 1
True
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from npo_lab.backend import Checkpoint
from npo_lab.batch import RolloutBatch
from npo_lab.core.signal import V_ESTIMATORS, choose_delta, s_hat

DEFAULT_GATE = 0.6
"""NPO's gate: a prompt counts as failed when its success probability is below this."""


def _check(theta: Tensor, correct: Tensor) -> None:
    if theta.dim() != 2 or tuple(theta.shape) != tuple(correct.shape):
        raise ValueError(f"theta and correct must both be (P, A), got {tuple(theta.shape)} and {tuple(correct.shape)}")


def policy_probs(theta: Tensor) -> Tensor:
    """pi(a | x) for every prompt and answer.

    Args:
        theta: (P, A) logits.

    Returns:
        (P, A) float64 probabilities; each row sums to 1.

    >>> policy_probs(torch.zeros(1, 4)).tolist()
    [[0.25, 0.25, 0.25, 0.25]]
    """
    return torch.softmax(theta.detach().double(), dim=-1)


def success_prob(theta: Tensor, correct: Tensor) -> Tensor:
    """p(x): the probability that one sample for prompt x is correct.

    Args:
        theta: (P, A) logits.
        correct: (P, A) bool, True where the verifier accepts the answer.

    Returns:
        (P,) float64.

    >>> success_prob(torch.zeros(2, 4), torch.tensor([[True, True, False, False], [True, False, False, False]]))
    tensor([0.5000, 0.2500], dtype=torch.float64)
    """
    _check(theta, correct)
    return (policy_probs(theta) * correct.double()).sum(-1)


def expected_reward(theta: Tensor, correct: Tensor) -> float:
    """J(theta) = mean over prompts of p(x).

    >>> expected_reward(torch.zeros(2, 4), torch.tensor([[True, True, False, False], [True, False, False, False]]))
    0.375
    """
    return success_prob(theta, correct).mean().item()


def exact_gradient(theta: Tensor, correct: Tensor) -> Tensor:
    """Closed-form gradient of J(theta) = mean_x p(x) with respect to the logits.

    Args:
        theta: (P, A) logits.
        correct: (P, A) bool.

    Returns:
        (P, A) float64, dJ/dtheta[x, b] = pi(b | x) * (correct[x, b] - p(x)) / P.
    """
    _check(theta, correct)
    pi = policy_probs(theta)  # (P, A)
    c = correct.double()
    p = (pi * c).sum(-1, keepdim=True)  # (P, 1)
    return pi * (c - p) / theta.shape[0]


def failed_prompts(theta: Tensor, correct: Tensor, gate: float = DEFAULT_GATE) -> list[int]:
    """F = {x : p(x) < gate}, the prompts the policy fails on (exact, not sampled).

    Args:
        theta: (P, A) logits.
        correct: (P, A) bool.
        gate: success probability below which a prompt counts as failed.

    Returns:
        Sorted prompt ids.

    >>> failed_prompts(torch.zeros(2, 4), torch.tensor([[True, True, True, False], [True, False, False, False]]))
    [1]
    """
    return [int(x) for x in torch.nonzero(success_prob(theta, correct) < gate).flatten().tolist()]


def exact_q(theta_t: Tensor, theta_src: Tensor, correct: Tensor, k: int, gate: float = DEFAULT_GATE) -> float:
    """Exact Q: mean over the present's failed prompts of P(at least one of k source samples is correct).

    Args:
        theta_t: (P, A) logits of the present policy pi_t (it defines the failed prompts).
        theta_src: (P, A) logits of the source policy.
        correct: (P, A) bool.
        k: samples per prompt drawn from the source.
        gate: failure gate on p_t.

    Returns:
        Q = mean over x in F_t of 1 - (1 - p_src(x))^k, or NaN when no prompt fails.

    >>> exact_q(torch.zeros(1, 2), torch.zeros(1, 2), torch.tensor([[True, False]]), k=2)
    0.75
    """
    _check(theta_src, correct)
    fail = failed_prompts(theta_t, correct, gate)
    if not fail:
        return float("nan")
    p_src = success_prob(theta_src, correct)[fail]  # (|F|,)
    return (1.0 - (1.0 - p_src) ** k).mean().item()


def exact_v(
    theta_t: Tensor,
    theta_src: Tensor,
    correct: Tensor,
    k: int | None = None,
    gate: float = DEFAULT_GATE,
    estimator: str = "is_variance",
    floor: float = 1.0,
) -> float:
    """Exact V: the large-sample limit of ``v_hat`` on the source's pooled correct rows over F_t.

    Args:
        theta_t: (P, A) logits of the present policy pi_t.
        theta_src: (P, A) logits of the source policy.
        correct: (P, A) bool.
        k: samples per failed prompt. Unused: the limit does not depend on k (accepted so that callers can pass
            the same arguments as to :func:`exact_q`).
        gate: failure gate on p_t.
        estimator: ``is_variance`` (floor + Var(w)), ``chi2`` (floor + E[w^2] - 1), ``log_ratio``
            (floor + E[(log w)^2]) or ``grad_norm`` (floor + Var(||grad log pi_t||)).
        floor: the on-policy cost added to every estimate.

    Returns:
        V, or NaN when no prompt fails or the source never answers a failed prompt correctly.

    >>> exact_v(torch.zeros(1, 2), torch.zeros(1, 2), torch.tensor([[True, False]]))
    1.0
    """
    if estimator not in V_ESTIMATORS:
        raise ValueError(f"estimator must be one of {V_ESTIMATORS}, got {estimator!r}")
    del k  # the limit of the pooled estimator does not depend on k
    _check(theta_src, correct)
    fail = failed_prompts(theta_t, correct, gate)
    if not fail:
        return float("nan")
    c = correct[fail]  # (|F|, A)
    pi_src = policy_probs(theta_src)[fail]  # (|F|, A)
    mass = torch.where(c, pi_src, torch.zeros_like(pi_src))  # (|F|, A), un-normalised P(x, a)
    z = mass.sum()
    if z.item() <= 0.0:
        return float("nan")
    if estimator == "grad_norm":
        pi_t = policy_probs(theta_t)[fail]  # (|F|, A)
        f = torch.sqrt((1.0 - 2.0 * pi_t + pi_t.pow(2).sum(-1, keepdim=True)).clamp_min(0.0))  # (|F|, A)
    else:
        # w as importance_weights computes it: exp of the log-ratio, so w is exactly 1 when the source is pi_t
        logp_t = torch.log_softmax(theta_t.detach().double(), -1)[fail]  # (|F|, A)
        logp_src = torch.log_softmax(theta_src.detach().double(), -1)[fail]  # (|F|, A)
        f = torch.exp((logp_t - logp_src).clamp(-30.0, 30.0))  # (|F|, A)
    if estimator == "log_ratio":
        return floor + ((mass * f.log().pow(2)).sum() / z).item()
    m1 = (mass * f).sum() / z
    m2 = (mass * f * f).sum() / z
    if estimator == "chi2":
        return floor + (m2 - 1.0).item()
    return floor + (m2 - m1 * m1).clamp_min(0.0).item()


def exact_s(
    theta_t: Tensor,
    theta_src: Tensor,
    correct: Tensor,
    k: int,
    gate: float = DEFAULT_GATE,
    estimator: str = "is_variance",
    floor: float = 1.0,
) -> float:
    """Exact S = Q / V (NaN when either is undefined), with Q from :func:`exact_q` and V from :func:`exact_v`.

    >>> exact_s(torch.zeros(1, 2), torch.zeros(1, 2), torch.tensor([[True, False]]), k=2)
    0.75
    """
    q = exact_q(theta_t, theta_src, correct, k, gate)
    v = exact_v(theta_t, theta_src, correct, k, gate, estimator, floor)
    return s_hat(q, v)


def exact_gradient_path(theta0: Tensor, correct: Tensor, steps: int, lr: float) -> list[Tensor]:
    """Deterministic gradient ascent on J with the closed-form gradient.

    Args:
        theta0: (P, A) initial logits.
        correct: (P, A) bool.
        steps: number of updates.
        lr: learning rate. J averages over prompts, so each prompt's logits move by lr / P times the gradient of
            its own p(x); learning rates of order P are normal here.

    Returns:
        ``steps + 1`` float64 (P, A) tensors: theta_0, theta_1, ..., theta_steps.

    >>> path = exact_gradient_path(torch.zeros(2, 3), torch.eye(2, 3, dtype=torch.bool), steps=3, lr=2.0)
    >>> len(path), expected_reward(path[3], torch.eye(2, 3, dtype=torch.bool)) > 1 / 3
    (4, True)
    """
    _check(theta0, correct)
    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}")
    theta = theta0.detach().double().clone()
    path = [theta]
    for _ in range(steps):
        theta = theta + lr * exact_gradient(theta, correct)
        path.append(theta)
    return path


@dataclass(frozen=True)
class QVSCurve:
    """Exact Q, V and S of the checkpoints ``path[t + delta]`` as guide sources for the present ``path[t]``.

    Attributes:
        deltas: the look-ahead distances (negative: a past checkpoint, i.e. replay; 0: the present itself).
        q, v, s: exact Q, V, S of each delta, in the order of ``deltas``.
    """

    deltas: list[int]
    q: list[float]
    v: list[float]
    s: list[float]

    @property
    def best_delta(self) -> int | None:
        """argmax of S over ``deltas`` (ties: the smallest delta), with the rule of ``core.signal.choose_delta``."""
        return choose_delta(self.deltas, self.q, self.v)[0]


def qvs_curve(
    path: Sequence[Tensor],
    t: int,
    deltas: Sequence[int],
    correct: Tensor,
    k: int,
    gate: float = DEFAULT_GATE,
    estimator: str = "is_variance",
    floor: float = 1.0,
) -> QVSCurve:
    """Exact Q(Delta), V(Delta), S(Delta) of the checkpoints ``path[t + Delta]`` measured at the present ``path[t]``.

    Args:
        path: checkpoints, e.g. from :func:`exact_gradient_path`.
        t: index of the present in ``path``.
        deltas: look-ahead distances; ``t + delta`` must index ``path``.
        correct: (P, A) bool.
        k: source samples per failed prompt (for Q).
        gate, estimator, floor: as in :func:`exact_v`.

    Returns:
        A :class:`QVSCurve`.

    >>> correct = torch.eye(2, 3, dtype=torch.bool)
    >>> path = exact_gradient_path(torch.zeros(2, 3), correct, steps=4, lr=2.0)
    >>> curve = qvs_curve(path, 2, [-2, 0, 2], correct, k=4)
    >>> curve.q[0] < curve.q[1] < curve.q[2], curve.v[1]
    (True, 1.0)
    """
    if not 0 <= t < len(path):
        raise ValueError(f"t = {t} is outside the path (length {len(path)})")
    q, v, s = [], [], []
    for d in deltas:
        if not 0 <= t + d < len(path):
            raise ValueError(f"t + delta = {t + d} is outside the path (length {len(path)})")
        q.append(exact_q(path[t], path[t + d], correct, k, gate))
        v.append(exact_v(path[t], path[t + d], correct, k, gate, estimator, floor))
        s.append(s_hat(q[-1], v[-1]))
    return QVSCurve(deltas=[int(d) for d in deltas], q=q, v=v, s=s)


def make_toy(
    n_prompts: int = 16,
    n_answers: int = 8,
    n_correct: int = 2,
    seed: int = 0,
    init_scale: float = 0.5,
    max_handicap: float = 3.0,
) -> tuple[Tensor, Tensor]:
    """A seeded toy instance whose initial policy is weak, so that most prompts fail.

    Choices (all seeded from ``seed``):

    * every prompt has ``n_correct`` correct answers, chosen at random among ``n_answers``;
    * every logit starts as ``init_scale`` times a standard normal draw;
    * the correct answers of prompt x are handicapped: their logits are lowered by ``h_x``, drawn uniformly from
      [0, ``max_handicap``] per prompt. Prompts therefore range from "nearly at chance" to "hard", and they are
      solved at different times along a gradient path, which spreads the source's improvement unevenly over
      the failed prompts (the source of V's variance).

    With the defaults (16 prompts, 8 answers, 2 correct) the chance level is 0.25 and the handicaps push the
    initial p(x) below that, so every prompt fails the 0.6 gate at step 0.

    Several correct answers per prompt is what gives S(Delta) an interior maximum. Along a gradient path the
    correct answer that is already ahead grows fastest, so a far-future policy concentrates on it and gives the
    other correct answer less probability than pi_t does. On such rows w = pi_t / pi_src is large, so V keeps
    growing with Delta while Q levels off near 1. On the default instance, with
    ``exact_gradient_path(theta0, correct, 200, lr=16.0)``, present t = 20 and k = 8, S with ``chi2`` peaks at
    Delta = 22 (5.44, down to 2.40 at Delta = 102); with ``is_variance`` S climbs to a plateau from Delta of about
    20 on (0.714 at Delta = 23 and 0.714 at its argmax, Delta = 102); with ``log_ratio`` it is largest at Delta = 2.
    With ``n_correct=1``, w <= 1 on every correct row, and S only rises with Delta.

    Args:
        n_prompts: P.
        n_answers: A.
        n_correct: correct answers per prompt (1 <= n_correct < A).
        seed: seed of the instance.
        init_scale: standard deviation of the initial logit noise.
        max_handicap: upper end of the per-prompt handicap on the correct answers' logits.

    Returns:
        ``(theta0, correct)``: (P, A) float64 logits and (P, A) bool.

    >>> theta0, correct = make_toy(seed=1)
    >>> correct.sum(-1).tolist() == [2] * 16, len(failed_prompts(theta0, correct)) == 16
    (True, True)
    """
    if not 1 <= n_correct < n_answers:
        raise ValueError(f"need 1 <= n_correct < n_answers, got n_correct={n_correct}, n_answers={n_answers}")
    g = torch.Generator().manual_seed(seed)
    order = torch.rand(n_prompts, n_answers, generator=g).argsort(-1)  # (P, A), a random permutation per prompt
    correct = torch.zeros(n_prompts, n_answers, dtype=torch.bool)
    correct.scatter_(1, order[:, :n_correct], True)
    theta0 = init_scale * torch.randn(n_prompts, n_answers, generator=g, dtype=torch.float64)
    handicap = max_handicap * torch.rand(n_prompts, 1, generator=g, dtype=torch.float64)  # (P, 1)
    theta0 = theta0 - handicap * correct.double()
    return theta0, correct


class ToyBandit:
    """The toy as a :class:`npo_lab.backend.Backend`: one answer per row, reward 1.0 when it is correct.

    The weights are a (P, A) logit table (an ``nn.Parameter``, in ``theta0``'s dtype); sampling uses a private
    ``torch.Generator`` (``self.gen``) that :meth:`save` and :meth:`load` capture and restore. A checkpoint is
    ``{"weights": {"theta": (P, A) tensor}, "rng": generator state}``; passing one as ``policy`` samples from
    (or scores under) that checkpoint without touching the current weights.

    Args:
        theta0: (P, A) initial logits.
        correct: (P, A) bool, the verifier's table.
        seed: seed of the sampling generator.

    >>> theta0, correct = make_toy(n_prompts=3, n_answers=4, n_correct=1)
    >>> be = ToyBandit(theta0, correct, seed=0)
    >>> b = be.rollout([0, 2], n=3)
    >>> b.size, tuple(b.mask.shape), b.group_ids.tolist()
    (6, (6, 1), [0, 0, 0, 2, 2, 2])
    """

    def __init__(self, theta0: Tensor, correct: Tensor, seed: int = 0):
        _check(theta0, correct)
        if not theta0.is_floating_point():
            raise ValueError(f"theta0 must be a floating-point tensor, got {theta0.dtype}")
        self.theta = nn.Parameter(theta0.detach().clone())  # (P, A) logits
        self.correct = correct.detach().bool().clone()  # (P, A)
        self.gen = torch.Generator().manual_seed(seed)

    @property
    def num_prompts(self) -> int:
        """P."""
        return self.theta.shape[0]

    def _table(self, policy: Checkpoint | None) -> Tensor:
        return self.theta if policy is None else policy["weights"]["theta"]

    def rollout(self, prompt_ids: Sequence[int], n: int, policy: Checkpoint | None = None) -> RolloutBatch:
        """``n`` rows per prompt, grouped prompt by prompt; one sampled answer per row.

        Args:
            prompt_ids: prompts to sample (ids in 0 .. P - 1; repeats allowed).
            n: rows per prompt.
            policy: ``None`` for the current weights, or a checkpoint from :meth:`save`.

        Returns:
            A batch with (B, 1) ``behavior_logprobs`` and ``mask``, (B,) rewards and group ids, and extras
            ``{"prompt": x, "answer": a}`` per row (B = len(prompt_ids) * n).
        """
        pids = torch.tensor(list(prompt_ids), dtype=torch.long).repeat_interleave(n)  # (B,)
        with torch.no_grad():
            logp_all = torch.log_softmax(self._table(policy)[pids], -1)  # (B, A)
            if len(pids):
                answers = torch.multinomial(logp_all.exp(), 1, generator=self.gen)  # (B, 1)
            else:
                answers = torch.zeros(0, 1, dtype=torch.long)
            behavior = logp_all.gather(-1, answers)  # (B, 1)
        rewards = self.correct[pids, answers.squeeze(-1)].to(behavior.dtype)  # (B,)
        return RolloutBatch.from_rows(
            behavior_logprobs=behavior,
            mask=torch.ones_like(behavior),
            rewards=rewards,
            group_ids=pids,
            extras=[{"prompt": p, "answer": a} for p, a in zip(pids.tolist(), answers.squeeze(-1).tolist())],
        )

    def logprobs(self, batch: RolloutBatch, policy: Checkpoint | None = None) -> tuple[Tensor, Tensor | None]:
        """(B, 1) log-probs of the rows' answers and (B, 1) entropies of pi(. | x); differentiable when
        ``policy`` is None."""
        pids = torch.tensor([e["prompt"] for e in batch.extras], dtype=torch.long)  # (B,)
        answers = torch.tensor([e["answer"] for e in batch.extras], dtype=torch.long).unsqueeze(-1)  # (B, 1)
        logp_all = torch.log_softmax(self._table(policy)[pids], -1)  # (B, A)
        entropy = -(logp_all.exp() * logp_all).sum(-1, keepdim=True)  # (B, 1)
        return logp_all.gather(-1, answers), entropy

    def parameters(self) -> Iterator[nn.Parameter]:
        """The logit table."""
        yield self.theta

    def save(self) -> Checkpoint:
        """A copy of the logits and of the sampling generator's state."""
        return {"weights": {"theta": self.theta.detach().clone()}, "rng": self.gen.get_state()}

    def load(self, checkpoint: Checkpoint) -> None:
        """Restore the logits and the sampling generator exactly as :meth:`save` captured them."""
        with torch.no_grad():
            self.theta.copy_(checkpoint["weights"]["theta"])
        self.gen.set_state(checkpoint["rng"])

    def evaluate(self) -> dict[str, float]:
        """Exact (not sampled) mean success probability of the current weights over all prompts."""
        return {"eval/accuracy": expected_reward(self.theta, self.correct)}


__all__ = [
    "DEFAULT_GATE",
    "QVSCurve",
    "ToyBandit",
    "exact_gradient",
    "exact_gradient_path",
    "exact_q",
    "exact_s",
    "exact_v",
    "expected_reward",
    "failed_prompts",
    "make_toy",
    "policy_probs",
    "qvs_curve",
    "success_prob",
]
