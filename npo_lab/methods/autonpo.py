"""AutoNPO (arXiv 2604.20733): interventions decided online, their distance Delta* = argmax Q-hat / V-hat.

The paper's AutoNPO is retrospective, the present teaching its past [paper-reading] (:class:`AutoNPO`,
``autonpo.mode = retrospective``, the default):

1. a mistake pool keeps recently failed prompts with the step each failed at (:class:`MistakePool`);
2. warning: the smoothed reward stagnates *and* the entropy keeps falling (:meth:`AutoNPOController.warning`);
3. confirmation: the current policy pi_t probes the pool: ``q_samples`` answers per prompt of each candidate's
   slice B_Delta (the prompts that failed around t - Delta);
4. Delta* = argmax over the candidates with a saved snapshot of Q-hat(Delta) / V-hat(Delta): Q-hat = pi_t's pass
   rate on B_Delta, V-hat = exp(beta * per-token KL) between pi_t and pi_{t-Delta} on pi_t's verified rows; both
   read from that one probe (a log-prob pass of pi_{t-Delta}, no extra generation);
5. pi_t's verified answers to B_Delta* are cached, training rolls back to t - Delta* exactly (weights, optimizer,
   every RNG, data cursor: the replay meets the same prompts) and replays the segment, replacing the last slot of a
   gated group only for the cached mistake-pool prompts.

``autonpo.mode = lookahead`` keeps this toolkit's earlier reading (:class:`AutoNPOLookahead`): at a trigger, look
ahead max(candidates) steps, score every candidate checkpoint on the pool, guide from the best for ``cooldown``
steps with guide rows sampled online.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import torch

from npo_lab.backend import Checkpoint
from npo_lab.batch import RolloutBatch
from npo_lab.config import AutoNPOConfig, GRPOConfig, MethodConfigs, NPOConfig
from npo_lab.core.signal import choose_delta, q_hat, s_hat, v_hat
from npo_lab.methods.base import failing_groups, verified_rows
from npo_lab.methods.controller import AutoNPOController, MistakePool, slope
from npo_lab.methods.npo import NPO
from npo_lab.train.method import GuidePlan, LookaheadRequest, RollbackRequest, SnapshotRing, StepOutcome
from npo_lab.train.probe import measure_sources
from npo_lab.train.rollback import LookaheadResult
from npo_lab.train.state import TrainState

__all__ = ["AutoNPO", "AutoNPOController", "AutoNPOLookahead", "MistakePool", "slope"]


class _AutoNPOBase(NPO):
    """What both readings share: the controller, the mistake pool, and observing each step."""

    def __init__(self, auto: AutoNPOConfig, cfg: NPOConfig, total_steps: int, grpo: GRPOConfig) -> None:
        super().__init__(cfg, total_steps, grpo)
        self.schedule, self.detector = [], None  # AutoNPO decides its interventions itself
        self.auto = auto
        self.controller = AutoNPOController(auto)
        self.pool = MistakePool(auto.pool_size, auto.pool_refresh)
        self.chosen: list[int] = []

    def metrics(self, state: TrainState) -> dict[str, float]:
        c = self.controller
        return {
            "autonpo/pool_size": float(len(self.pool)),
            "autonpo/reward_slope": c.reward_slope(),
            # the signals the triggers read, as the controller sees them
            "autonpo/smoothed_reward": c.smoothed[-1] if c.smoothed else float("nan"),
            "autonpo/entropy_ema": c.entropy_ema if c.entropy_ema is not None else float("nan"),
            "autonpo/entropy_slope": c.entropy_slope(),
        }

    def after_step(self, state: TrainState, outcome: StepOutcome) -> None:
        # group accuracy of the full on-policy group, before a guide replaced one of its rows
        acc, _ = failing_groups(outcome.rollout, self.cfg.gate, self.thr, self.cfg.gate_op)
        self.pool.update(acc, self.cfg.gate, state.step - 1, self.cfg.gate_op)
        ent = None
        batch, entropy = outcome.batch, outcome.entropy
        if entropy is not None:  # mean token entropy of the policy on its own (on-policy) rows
            on = (~batch.is_guide).unsqueeze(-1).float() * batch.mask  # (B, T)
            ent = ((entropy * on).sum() / on.sum().clamp(min=1.0)).item()
        self.controller.observe(state.step - 1, outcome.metrics["reward/on_policy_mean"], ent)

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


class AutoNPO(_AutoNPOBase):
    """Retrospective AutoNPO: on a plateau, roll back Delta* steps and replay them with the present's answers."""

    name = "autonpo"

    def __init__(self, auto: AutoNPOConfig, cfg: NPOConfig, total_steps: int, grpo: GRPOConfig) -> None:
        super().__init__(auto, cfg, total_steps, grpo)
        self.snapshots = SnapshotRing(every=auto.snapshot_every, horizon=max(auto.candidates))
        self._last: dict[str, float] = {}  # the chosen candidate's scores, from wants_rollback to use_rollback

    @classmethod
    def from_configs(cls, cfgs: MethodConfigs, *, total_steps: int, grpo: GRPOConfig, **_: Any) -> NPO:
        if cfgs.autonpo.mode == "lookahead":
            return AutoNPOLookahead(cfgs.autonpo, cfgs.npo, total_steps, grpo)
        return cls(cfgs.autonpo, cfgs.npo, total_steps, grpo)

    def slices(self, t: int, deltas: list[int]) -> dict[int, list[int]]:
        """B_Delta for each candidate: the pool prompts that failed in [t - Delta, t - Delta_prev) (``band``, with
        Delta_prev the next shorter candidate, 0 for the shortest) or in [t - Delta, t) (``since``)."""
        out, prev = {}, 0
        for d in sorted(deltas):
            hi = t - prev if self.auto.slice == "band" else t
            out[d] = self.pool.failed_in(t - d, hi)
            prev = d
        return out

    def wants_rollback(self, state: TrainState, past: dict[int, Checkpoint]) -> RollbackRequest | None:
        t = state.step
        if t % self.auto.snapshot_every or self.controller.warning(t) is None:
            return None
        deltas = [d for d in self.auto.candidates if t - d in past]
        slices = self.slices(t, deltas)
        # the probe's budget is split over the candidate slices (the most recent prompts of each), so a pool full of
        # recent failures cannot leave the longer distances unscored
        # (nested ``since`` slices: a candidate's share is taken from the prompts no shorter candidate's slice holds)
        per = max(1, self.auto.q_prompts // max(len(deltas), 1))
        probe: list[int] = []
        shorter: set[int] = set()
        for d in deltas:
            probe += [p for p in slices[d] if p not in shorter][:per]
            shorter |= set(slices[d])
        if not deltas or not probe:
            why = "no snapshot that far back" if not deltas else "no pool prompt failed in the candidate slices"
            self.event(step=t, kind="skipped", reason="plateau", why=why)
            self.controller.record(t, counted=False)  # wait a cooldown before asking again
            return None
        # the confirmation probe: pi_t (the current weights) answers the pool prompts of every candidate slice
        rows = state.backend.rollout(probe, self.auto.q_samples)
        logp_t = rows.behavior_logprobs
        if torch.isnan(logp_t).any():  # a backend that leaves them to the trainer: one forward of pi_t
            with torch.no_grad():
                logp_t = state.backend.logprobs(rows)[0]
        rows = rows.replace(behavior_logprobs=logp_t)
        probed = set(probe)
        scores: dict[int, dict[str, float]] = {}
        for d in deltas:
            sl = [p for p in slices[d] if p in probed]
            scores[d] = self._score(state, rows, sl, past[t - d])
        best, _ = choose_delta(deltas, [scores[d]["q"] for d in deltas], [scores[d]["v"] for d in deltas])
        # pi_t's verified answers to the chosen slice are what the replay teaches; with none, the replay would
        # repeat the discarded steps exactly (every RNG is restored), so nothing is rolled back
        chosen = set(slices[best]) if best is not None else set()
        picked = [i for i, p in enumerate(rows.group_ids.tolist()) if p in chosen]
        teach = verified_rows(rows.select(picked), self.thr) if picked else {}
        if not teach:
            self.event(
                step=t,
                kind="skipped",
                reason="plateau",
                why="pi_t has no verified answer to teach in the best candidate's slice (S-hat 0 or none)",
                candidates={d: scores[d] for d in deltas},
            )
            self.controller.record(t, counted=False)  # wait a cooldown before asking again
            return None
        self.controller.record(t)
        self.event(
            step=t,
            kind="intervention",
            reason="plateau",
            reward_slope=self.controller.reward_slope(),
            entropy_slope=self.controller.entropy_slope(),
            pool=len(self.pool),
            probe_prompts=len(probe),
            probe_rows=rows.size,
            candidates={d: scores[d] for d in deltas},
            delta=best,
        )
        # pi_t's verified answers to the chosen slice guide the replay; the pool forgets the failures it replays
        self.cache.rows = teach
        self.checkpoint, self.start, self.until = None, t - best, t
        self.pool.forget_from(t - best)
        self.chosen.append(best)
        self._last = {"delta": float(best), **{k: scores[best][k] for k in ("q", "v", "s")}, "probe_rows": rows.size}
        return RollbackRequest(to_step=t - best, reason="plateau")

    def _score(self, state: TrainState, rows: RolloutBatch, slice_prompts: list[int], past: Checkpoint) -> dict:
        """Q-hat, V-hat and S-hat of rolling back to the snapshot ``past``: pi_t's pass rate on the slice, and the
        cost of teaching pi_t's verified answers to the past policy."""
        nan = float("nan")
        if not slice_prompts:
            return {"q": nan, "v": nan, "s": nan, "slice": 0.0, "correct_rows": 0.0}
        keep = set(slice_prompts)
        mine = rows.select([i for i, p in enumerate(rows.group_ids.tolist()) if p in keep])
        q = q_hat(mine.rewards, mine.group_ids, slice_prompts, self.thr)
        correct = mine.select(torch.nonzero(mine.rewards > self.thr).squeeze(-1)).trim()
        v = nan
        if correct.size:
            with torch.no_grad():
                logp_past = state.backend.logprobs(correct, policy=past)[0]  # (B, T) under pi_{t-Delta}
            v = v_hat(
                logp_past, correct.behavior_logprobs, correct.mask,
                estimator=self.auto.v, floor=self.auto.v_floor, kl_beta=self.auto.kl_beta,
            )  # fmt: skip
        return {
            "q": q,
            "v": v,
            "s": s_hat(q, v),
            "slice": float(len(slice_prompts)),
            "correct_rows": float(correct.size),
        }

    def use_rollback(self, state: TrainState, request: RollbackRequest) -> dict[str, float]:
        last, self._last = self._last, {}
        return {
            "autonpo/triggered": 1.0,
            "autonpo/delta": last["delta"],
            "autonpo/q_hat": last["q"],
            "autonpo/v_hat": last["v"],
            "autonpo/s_hat": last["s"],
            "autonpo/probe_rows": float(last["probe_rows"]),
            "autonpo/cache_size": float(len(self.cache)),
        }

    def wants_lookahead(self, state: TrainState) -> LookaheadRequest | None:
        return None  # the retrospective reading never trains ahead

    def guides(self, state: TrainState, batch: RolloutBatch, grpo: GRPOConfig) -> GuidePlan | None:
        if not self.start <= state.step < self.until:
            return None
        _, gated = failing_groups(batch, self.cfg.gate, self.thr, self.cfg.gate_op)
        rows, hits = self.cache.plan_rows(gated, batch)  # only mistake-pool prompts have a cached answer
        loss = dict(guide_loss=self.cfg.guide_loss, shaping_gamma=self.cfg.shaping_gamma, is_cap=self.cfg.is_cap)
        metrics = {
            "guide/cache_size": float(len(self.cache)),
            "guide/cache_coverage": self.cache.coverage(gated),
            "guide/cache_hits": float(len(hits)),
        }
        return GuidePlan(rows, gated, "replace", self.cfg.guide_slots, self.cfg.slot, loss, metrics)


class AutoNPOLookahead(_AutoNPOBase):
    """The earlier reading (``autonpo.mode = lookahead``): look ahead at a trigger, guide from the best candidate.

    At a trigger (bootstrap, stagnation or entropy collapse): one look-ahead of max(candidates) steps keeps
    pi_{t+Delta} for every candidate; after the rollback each candidate samples ``q_samples`` rows on the most recent
    mistake-pool prompts; Delta* = argmax Q-hat / V-hat guides the next ``cooldown`` steps with NPO's gate and
    slots, its guide rows sampled online every step (``npo.guide_source`` is not read)."""

    name = "autonpo"

    def __init__(self, auto: AutoNPOConfig, cfg: NPOConfig, total_steps: int, grpo: GRPOConfig) -> None:
        super().__init__(auto, dataclasses.replace(cfg, guide_source="online"), total_steps, grpo)
        self._trigger: tuple[str, list[int]] | None = None  # this step's reason and pool prompts, until scored

    def wants_lookahead(self, state: TrainState) -> LookaheadRequest | None:
        t = state.step
        reason = self.controller.trigger(t)
        if reason is None:
            return None
        prompts = self.pool.prompts(self.auto.q_prompts)
        if not prompts:
            self.event(step=t, kind="skipped", reason=reason, why="the mistake pool is empty")
            self.controller.record(t, counted=False)  # wait a cooldown before asking again
            return None
        self._trigger = (reason, prompts)
        return LookaheadRequest(self.auto.candidates, self.cfg.restore_optimizer)

    def use_lookahead(self, state: TrainState, result: LookaheadResult) -> dict[str, float]:
        assert self._trigger is not None, "use_lookahead without a trigger"
        (reason, prompts), self._trigger = self._trigger, None
        t, t0 = state.step, time.perf_counter()
        # scored after the rollback: the backend's current weights are pi_t again
        scores = measure_sources(
            state.backend,
            prompts,
            result.checkpoints,
            k=self.auto.q_samples,
            correct_threshold=self.thr,
            estimator=self.auto.v,
            floor=self.auto.v_floor,
            max_grad_rows=self.auto.max_grad_rows,
            kl_beta=self.auto.kl_beta,
        )
        deltas = sorted(scores)
        best, s = choose_delta(deltas, [scores[d]["q"] for d in deltas], [scores[d]["v"] for d in deltas])
        seconds = result.seconds + time.perf_counter() - t0  # look-ahead + scoring every candidate
        scoring_rows = len(prompts) * self.auto.q_samples * len(deltas)
        self.controller.record(t)
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
            self.checkpoint, self.start = result.checkpoints[best], t
            self.until = min(t + self.auto.cooldown, self.total_steps)
            if self.cfg.guidance_window:
                self.until = min(self.until, t + self.cfg.guidance_window)
        nan = float("nan")
        return {
            "autonpo/triggered": 1.0,
            "autonpo/reason_" + reason: 1.0,
            "autonpo/delta": float(best) if best is not None else nan,
            "autonpo/q_hat": scores[best]["q"] if best is not None else nan,
            "autonpo/v_hat": scores[best]["v"] if best is not None else nan,
            "autonpo/s_hat": max((x for x in s if x == x), default=nan),
            "autonpo/scoring_rows": float(scoring_rows),
        }
