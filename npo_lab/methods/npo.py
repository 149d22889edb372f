"""NPO, Near-Future Policy Optimization (arXiv 2604.20733): guides from the run's own near future.

At an intervention step t (scheduled by ``npo.interventions`` / ``npo.every``, or at a plateau detected online):

1. the loop trains ahead ``npo.delta`` plain GRPO steps, keeps pi_{t+Delta} and rolls back to t exactly
   (:meth:`NPO.wants_lookahead` asks for it). At t = 0 this is the paper's early bootstrap: a scout run from the
   start weights, then a restart from them; later, the plateau breakthrough: train on through the plateau, roll
   back to its start;
2. the replayed segment [t, t + Delta) is the guided window (``npo.window``). With ``npo.guide_source = cache``
   (the paper's), pi_{t+Delta} samples ``npo.guide_samples`` answers for every prompt the segment will draw (the
   rollback restored the data cursor, so they are known) and one verified-correct row per prompt is cached
   (:meth:`NPO.use_lookahead`);
3. in each guided step, every group whose on-policy accuracy passes the gate (p-hat <= ``npo.gate``) gets its last
   slot replaced by the cached row of its prompt (:meth:`NPO.guides`).

With ``npo.future = extrapolate`` (beyond the paper) step 1 costs nothing: the guide is theta_t + alpha (theta_t -
theta_{t-k}) (:mod:`npo_lab.train.extrapolate`), the weights copied k steps before the intervention; the window
[t, t + Delta) is then trained for the first time, not replayed.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from npo_lab.backend import Checkpoint
from npo_lab.batch import RolloutBatch
from npo_lab.config import AutoNPOConfig, GRPOConfig, MethodConfigs, NPOConfig
from npo_lab.methods.base import failing_groups, verified_rows
from npo_lab.methods.controller import AutoNPOController
from npo_lab.methods.grpo import GRPO
from npo_lab.train.extrapolate import extrapolated_checkpoint, parameter_copy
from npo_lab.train.method import GuidePlan, LookaheadRequest, StepOutcome
from npo_lab.train.rollback import LookaheadResult
from npo_lab.train.state import TrainState

CACHE_CHUNK = 64
"""Prompts per rollout call when a guide cache is filled (bounds the memory of one call)."""


class GuideCache:
    """One verified-correct trajectory per prompt, from one guide policy (the paper's cache of guides).

    >>> GuideCache().coverage([1, 2])
    0.0
    """

    def __init__(self) -> None:
        self.rows: dict[int, RolloutBatch] = {}

    def __len__(self) -> int:
        return len(self.rows)

    def fill(self, state: TrainState, policy: Checkpoint, prompts: list[int], samples: int, thr: float) -> int:
        """Sample ``samples`` rows of ``policy`` for each prompt and keep the first verified-correct one of each
        (prompts it cannot solve stay out). Returns the number of rows sampled."""
        self.rows = {}
        sampled = 0
        for start in range(0, len(prompts), CACHE_CHUNK):
            rows = state.backend.rollout(prompts[start : start + CACHE_CHUNK], samples, policy=policy)
            sampled += rows.size
            self.rows.update(verified_rows(rows, thr))
        return sampled

    def plan_rows(self, prompts: list[int], like: RolloutBatch) -> tuple[RolloutBatch, list[int]]:
        """The cached rows of ``prompts`` (those that have one) and which prompts they are."""
        hits = [p for p in prompts if p in self.rows]
        return (RolloutBatch.cat([self.rows[p] for p in hits]) if hits else like.select([])), hits

    def coverage(self, prompts: list[int]) -> float:
        """Fraction of ``prompts`` with a cached row (0 when there are none)."""
        return sum(p in self.rows for p in prompts) / len(prompts) if prompts else 0.0

    def state_dict(self) -> list[list[Any]]:
        return [[p, row.state_dict()] for p, row in self.rows.items()]

    def load_state_dict(self, d: list[list[Any]]) -> None:
        self.rows = {int(p): RolloutBatch.from_state_dict(row) for p, row in d}


class NPO(GRPO):
    """NPO with its interventions on a schedule (``npo.when = schedule``) or at detected plateaus (``plateau``)."""

    name = "npo"

    def __init__(
        self, cfg: NPOConfig, total_steps: int, grpo: GRPOConfig, plateau: AutoNPOConfig | None = None
    ) -> None:
        super().__init__()
        self.cfg, self.thr, self.prompts_per_step = cfg, grpo.correct_threshold, grpo.prompts_per_step
        self.schedule = cfg.intervention_steps(total_steps)
        self.total_steps = total_steps
        self.checkpoint: Checkpoint | None = None
        """pi_{t+Delta} of the latest intervention."""
        self.start, self.until = -1, -1
        """Guidance is on for steps in [start, until)."""
        self.cache = GuideCache()
        self.past: dict[int, list[Any]] = {}
        """future=extrapolate: theta_{s-k} for each scheduled intervention s still to come."""
        self.pending: dict[str, float] = {}
        """future=extrapolate: the intervention's metrics, logged with its first step."""
        self.detector: AutoNPOController | None = None
        later = len(cfg.interventions) - int(0 in cfg.interventions)
        if cfg.when == "plateau" and later > 0:  # the stagnation test alone, at most len(interventions) in all
            # (later == 0: no plateau intervention at all; the controller would read max_interventions=0 as no cap)
            auto = plateau or AutoNPOConfig()
            self.detector = AutoNPOController(
                dataclasses.replace(
                    auto,
                    mode="lookahead",
                    bootstrap_until=0,
                    entropy_floor=0.0,
                    entropy_fraction=0.0,
                    max_interventions=later,
                )  # fmt: skip
            )

    @classmethod
    def from_configs(cls, cfgs: MethodConfigs, *, total_steps: int, grpo: GRPOConfig, **_: Any) -> NPO:
        return cls(cfgs.npo, total_steps, grpo, cfgs.autonpo)

    # ---- when: look ahead at a scheduled step, or at a plateau --------------------------------------------
    def wants_lookahead(self, state: TrainState) -> LookaheadRequest | None:
        t = state.step
        if self.cfg.future == "extrapolate":  # no look-ahead: the guide is extrapolated from the run's own past
            self._extrapolate(state)
            return None
        due = t in self.schedule
        if self.detector is not None and not due and self.detector.trigger(t) is not None:
            due = True
            self.event(step=t, kind="plateau", reward_slope=self.detector.reward_slope())
        return LookaheadRequest((self.cfg.delta,), self.cfg.restore_optimizer) if due else None

    def use_lookahead(self, state: TrainState, result: LookaheadResult) -> dict[str, float]:
        t = state.step
        if self.detector is not None:
            self.detector.record(t, counted=t > 0)  # the early bootstrap is not one of the plateau interventions
        end_reward = result.metrics[-1].get("reward/on_policy_mean", float("nan"))
        return self._begin_guidance(state, result.checkpoint, {"lookahead_reward_end": end_reward})

    def _extrapolate(self, state: TrainState) -> None:
        """future=extrapolate: copy theta_{s-k} k steps before each intervention s; at s, guide from the
        extrapolated checkpoint (its metrics go out with the step's guide plan)."""
        t, k = state.step, self.cfg.extrapolate_k
        if t + k in self.schedule:
            self.past[t + k] = parameter_copy(state.backend)
        if t in self.schedule and t in self.past:
            checkpoint, norm = extrapolated_checkpoint(state.backend, self.past.pop(t), self.cfg.alpha)
            info = {"extrapolate_alpha": self.cfg.alpha, "extrapolate_k": float(k), "extrapolate_norm": norm}
            self.pending = self._begin_guidance(state, checkpoint, info)

    def _begin_guidance(self, state: TrainState, checkpoint: Checkpoint, info: dict[str, float]) -> dict[str, float]:
        """Guide the window [t, end) from ``checkpoint``; with the cache, fill it for the window's prompts."""
        t = state.step
        self.checkpoint, self.start, self.until = checkpoint, t, self._window_end(t)
        m = {"npo/intervention": 1.0, "npo/delta": float(self.cfg.delta), **{f"npo/{k}": v for k, v in info.items()}}
        ev: dict[str, Any] = {"delta": self.cfg.delta, **info, "window": [t, self.until]}
        if self.cfg.guide_source == "cache":
            # the window draws exactly these prompts (after a look-ahead, the rollback restored the data cursor)
            segment = state.sampler.peek(self.until - t, self.prompts_per_step)
            prompts = sorted({p for step in segment for p in step})
            sampled = self.cache.fill(state, checkpoint, prompts, self.cfg.guide_samples, self.thr)
            m.update({"npo/cache_size": float(len(self.cache)), "npo/cache_rollouts": float(sampled)})
            ev.update(cache_prompts=len(prompts), cache_size=len(self.cache), cache_rollouts=sampled)
        self.event(step=t, kind="intervention", **ev)
        return m

    def _window_end(self, t: int) -> int:
        """The end of the guided window of an intervention at t (exclusive)."""
        if self.cfg.window == "segment":
            end = t + self.cfg.delta
        else:  # until the next scheduled intervention (a plateau intervention closes the window when it comes)
            later = [s for s in self.schedule if s > t]
            end = later[0] if later else self.total_steps
        if self.cfg.guidance_window:
            end = min(end, t + self.cfg.guidance_window)
        return min(end, self.total_steps)

    def policy_for(self, step: int) -> Checkpoint | None:
        """The guide checkpoint if guidance is on at ``step``."""
        return self.checkpoint if self.start <= step < self.until else None

    # ---- the guided steps -------------------------------------------------------------------------------
    def guides(self, state: TrainState, batch: RolloutBatch, grpo: GRPOConfig) -> GuidePlan | None:
        policy = self.policy_for(state.step)
        if policy is None:
            return None
        _, gated = failing_groups(batch, self.cfg.gate, self.thr, self.cfg.gate_op)
        loss = dict(guide_loss=self.cfg.guide_loss, shaping_gamma=self.cfg.shaping_gamma, is_cap=self.cfg.is_cap)
        if self.cfg.guide_source == "cache":
            rows, hits = self.cache.plan_rows(gated, batch)
            metrics = {
                "guide/cache_size": float(len(self.cache)),
                "guide/cache_coverage": self.cache.coverage(gated),
                "guide/cache_hits": float(len(hits)),
            }
            metrics.update(self.pending)
            self.pending = {}
            return GuidePlan(rows, gated, "replace", self.cfg.guide_slots, self.cfg.slot, loss, metrics)
        rows = state.backend.rollout(gated, self.cfg.guide_samples, policy=policy) if gated else batch.select([])
        metrics, self.pending = self.pending, {}
        return GuidePlan(rows, gated, "replace", self.cfg.guide_slots, self.cfg.slot, loss, metrics)

    def after_step(self, state: TrainState, outcome: StepOutcome) -> None:
        if self.detector is not None:
            self.detector.observe(state.step - 1, outcome.metrics["reward/on_policy_mean"])

    # ---- exact resume -----------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        # the guide checkpoint pi_{t+Delta} (a backend checkpoint: weights + RNG, or a folder), its window, its cache
        d = {**super().state_dict(), "checkpoint": self.checkpoint, "start": self.start, "until": self.until}
        d["cache"] = self.cache.state_dict()
        d["past"] = [[s, params] for s, params in sorted(self.past.items())]
        d["pending"] = dict(self.pending)
        if self.detector is not None:
            d["detector"] = self.detector.state_dict()
        return d

    def load_state_dict(self, d: dict[str, Any]) -> None:
        if "start" not in d:
            raise ValueError(
                "this checkpoint was written by npo_lab before NPO cached its guides and guided the replayed segment "
                "(its NPO state has no 'start'): the run cannot continue exactly under today's NPO; start it again"
            )
        super().load_state_dict(d)
        self.checkpoint, self.start, self.until = d["checkpoint"], int(d["start"]), int(d["until"])
        self.cache.load_state_dict(d["cache"])
        self.past = {int(s): list(params) for s, params in d.get("past", [])}
        self.pending = {str(k): float(v) for k, v in d.get("pending", {}).items()}
        if self.detector is not None:
            self.detector.load_state_dict(d["detector"])
