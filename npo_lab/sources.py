"""Guide sources: where each method's off-policy rows come from, all run by the same GRPO step.

A source has four hooks, called by :func:`npo_lab.trainer.grpo_step` and :func:`npo_lab.trainer.train`:

* ``before_step(state, plain_step)``: e.g. NPO's look-ahead and rollback (returns ``npo/`` metrics);
* ``choose_prompts(state, prompts)``: the batch's prompts (ExGRPO swaps some for replay-pool prompts);
* ``guides(state, batch, grpo)``: a :class:`GuidePlan` (candidate rows, target prompts, replace or append,
  and how the loss treats them) or None;
* ``after_step(state, batch, entropy, metrics, rollout)``: observe the finished step: the batch it trained on
  (guide rows merged), its per-token entropies, its metrics, and the on-policy rollout before any merge.

Methods, with their sources (docs/methods.md has the details and the config fields):

=========  =================================================================  ===========================
method     guide rows                                                         group composition
=========  =================================================================  ===========================
grpo       none                                                               G on-policy
npo        verified-correct rows of pi_{t+Delta} (this run, looked ahead)     k of G replaced, gate 0.6
autonpo    as npo, Delta* = argmax Q-hat/V-hat, triggered online              k of G replaced, gate 0.6
luffy      verified-correct rows of an external teacher (another style)       1 of G replaced, every group
exgrpo     this run's own past correct rows (medium-difficulty buckets)       1 of G replaced, replay prompts
rlep       a fixed pool of correct rows decoded by a previous run's final     G + 2 (appended)
=========  =================================================================  ===========================
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import Tensor

from npo_lab.backend import Checkpoint
from npo_lab.batch import RolloutBatch
from npo_lab.config import ExGRPOConfig, GRPOConfig, LuffyConfig, MethodConfigs, RLEPConfig
from npo_lab.core.guidance import group_accuracy, guide_gate

GUIDE_METRICS = (
    "guide/gated_frac",
    "guide/injected_frac",
    "guide/found_frac",
    "guide/rows",
    "guide/replaced_correct",
    "guide/guide_solved",
)


@dataclass
class GuidePlan:
    """What a source offers one batch.

    Args:
        rows: candidate guide rows; ``group_ids`` names the prompt each answers (wrong rows are never used).
        targets: prompt ids whose groups may receive rows.
        mode: ``replace`` (k slots of the group) or ``append`` (k rows added: the group grows).
        k: rows per target group.
        slot: which slots ``replace`` uses (``last`` or ``incorrect_first``).
        loss: keyword arguments of :func:`npo_lab.core.losses.policy_loss` for guide rows
            (``guide_loss``, ``shaping_gamma``, ``is_cap``).
        metrics: extra metrics of the source for this step.
    """

    rows: RolloutBatch
    targets: list[int]
    mode: Literal["replace", "append"] = "replace"
    k: int = 1
    slot: str = "last"
    loss: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)


class GuideSource:
    """Plain GRPO: no guide rows. Subclasses override the hooks they need."""

    name = "grpo"

    def __init__(self) -> None:
        self.interventions: list[int] = []
        self.intervention_costs: list[int] = []
        """Look-ahead steps spent at each intervention (same order as ``interventions``)."""
        self.lookahead_seconds = 0.0
        self.events: list[dict[str, Any]] = []
        self.emit: Callable[[dict[str, Any]], None] | None = None
        """Set by the caller to receive every event as it happens (the run folder's event log)."""

    @property
    def lookahead_steps(self) -> int:
        return sum(self.intervention_costs)

    def event(self, **ev: Any) -> None:
        self.events.append(ev)
        if self.emit is not None:
            self.emit(ev)

    def setup(self, state: Any) -> None:
        """Called once before the first step (not again when a run resumes from a checkpoint)."""

    def state_dict(self) -> dict[str, Any]:
        """Everything this source carries from step to step, for exact resume: plain Python values, tensors and
        backend checkpoints (a training checkpoint stores them). Subclasses extend it with their pools."""
        return {
            "interventions": list(self.interventions),
            "intervention_costs": list(self.intervention_costs),
            "lookahead_seconds": self.lookahead_seconds,
            "events": list(self.events),
        }

    def load_state_dict(self, d: dict[str, Any]) -> None:
        """Inverse of :meth:`state_dict`."""
        self.interventions = list(d["interventions"])
        self.intervention_costs = list(d["intervention_costs"])
        self.lookahead_seconds = float(d["lookahead_seconds"])
        self.events = list(d["events"])

    def before_step(self, state: Any, plain_step: Callable[[], dict[str, float]]) -> dict[str, float]:
        return {}

    def choose_prompts(self, state: Any, prompts: list[int]) -> list[int]:
        return prompts

    def guides(self, state: Any, batch: RolloutBatch, grpo: GRPOConfig) -> GuidePlan | None:
        return None

    def after_step(
        self,
        state: Any,
        batch: RolloutBatch,
        entropy: Tensor | None,
        metrics: dict[str, float],
        rollout: RolloutBatch,
    ) -> None:
        pass


def failing_groups(batch: RolloutBatch, gate: float, correct_threshold: float) -> tuple[dict[int, float], list[int]]:
    """On-policy group accuracies (guide rows excluded) and the prompts strictly below ``gate``."""
    on = batch.select(torch.nonzero(~batch.is_guide).squeeze(-1)) if batch.is_guide.any() else batch
    acc = group_accuracy(on.rewards, on.group_ids, correct_threshold)
    ids = list(acc)
    gate_on = guide_gate(torch.tensor([acc[g] for g in ids], dtype=torch.float64), gate)  # (n_groups,)
    return acc, [g for g, on_ in zip(ids, gate_on.tolist()) if on_]


def policy_rows_for(
    state: Any, batch: RolloutBatch, grpo: GRPOConfig, policy: Checkpoint, gate: float, samples: int
) -> tuple[RolloutBatch | None, list[int]]:
    """Sample ``samples`` rows from ``policy`` for every prompt of ``batch`` whose group is below ``gate``."""
    _, gated = failing_groups(batch, gate, grpo.correct_threshold)
    if not gated:
        return None, []
    return state.backend.rollout(gated, samples, policy=policy), gated


class TeacherGuide(GuideSource):
    """LUFFY (arXiv 2504.14945): an external teacher's verified-correct row in one slot of each group.

    The teacher is a checkpoint the backend can sample from (for the arithmetic backend: a model trained on
    another completion style, so its correct rows are unlikely under the student: strong *and* far)."""

    name = "luffy"

    def __init__(self, cfg: LuffyConfig, teacher: Checkpoint) -> None:
        super().__init__()
        if teacher is None:
            raise ValueError("luffy needs an external teacher checkpoint (the backend's teacher())")
        self.cfg, self.teacher = cfg, teacher

    def guides(self, state: Any, batch: RolloutBatch, grpo: GRPOConfig) -> GuidePlan | None:
        rows, gated = policy_rows_for(state, batch, grpo, self.teacher, self.cfg.gate, self.cfg.teacher_samples)
        if rows is None:
            return None
        return GuidePlan(
            rows,
            gated,
            "replace",
            self.cfg.guide_slots,
            "last",
            dict(guide_loss=self.cfg.guide_loss, shaping_gamma=self.cfg.shaping_gamma),
        )


class ExperienceReplay(GuideSource):
    """ExGRPO (arXiv 2510.02245): replay the run's own past correct rows.

    * Collection: after each step, every correct on-policy row of a partially solved group (0 < k < G correct)
      is stored with its recorded log-probs and mean token entropy; a prompt whose group is fully solved
      leaves the pool.
    * Sampling: prompts are bucketed by their latest k; a bucket is drawn with weight
      exp(-(k - G/2)^2 / (2 sigma^2)), then a prompt uniformly inside it; its lowest-entropy row is replayed.
    * Mixing: once the batch accuracy has exceeded ``start_solve_rate``, ``experience_ratio`` of each batch's
      prompts come from the pool; each such group holds G - 1 fresh rows and 1 replayed row.
    """

    name = "exgrpo"

    def __init__(self, cfg: ExGRPOConfig, group_size: int, correct_threshold: float = 0.5, seed: int = 0) -> None:
        super().__init__()
        self.cfg, self.g, self.thr = cfg, group_size, correct_threshold
        self.pool: dict[int, tuple[int, list[RolloutBatch]]] = {}  # prompt -> (latest #correct, stored rows)
        self.started = False
        self.rng = random.Random(seed + 4241)
        self.replay: dict[int, RolloutBatch] = {}  # this step's replay row per pool prompt

    def state_dict(self) -> dict[str, Any]:
        pool = [[p, k, [r.state_dict() for r in rows]] for p, (k, rows) in self.pool.items()]
        return {**super().state_dict(), "pool": pool, "started": self.started, "rng": self.rng.getstate()}

    def load_state_dict(self, d: dict[str, Any]) -> None:
        super().load_state_dict(d)
        self.pool = {int(p): (int(k), [RolloutBatch.from_state_dict(r) for r in rows]) for p, k, rows in d["pool"]}
        self.started = bool(d["started"])
        self.rng.setstate(_rng_state(d["rng"]))

    def _bucket_weight(self, k: int) -> float:
        return math.exp(-((k - self.g / 2) ** 2) / (2 * self.cfg.bucket_sigma**2))

    def sample_prompts(self, n: int) -> list[int]:
        """Draw up to ``n`` distinct pool prompts: bucket by weight, then a prompt uniformly in the bucket."""
        buckets: dict[int, list[int]] = {}
        for p, (k, _) in sorted(self.pool.items()):
            buckets.setdefault(k, []).append(p)
        chosen: list[int] = []
        while len(chosen) < n and buckets:
            ks = sorted(buckets)
            k = self.rng.choices(ks, weights=[self._bucket_weight(k) for k in ks])[0]
            members = buckets[k]
            chosen.append(members.pop(self.rng.randrange(len(members))))
            if not members:
                del buckets[k]
        return chosen

    def _pick_row(self, rows: list[RolloutBatch]) -> RolloutBatch:
        if self.cfg.selection == "latest":
            return rows[-1]
        if self.cfg.selection == "random":
            return rows[self.rng.randrange(len(rows))]
        return min(rows, key=lambda r: r.extras[0]["_entropy"])

    def choose_prompts(self, state: Any, prompts: list[int]) -> list[int]:
        self.replay = {}
        if not self.started or not self.pool:
            return prompts
        n_exp = round(self.cfg.experience_ratio * len(prompts))
        exp = self.sample_prompts(n_exp)
        self.replay = {p: self._pick_row(self.pool[p][1]) for p in exp}
        fresh = [p for p in prompts if p not in self.replay]
        return exp + fresh[: len(prompts) - len(exp)]

    def guides(self, state: Any, batch: RolloutBatch, grpo: GRPOConfig) -> GuidePlan | None:
        if not self.replay:
            return None
        targets = list(self.replay)
        rows = RolloutBatch.cat([self.replay[p] for p in targets])
        return GuidePlan(
            rows,
            targets,
            "replace",
            1,
            "last",
            dict(guide_loss=self.cfg.guide_loss, shaping_gamma=self.cfg.shaping_gamma),
            {"exgrpo/pool_prompts": float(len(self.pool)), "exgrpo/replayed": float(len(targets))},
        )

    def after_step(
        self,
        state: Any,
        batch: RolloutBatch,
        entropy: Tensor | None,
        metrics: dict[str, float],
        rollout: RolloutBatch,
    ) -> None:
        if metrics["reward/on_policy_mean"] > self.cfg.start_solve_rate and not self.started:
            self.started = True
            self.event(step=state.step - 1, kind="exgrpo_start", solve_rate=metrics["reward/on_policy_mean"])
        thr = self.thr
        rows_of: dict[int, list[int]] = {}
        for i, (g, guide) in enumerate(zip(batch.group_ids.tolist(), batch.is_guide.tolist())):
            if not guide:
                rows_of.setdefault(g, []).append(i)
        row_entropy = None
        if entropy is not None:  # mean token entropy of each row, (B,)
            row_entropy = (entropy * batch.mask).sum(-1) / batch.mask.sum(-1).clamp(min=1.0)
        rewards = batch.rewards.tolist()
        for g, rows in rows_of.items():
            correct = [i for i in rows if rewards[i] > thr]
            k = round(self.g * len(correct) / len(rows))  # on a G scale (replay groups have G - 1 fresh rows)
            if k >= self.g:
                self.pool.pop(g, None)  # fully solved: retired from the pool
                continue
            _, stored = self.pool.get(g, (0, []))
            for i in correct:
                row = batch.select([i]).trim()
                ent = float(row_entropy[i]) if row_entropy is not None else float(-row.old_logprobs.sum())
                # recorded log-probs (the ratio anchor of shaped_is) are the policy's at collection time
                row = row.replace(behavior_logprobs=row.old_logprobs, extras=[{**row.extras[0], "_entropy": ent}])
                stored = (stored + [row])[-self.cfg.rows_per_prompt :]
            if stored:
                self.pool[g] = (k, stored)


class PriorRunReplay(GuideSource):
    """RLEP (arXiv 2507.07451): replay a fixed pool of correct rows decoded by a previous run's checkpoint.

    At setup the previous run's final policy decodes ``decode_samples`` rows per training prompt; the
    verified-correct ones form the pool. Every group then gets up to ``replay_per_group`` pool rows appended
    (the group grows to G + M; groups with fewer pool rows get fewer)."""

    name = "rlep"

    def __init__(
        self,
        cfg: RLEPConfig,
        previous: Checkpoint,
        correct_threshold: float = 0.5,
        seed: int = 0,
        decode_chunk: int = 64,
    ) -> None:
        super().__init__()
        self.cfg, self.previous, self.decode_chunk, self.thr = cfg, previous, decode_chunk, correct_threshold
        self.pool: dict[int, list[RolloutBatch]] = {}
        self.rng = random.Random(seed + 7411)

    def state_dict(self) -> dict[str, Any]:
        pool = [[p, [r.state_dict() for r in rows]] for p, rows in self.pool.items()]
        return {**super().state_dict(), "pool": pool, "rng": self.rng.getstate()}

    def load_state_dict(self, d: dict[str, Any]) -> None:
        super().load_state_dict(d)
        self.pool = {int(p): [RolloutBatch.from_state_dict(r) for r in rows] for p, rows in d["pool"]}
        self.rng.setstate(_rng_state(d["rng"]))

    def setup(self, state: Any) -> None:
        if self.previous is None:  # a resumed run restores its pool instead (load_state_dict)
            raise ValueError("rlep needs the final checkpoint of a previous run to decode its pool from")
        n = state.backend.num_prompts
        decoded = 0
        for start in range(0, n, self.decode_chunk):
            ids = list(range(start, min(n, start + self.decode_chunk)))
            rows = state.backend.rollout(ids, self.cfg.decode_samples, policy=self.previous)
            decoded += rows.size
            for i in torch.nonzero(rows.rewards > self.thr).squeeze(-1).tolist():
                self.pool.setdefault(int(rows.group_ids[i]), []).append(rows.select([i]).trim())
        self.event(
            step=state.step,
            kind="rlep_pool",
            decoded=decoded,
            correct=sum(len(v) for v in self.pool.values()),
            prompts=len(self.pool),
            prompt_coverage=len(self.pool) / max(n, 1),
        )

    def guides(self, state: Any, batch: RolloutBatch, grpo: GRPOConfig) -> GuidePlan | None:
        prompts = sorted(set(batch.group_ids.tolist()) & set(self.pool))
        picked = []
        for p in prompts:
            cands = self.pool[p]
            picked += self.rng.sample(cands, min(self.cfg.replay_per_group, len(cands)))
        if not picked:
            return None
        return GuidePlan(
            RolloutBatch.cat(picked),
            prompts,
            "append",
            self.cfg.replay_per_group,
            "last",
            dict(guide_loss=self.cfg.guide_loss),
            {"rlep/pool_prompts": float(len(self.pool))},
        )


def _rng_state(saved: Any) -> tuple[Any, ...]:
    """A ``random.Random`` state read back from a checkpoint (lists there, tuples for ``setstate``)."""
    version, internal, gauss = saved
    return (version, tuple(internal), gauss)


def make_source(
    method: str,
    cfgs: MethodConfigs,
    total_steps: int,
    *,
    grpo: GRPOConfig,
    teacher: Checkpoint | None = None,
    previous: Checkpoint | None = None,
    seed: int = 0,
) -> GuideSource:
    """The guide source of ``method`` (``grpo``, ``npo``, ``autonpo``, ``luffy``, ``exgrpo``, ``rlep``).

    ``teacher`` is the external teacher (luffy); ``previous`` the final checkpoint of a previous run (rlep)."""
    from npo_lab.npo import AutoNPOGuide, NearFutureGuide

    if method == "grpo":
        return GuideSource()
    if method == "npo":
        return NearFutureGuide(cfgs.npo, total_steps, grpo.correct_threshold)
    if method == "autonpo":
        return AutoNPOGuide(cfgs.autonpo, cfgs.npo, total_steps, grpo.correct_threshold)
    if method == "luffy":
        return TeacherGuide(cfgs.luffy, teacher)
    if method == "exgrpo":
        return ExperienceReplay(cfgs.exgrpo, grpo.group_size, grpo.correct_threshold, seed)
    if method == "rlep":
        return PriorRunReplay(cfgs.rlep, previous, grpo.correct_threshold, seed)
    raise ValueError(f"unknown method {method!r}; choose one of grpo, npo, autonpo, luffy, exgrpo, rlep")
