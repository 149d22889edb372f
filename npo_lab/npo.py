"""NPO's control flow: snapshot, look ahead, keep the near-future checkpoint, roll back.

At an intervention step t (NPO, arXiv 2604.20733):

1. snapshot the whole training state (weights + backend RNG, optimizer, global RNGs, data cursor);
2. train ahead ``delta`` plain GRPO steps, then keep pi_{t+delta} (``backend.save()``);
3. restore step t exactly;
4. train on from t, replacing one slot of each failing group with a verified-correct row from pi_{t+delta}.

Everything here is written against the five-method backend protocol, so it runs unchanged on every backend.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor

from npo_lab.autonpo import AutoNPOController, MistakePool
from npo_lab.backend import Checkpoint
from npo_lab.batch import RolloutBatch
from npo_lab.config import AutoNPOConfig, GRPOConfig, NPOConfig
from npo_lab.core.qvs import choose_delta
from npo_lab.qvs import measure_sources
from npo_lab.sources import GuidePlan, GuideSource, failing_groups, policy_rows_for
from npo_lab.utils import capture_rng, restore_rng


@dataclass
class Snapshot:
    """Everything needed to continue a run from one step exactly."""

    step: int
    policy: Checkpoint
    optimizer: dict[str, Any]
    rng: dict[str, Any]
    sampler: dict[str, int]


def snapshot(state: Any) -> Snapshot:
    """Capture ``state`` (a :class:`npo_lab.trainer.TrainState`)."""
    return Snapshot(
        step=state.step,
        policy=state.backend.save(),
        optimizer=copy.deepcopy(state.optimizer.state_dict()),
        rng=capture_rng(),
        sampler=state.sampler.state_dict(),
    )


def restore(state: Any, snap: Snapshot, restore_optimizer: bool = True) -> None:
    """Put ``state`` back exactly where ``snap`` was taken (the optimizer optionally kept as it is)."""
    state.backend.load(snap.policy)
    if restore_optimizer:
        state.optimizer.load_state_dict(copy.deepcopy(snap.optimizer))
    restore_rng(snap.rng)
    state.sampler.load_state_dict(snap.sampler)
    state.step = snap.step


@dataclass
class LookaheadResult:
    """The near-future checkpoints and what they cost."""

    checkpoints: dict[int, Checkpoint]
    """pi_{t+Delta} for every kept Delta."""
    steps: int
    seconds: float
    metrics: list[dict[str, float]] = field(default_factory=list)

    @property
    def checkpoint(self) -> Checkpoint:
        """The furthest checkpoint, pi_{t+steps}."""
        return self.checkpoints[self.steps]


def lookahead(
    state: Any,
    delta: int | Sequence[int],
    plain_step: Callable[[], dict[str, float]],
    restore_optimizer: bool = True,
) -> LookaheadResult:
    """Train ahead plain steps, keep pi_{t+Delta} for each requested Delta, and roll back to step t.

    Args:
        state: the training state (backend, optimizer, sampler, step).
        delta: the look-ahead distance, or several (one run of max(delta) steps keeps each).
        plain_step: runs one plain GRPO step on ``state`` and returns its metrics.
        restore_optimizer: restore the optimizer on rollback (exact rollback).
    """
    keep = sorted({int(d) for d in ([delta] if isinstance(delta, int) else delta)})
    if not keep or keep[0] < 1:
        raise ValueError(f"look-ahead distances must be >= 1, got {delta!r}")
    t0 = time.perf_counter()
    snap = snapshot(state)
    history, checkpoints = [], {}
    for i in range(1, keep[-1] + 1):
        history.append(plain_step())
        if i in keep:
            checkpoints[i] = state.backend.save()
    restore(state, snap, restore_optimizer)
    return LookaheadResult(checkpoints, keep[-1], time.perf_counter() - t0, history)


class NearFutureGuide(GuideSource):
    """NPO's guide source with a manual intervention schedule (early bootstrap, plateau breakthrough).

    ``before_step`` runs the look-ahead at each scheduled step; while the guidance window is open, each
    group below ``npo.gate`` gets ``npo.guide_slots`` verified-correct rows of pi_{t+Delta} in its slots.
    """

    name = "npo"

    def __init__(self, cfg: NPOConfig, total_steps: int, correct_threshold: float = 0.5) -> None:
        super().__init__()
        self.cfg, self.thr = cfg, correct_threshold
        self.schedule = cfg.intervention_steps(total_steps)
        self.total_steps = total_steps
        self.checkpoint: Checkpoint | None = None
        self.until = -1

    def _open_window(self, t: int, checkpoint: Checkpoint, default_end: int) -> None:
        self.checkpoint = checkpoint
        end = min(default_end, self.total_steps)
        self.until = min(end, t + self.cfg.guidance_window) if self.cfg.guidance_window else end

    def state_dict(self) -> dict[str, Any]:
        # the guide checkpoint pi_{t+Delta} (a backend checkpoint: weights + RNG, or a folder) and its window
        return {**super().state_dict(), "checkpoint": self.checkpoint, "until": self.until}

    def load_state_dict(self, d: dict[str, Any]) -> None:
        super().load_state_dict(d)
        self.checkpoint, self.until = d["checkpoint"], int(d["until"])

    def before_step(self, state: Any, plain_step: Callable[[], dict[str, float]]) -> dict[str, float]:
        """Look ahead if ``state.step`` is an intervention step; returns ``npo/*`` metrics."""
        t = state.step
        if t not in self.schedule:
            return {}
        res = lookahead(state, self.cfg.delta, plain_step, self.cfg.restore_optimizer)
        later = [s for s in self.schedule if s > t]
        self._open_window(t, res.checkpoint, later[0] if later else self.total_steps)
        self.intervention_costs.append(res.steps)
        self.lookahead_seconds += res.seconds
        self.interventions.append(t)
        end_reward = res.metrics[-1].get("reward/on_policy_mean", float("nan"))
        self.event(step=t, kind="intervention", delta=self.cfg.delta, lookahead_reward_end=end_reward)
        return {
            "npo/intervention": 1.0,
            "npo/delta": float(self.cfg.delta),
            "npo/lookahead_steps": float(self.lookahead_steps),
            "npo/lookahead_s": res.seconds,
            "npo/lookahead_reward_end": end_reward,
        }

    def policy_for(self, step: int) -> Checkpoint | None:
        """The guide checkpoint if guidance is active at ``step``."""
        return self.checkpoint if step < self.until else None

    def guides(self, state: Any, batch: RolloutBatch, grpo: GRPOConfig) -> GuidePlan | None:
        policy = self.policy_for(state.step)
        if policy is None:
            return None
        rows, gated = policy_rows_for(state, batch, grpo, policy, self.cfg.gate, self.cfg.guide_samples)
        plan_rows = rows if rows is not None else batch.select([])
        loss = dict(guide_loss=self.cfg.guide_loss, shaping_gamma=self.cfg.shaping_gamma, is_cap=self.cfg.is_cap)
        return GuidePlan(plan_rows, gated, "replace", self.cfg.guide_slots, self.cfg.slot, loss)


class AutoNPOGuide(NearFutureGuide):
    """AutoNPO: NPO whose interventions are triggered online and whose Delta maximises Q-hat / V-hat.

    At a trigger (:class:`npo_lab.autonpo.AutoNPOController`): one look-ahead run of max(candidates) steps
    keeps pi_{t+Delta} for every candidate; after the rollback each candidate samples ``q_samples`` rows on
    the most recent mistake-pool prompts; Delta* = argmax Q-hat / V-hat (:func:`npo_lab.core.qvs.choose_delta`)
    guides the next ``cooldown`` steps with NPO's gate and slots. Every decision is an event.
    """

    name = "autonpo"

    def __init__(self, auto: AutoNPOConfig, cfg: NPOConfig, total_steps: int, correct_threshold: float = 0.5) -> None:
        super().__init__(cfg, total_steps, correct_threshold)
        self.schedule = []
        self.auto = auto
        self.controller = AutoNPOController(auto)
        self.pool = MistakePool(auto.pool_size, auto.pool_refresh)
        self.chosen: list[int] = []

    def state_dict(self) -> dict[str, Any]:
        return {
            **super().state_dict(),
            "controller": self.controller.state_dict(),
            "pool": self.pool.state_dict(),
            "chosen": list(self.chosen),
        }

    def load_state_dict(self, d: dict[str, Any]) -> None:
        super().load_state_dict(d)
        self.controller.load_state_dict(d["controller"])
        self.pool.load_state_dict(d["pool"])
        self.chosen = list(d["chosen"])

    def before_step(self, state: Any, plain_step: Callable[[], dict[str, float]]) -> dict[str, float]:
        t = state.step
        reason = self.controller.trigger(t)
        c = self.controller
        m = {
            "autonpo/pool_size": float(len(self.pool)),
            "autonpo/reward_slope": c.reward_slope(),
            # the two signals the triggers read, as the controller sees them
            "autonpo/smoothed_reward": c.smoothed[-1] if c.smoothed else float("nan"),
            "autonpo/entropy_ema": c.entropy_ema if c.entropy_ema is not None else float("nan"),
        }
        if reason is None:
            return m
        prompts = self.pool.prompts(self.auto.q_prompts)
        if not prompts:
            self.event(step=t, kind="skipped", reason=reason, why="the mistake pool is empty")
            self.controller.record(t, counted=False)  # wait a cooldown before asking again
            return m
        t0 = time.perf_counter()
        res = lookahead(state, self.auto.candidates, plain_step, self.cfg.restore_optimizer)
        # scored after the rollback: the backend's current weights are pi_t again
        scores = measure_sources(
            state.backend,
            prompts,
            res.checkpoints,
            k=self.auto.q_samples,
            correct_threshold=self.thr,
            estimator=self.auto.v_estimator,
            floor=self.auto.v_floor,
            max_grad_rows=self.auto.max_grad_rows,
        )
        deltas = sorted(scores)
        best, s = choose_delta(deltas, [scores[d]["q"] for d in deltas], [scores[d]["v"] for d in deltas])
        seconds = time.perf_counter() - t0  # look-ahead + scoring every candidate
        scoring_rows = len(prompts) * self.auto.q_samples * len(deltas)
        self.controller.record(t)
        self.intervention_costs.append(res.steps)
        self.lookahead_seconds += seconds
        self.interventions.append(t)
        self.event(
            step=t,
            kind="intervention",
            reason=reason,
            pool=len(prompts),
            reward_slope=self.controller.reward_slope(),
            candidates={d: scores[d] for d in deltas},
            delta=best,
            scoring_rows=scoring_rows,
            seconds=seconds,
        )
        if best is not None:
            self.chosen.append(best)
            self._open_window(t, res.checkpoints[best], t + self.auto.cooldown)
        m.update(
            {
                "autonpo/triggered": 1.0,
                "autonpo/reason_" + reason: 1.0,
                "autonpo/delta": float(best) if best is not None else float("nan"),
                "autonpo/q_hat": scores[best]["q"] if best is not None else float("nan"),
                "autonpo/v_hat": scores[best]["v"] if best is not None else float("nan"),
                "autonpo/s_hat": max((x for x in s if x == x), default=float("nan")),
                "autonpo/scoring_rows": float(scoring_rows),
                "npo/lookahead_steps": float(self.lookahead_steps),
                "npo/lookahead_s": seconds,
            }
        )
        return m

    def after_step(
        self,
        state: Any,
        batch: RolloutBatch,
        entropy: Tensor | None,
        metrics: dict[str, float],
        rollout: RolloutBatch,
    ) -> None:
        # group accuracy of the full on-policy group, before a guide replaced one of its rows
        acc, _ = failing_groups(rollout, self.cfg.gate, self.thr)
        self.pool.update(acc, self.cfg.gate)
        ent = None
        if entropy is not None:  # mean token entropy of the policy on its own (on-policy) rows
            on = (~batch.is_guide).unsqueeze(-1).float() * batch.mask  # (B, T)
            ent = ((entropy * on).sum() / on.sum().clamp(min=1.0)).item()
        self.controller.observe(state.step - 1, metrics["reward/on_policy_mean"], ent)
