"""Typed, documented configuration for the algorithm core.

Every field's docstring is its ``--help`` text. Each default says where it comes from: ``[paper]`` for a
value the NPO paper (arXiv 2604.20733) states, ``[paper-reading]`` for what two independent close readings of the full
paper report (its text and code are not public; ../docs/methods.md), the cited work for a value taken from another
method, and ``[assumption]`` for a choice this toolkit made where the paper is silent.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from typing import Literal

METHODS = {
    "grpo": "plain GRPO: no guide rows",
    "npo": "NPO: look ahead Delta steps, roll back, replay the segment with the near future's cached verified rows",
    "autonpo": "AutoNPO: at a plateau, roll back Delta* = argmax Q-hat/V-hat steps, replay with the present's answers",
    "luffy": "LUFFY: one verified-correct external-teacher row per group, shaped p/(p+0.1), unclipped",
    "exgrpo": "ExGRPO: replay of the run's own past correct rows, medium-difficulty buckets, shaped IS",
    "rlep": "RLEP: 2 correct rows per group appended from a pool decoded by a previous run's final checkpoint",
}
"""The methods one run can train, by name (docs/methods.md maps each to its paper and its config)."""


def _check(cond: bool, field: str, got: object, allowed: str) -> None:
    if not cond:
        raise ValueError(f"{field} must be {allowed}, got {got!r}")


def _check_choices(cfg: object, prefix: str) -> None:
    """Every ``Literal[...]`` field of ``cfg`` holds one of its declared values (read from the annotation,
    so the allowed values are written once), and every float field is finite (NaN and Inf are never settings)."""
    import math

    hints = typing.get_type_hints(type(cfg))
    for f in dataclasses.fields(cfg):  # type: ignore[arg-type]
        tp = hints[f.name]
        value = getattr(cfg, f.name)
        name = f"{prefix}.{f.name}" if prefix else f.name
        if typing.get_origin(tp) is Literal:
            allowed = typing.get_args(tp)
            _check(value in allowed, name, value, "one of " + ", ".join(map(repr, allowed)))
        elif tp is float and isinstance(value, int | float):
            _check(math.isfinite(value), name, value, "a finite number")


@dataclass
class GRPOConfig:
    """The GRPO step shared by every method."""

    batch_size: int = 128
    """Rows sampled per training step (prompts x group_size); must be divisible by group_size. [assumption]"""
    group_size: int = 8
    """G, rollouts per prompt; one GRPO group. [assumption: the LUFFY/ExGRPO convention of 8]"""
    minibatch_size: int = 0
    """Rows per optimiser step; 0 means the whole batch (one update per batch, ratio exactly 1)."""
    micro_batch_size: int = 0
    """Rows per forward/backward pass inside a minibatch (gradient accumulation, exact for every aggregation);
    0 = the whole minibatch at once. Per rank under data parallelism."""
    epochs: int = 1
    """Passes over each batch (PPO epochs). 1 keeps GRPO on-policy. [assumption]"""
    lr: float = 3e-4
    """Adam learning rate. [assumption: 1e-3 made GRPO collapse on the tiny simulation model, 3e-4 learns]"""
    lr_schedule: Literal["constant", "linear", "cosine"] = "constant"
    """Learning rate over the run's steps: constant, or linear / cosine decay to 0 at the last step, after
    lr_warmup_steps of linear warm-up. A function of the step alone, so look-ahead steps follow it and a resumed
    run gets it back exactly. [assumption: constant (verl's default); the paper does not say]"""
    lr_warmup_steps: int = 0
    """Steps of linear warm-up from lr / (lr_warmup_steps + 1) to lr at the start of the run."""
    max_grad_norm: float = 1.0
    """Global gradient-norm clip; 0 disables it."""
    advantage: Literal["grpo", "dr_grpo"] = "grpo"
    """Advantage estimator: grpo = (r - mean) / std over the group; dr_grpo = r - mean (Dr. GRPO)."""
    aggregation: Literal["token_mean", "seq_mean", "sum_norm"] = "token_mean"
    """Loss aggregation: token_mean (DAPO), seq_mean (original GRPO), sum_norm (Dr. GRPO / LUFFY)."""
    norm_constant: float = 0.0
    """C of sum_norm aggregation (sum / (B * C)); 0 means the padded completion length T."""
    clip_eps_low: float = 0.2
    """PPO clip: ratios below 1 - clip_eps_low are clipped (PPO's 0.2)."""
    clip_eps_high: float = 0.2
    """PPO clip: ratios above 1 + clip_eps_high are clipped (PPO's 0.2; DAPO uses 0.28)."""
    dual_clip_c: float = 0.0
    """Dual clip (Ye et al. 2020, verl's clip_ratio_c = 3): for a negative advantage the per-token loss is at most
    -dual_clip_c * A, so one token whose ratio exploded cannot dominate; 0 switches it off, otherwise > 1.
    [assumption: off, as before; verl turns it on with 3]"""
    log_ratio_clamp: float = 20.0
    """log(pi / pi_old) is clamped to +-this before exp (verl: 20), an overflow guard that never binds in ordinary
    training; 0 = no clamp."""
    kl_coef: float = 0.0
    """Weight of the KL term to the reference (the policy at step 0); 0 disables it (DAPO, Dr. GRPO)."""
    kl_estimator: Literal["k1", "k3"] = "k3"
    """KL estimator: k1 = log pi - log pi_ref, k3 = GRPO's non-negative estimator."""
    entropy_coef: float = 0.0
    """Weight of the entropy bonus subtracted from the loss. [assumption]"""
    correct_threshold: float = 0.5
    """A row with reward above this counts as correct (for group accuracy, the gate and guide checks)."""

    def __post_init__(self) -> None:
        _check(self.group_size >= 2, "grpo.group_size", self.group_size, ">= 2 (a group of one has no baseline)")
        _check(self.batch_size >= 1, "grpo.batch_size", self.batch_size, ">= 1")
        _check(
            self.batch_size % self.group_size == 0,
            "grpo.batch_size",
            self.batch_size,
            f"divisible by grpo.group_size={self.group_size} "
            f"(e.g. {self.group_size * max(1, self.batch_size // self.group_size)})",
        )
        mb = self.minibatch_size or self.batch_size
        _check(
            mb >= 1 and self.batch_size % mb == 0,
            "grpo.minibatch_size",
            self.minibatch_size,
            f"0 or a divisor of grpo.batch_size={self.batch_size}",
        )
        _check(self.micro_batch_size >= 0, "grpo.micro_batch_size", self.micro_batch_size, ">= 0")
        _check(self.epochs >= 1, "grpo.epochs", self.epochs, ">= 1")
        _check(self.lr > 0, "grpo.lr", self.lr, "> 0")
        _check(self.lr_warmup_steps >= 0, "grpo.lr_warmup_steps", self.lr_warmup_steps, ">= 0")
        _check(self.max_grad_norm >= 0, "grpo.max_grad_norm", self.max_grad_norm, ">= 0")
        _check(0 <= self.clip_eps_low < 1, "grpo.clip_eps_low", self.clip_eps_low, "in [0, 1)")
        _check(self.clip_eps_high >= 0, "grpo.clip_eps_high", self.clip_eps_high, ">= 0")
        _check(self.dual_clip_c == 0 or self.dual_clip_c > 1, "grpo.dual_clip_c", self.dual_clip_c, "0 (off) or > 1")
        _check(self.log_ratio_clamp >= 0, "grpo.log_ratio_clamp", self.log_ratio_clamp, ">= 0 (0: no clamp)")
        _check(self.kl_coef >= 0, "grpo.kl_coef", self.kl_coef, ">= 0")
        _check(self.norm_constant >= 0, "grpo.norm_constant", self.norm_constant, ">= 0")
        _check_choices(self, "grpo")

    @property
    def prompts_per_step(self) -> int:
        """Groups per batch: batch_size / group_size."""
        return self.batch_size // self.group_size

    def lr_at(self, step: int, total_steps: int) -> float:
        """The learning rate of training step ``step`` of ``total_steps`` (0 = no known end: no decay).

        >>> g = GRPOConfig(lr=1.0, lr_schedule="linear", lr_warmup_steps=1)
        >>> [round(g.lr_at(s, 5), 2) for s in range(5)]
        [0.5, 1.0, 0.75, 0.5, 0.25]
        """
        import math

        if step < self.lr_warmup_steps:
            return self.lr * (step + 1) / (self.lr_warmup_steps + 1)
        if self.lr_schedule == "constant" or total_steps <= 0:
            return self.lr
        span = max(total_steps - self.lr_warmup_steps, 1)
        frac = min(max((step - self.lr_warmup_steps) / span, 0.0), 1.0)  # 0 at the end of warm-up, 1 at the end
        if self.lr_schedule == "linear":
            return self.lr * (1.0 - frac)
        return self.lr * 0.5 * (1.0 + math.cos(math.pi * frac))


GuideLoss = Literal["behavior_clipped", "on_policy", "shaped", "importance", "shaped_is"]
"""How guide rows enter the loss (npo_lab.core.losses.GUIDE_TREATMENTS; docs/algorithm.md, "Guide rows...")."""


@dataclass
class NPOConfig:
    """Near-Future Policy Optimization: look ahead Delta steps, keep pi_{t+Delta}, roll back, and replay the segment
    with pi_{t+Delta}'s verified-correct rows in the failing groups."""

    delta: int = 20
    """Look-ahead distance: plain GRPO steps trained ahead to get the near-future checkpoint. [assumption; the paper
    measures S(Delta) peaking near 20 steps from the base policy of Qwen3-VL-8B, near 70 mid-training]"""
    gate: float = 0.6
    """A prompt is guided when its on-policy group accuracy p-hat is at most this (npo.gate_op). [paper: 0.6]"""
    gate_op: Literal["le", "lt"] = "le"
    """le: guided when p-hat <= gate [paper-reading]; lt: when p-hat < gate (the first author's public verl fork).
    The two differ only when a group accuracy can equal the gate (G = 5 and 0.6, not G = 8)."""
    guide_slots: int = 1
    """k, on-policy slots replaced by verified-correct guide rows in each gated group. [paper: 1]"""
    guide_source: Literal["cache", "online"] = "cache"
    """cache: at an intervention pi_{t+Delta} samples guide_samples answers for every prompt of the guided segment
    (the replay sees the same prompts) and one verified-correct row per prompt is kept; the guided steps read it
    [paper-reading]. online: pi_{t+Delta} samples guide_samples rows for each gated prompt as it comes, every step
    (this toolkit's earlier reading)."""
    guide_samples: int = 8
    """Samples drawn from pi_{t+Delta} per prompt to find a verified-correct one. [assumption: one group's worth (G =
    8); more samples raise the guide's quality Q at the price of guide rollouts]"""
    slot: Literal["last", "incorrect_first"] = "last"
    """Which slot a guide replaces: last [paper-reading: the n-th slot; rows are i.i.d., so a uniformly random one]
    or incorrect_first [assumption]."""
    guide_loss: GuideLoss = "behavior_clipped"
    """Guide rows in the loss: behavior_clipped (the clipped ratio pi_theta / pi_{t+Delta}, the paper's objective
    [paper-reading]), on_policy (the clipped ratio against the recomputed old log-probs: the paper's ablation finds it
    about as good, and the authors' code does it), shaped (LUFFY p/(p+gamma)), importance (pi/pi_behaviour,
    truncated), shaped_is (ExGRPO w/(w+gamma), w = pi/pi_behaviour)."""
    shaping_gamma: float = 0.1
    """gamma of the shaped guide loss f(p) = p / (p + gamma) (LUFFY: 0.1)."""
    is_cap: float = 2.0
    """Truncation of the importance ratio for guide_loss=importance. [assumption]"""
    interventions: tuple[int, ...] = (0, 100)
    """Steps at which NPO looks ahead: 0 is the early bootstrap (a scout run of delta steps from the start weights,
    then a restart from them), a later step the plateau breakthrough (train on to t + delta, roll back to t). [paper:
    both interventions; assumption: the steps, which the paper does not give]"""
    every: int = 0
    """If > 0, also intervene every this many steps after the last listed intervention. [assumption]"""
    when: Literal["schedule", "plateau"] = "schedule"
    """schedule: intervene at npo.interventions (and npo.every); plateau: intervene at the first listed step if it is
    0 (the early bootstrap), then whenever the reward plateaus, detected online by the stagnation test of the autonpo
    section (autonpo.window, smoothing, stagnation_slope, cooldown), at most len(npo.interventions) times in all.
    [assumption: the paper places its plateau intervention by eye]"""
    window: Literal["segment", "until_next"] = "segment"
    """Which steps are guided after an intervention at t: segment, the replayed segment [t, t + delta) [paper-reading];
    until_next, until the next intervention or the end of training (this toolkit's earlier reading)."""
    guidance_window: int = 0
    """If > 0, guidance also stops after at most this many steps, whatever npo.window says. [assumption]"""
    restore_optimizer: bool = True
    """Restore the optimizer state on rollback (exact rollback). [assumption: the paper does not say]"""
    future: Literal["lookahead", "extrapolate"] = "lookahead"
    """Where the guide checkpoint comes from. lookahead: train delta steps ahead and roll back (the paper's
    pi_{t+Delta}). extrapolate (beyond the paper): no extra steps; theta_t + alpha (theta_t - theta_{t-k}), the run's
    own recent direction continued (RLVR-Linearity, NExt), k = npo.extrapolate_k, alpha = npo.extrapolate_alpha. The
    parameters are copied k steps before each scheduled intervention, so an intervention listed before step k
    happens at step k; the guided window is [t, t + delta) as with lookahead. Needs npo.when = schedule."""
    extrapolate_k: int = 10
    """future=extrapolate: the direction is theta_t - theta_{t-k} over this many steps. [assumption]"""
    extrapolate_alpha: float = 0.0
    """future=extrapolate: how far along the direction; 0 = delta / extrapolate_k (delta steps ahead at the pace of
    the last k steps). [assumption]"""

    def __post_init__(self) -> None:
        _check(self.delta >= 1, "npo.delta", self.delta, ">= 1 (look-ahead steps)")
        _check(self.extrapolate_k >= 1, "npo.extrapolate_k", self.extrapolate_k, ">= 1")
        _check(self.extrapolate_alpha >= 0, "npo.extrapolate_alpha", self.extrapolate_alpha, ">= 0 (0: delta / k)")
        _check(0.0 <= self.gate <= 1.0, "npo.gate", self.gate, "in [0, 1]")
        _check(self.guide_slots >= 1, "npo.guide_slots", self.guide_slots, ">= 1")
        _check(self.guide_samples >= 1, "npo.guide_samples", self.guide_samples, ">= 1")
        _check_choices(self, "npo")
        _check(self.shaping_gamma > 0, "npo.shaping_gamma", self.shaping_gamma, "> 0")
        _check(self.is_cap > 0, "npo.is_cap", self.is_cap, "> 0")
        self.interventions = tuple(int(s) for s in self.interventions)
        _check(all(s >= 0 for s in self.interventions), "npo.interventions", self.interventions, "steps >= 0")
        _check(self.every >= 0, "npo.every", self.every, ">= 0")
        _check(self.guidance_window >= 0, "npo.guidance_window", self.guidance_window, ">= 0")
        if self.when == "plateau":
            _check(self.every == 0, "npo.every", self.every, "0 with npo.when='plateau' (the plateau test decides)")
            _check(
                self.future == "lookahead",
                "npo.future",
                self.future,
                "lookahead with npo.when='plateau' (an extrapolated future copies the weights k steps before a "
                "scheduled intervention)",
            )
        if self.guide_source == "cache":
            _check(
                self.guide_slots == 1,
                "npo.guide_slots",
                self.guide_slots,
                "1 with npo.guide_source='cache' (the cache keeps one verified row per prompt)",
            )

    @property
    def alpha(self) -> float:
        """The extrapolation factor in use (``extrapolate_alpha``, or delta / extrapolate_k when it is 0)."""
        return self.extrapolate_alpha or self.delta / self.extrapolate_k

    def intervention_steps(self, total_steps: int) -> list[int]:
        """The sorted scheduled intervention steps below ``total_steps`` (``when='plateau'``: step 0 if listed;
        ``future='extrapolate'``: none before step ``extrapolate_k``, where the first direction exists).

        >>> NPOConfig(future="extrapolate", extrapolate_k=10).intervention_steps(200)
        [10, 100]
        """
        if self.when == "plateau":
            return [0] if 0 in self.interventions and total_steps > 0 else []
        steps = set(s for s in self.interventions if s < total_steps)
        if self.every > 0:
            start = max(self.interventions, default=0) + self.every
            steps.update(range(start, total_steps, self.every))
        if self.future == "extrapolate":
            steps = {max(s, self.extrapolate_k) for s in steps if max(s, self.extrapolate_k) < total_steps}
        return sorted(steps)


@dataclass
class AutoNPOConfig:
    """AutoNPO: when to intervene (online signals), and how far (Delta* = argmax Q-hat/V-hat on a mistake pool).

    mode=retrospective (the paper's, [paper-reading]): the present teaches its past. When the smoothed reward stagnates
    while the entropy keeps falling, the current policy pi_t probes the mistake pool; Delta* maximises Q-hat(Delta) /
    V-hat(Delta) over the saved distances; pi_t's verified answers to the pool slice Delta* are cached; training rolls
    back to t - Delta* exactly and replays that segment, guiding mistake-pool prompts only.
    mode=lookahead (this toolkit's earlier reading): at a trigger, look ahead max(candidates) steps, score each
    candidate checkpoint, guide from the best for `cooldown` steps.

    The guided steps use npo.gate, npo.gate_op, npo.slot and npo.guide_loss (lookahead mode also npo.guide_samples
    and npo.guide_source). The paper names the signals; every threshold here is an [assumption]."""

    mode: Literal["retrospective", "lookahead"] = "retrospective"
    """retrospective: roll back Delta* steps and replay with the present's answers [paper-reading]; lookahead: train
    ahead and guide from the best near-future checkpoint (the earlier reading, kept for comparison)."""
    candidates: tuple[int, ...] = (5, 10, 20, 40)
    """The candidate distances Delta. retrospective: how far back a rollback may go (a snapshot of the run is kept
    every autonpo.snapshot_every steps, so each Delta is a multiple of it); lookahead: look-ahead distances (one
    look-ahead of max(candidates) steps keeps a checkpoint at each). [assumption]"""
    snapshot_every: int = 5
    """retrospective: keep a snapshot of the whole training state every this many steps, for max(candidates) steps;
    a trigger is only tested at those steps. [assumption]"""
    slice: Literal["band", "since"] = "band"
    """retrospective: the pool slice B_Delta of a candidate: band, the prompts that failed in [t - Delta, t -
    Delta_prev) (the next shorter candidate; 'the slice that failed around t - Delta' [paper-reading]); since, those
    that failed in [t - Delta, t). [assumption: the slice's width]"""
    window: int = 40
    """Steps of history the triggers read. [assumption]"""
    smoothing: float = 0.1
    """EMA weight of the newest reward (and entropy) in the smoothed curves. [assumption]"""
    stagnation_slope: float = 5e-4
    """Stagnation: the least-squares slope of the smoothed reward over the last `window` steps is below this
    (reward units per step). [assumption: about the slope noise of a flat curve at batch 128]"""
    entropy_slope: float = 0.0
    """retrospective: the entropy 'keeps falling' when the slope of its EMA over the last `window` steps is below
    this (nats per step). [assumption]"""
    entropy_floor: float = 0.0
    """lookahead: entropy collapse when the mean token entropy is below this floor (0 disables the test)."""
    entropy_fraction: float = 0.5
    """lookahead: entropy collapse when the mean token entropy is below this fraction of its early value (the mean
    over the first `window` steps); 0 disables the relative test. [assumption]"""
    bootstrap_floor: float = 0.2
    """lookahead: early bootstrap when the on-policy batch accuracy is below this. [assumption]"""
    bootstrap_until: int = 50
    """lookahead: the bootstrap trigger only fires before this step. [assumption]"""
    cooldown: int = 60
    """Steps after a trigger during which no trigger fires (lookahead: also the guidance window). [assumption]"""
    max_interventions: int = 4
    """At most this many interventions per run; 0 means no limit. [assumption]"""
    pool_size: int = 256
    """Mistake pool capacity (prompts). [assumption]"""
    pool_refresh: Literal["fifo", "solved"] = "solved"
    """Mistake-pool refresh rule: fifo (a failed prompt enters at the front with the step it failed at, the oldest
    falls out when full) or solved (the same, and a prompt leaves as soon as a later on-policy group reaches the
    gate). [assumption]"""
    q_samples: int = 8
    """k, samples per mistake-pool prompt: of pi_t in the confirmation probe (retrospective) or of each candidate
    checkpoint (lookahead). [assumption: G]"""
    q_prompts: int = 128
    """At most this many mistake-pool prompts are probed per trigger: retrospective, split evenly over the candidate
    slices (the most recent of each); lookahead, the most recent of the pool. [assumption]"""
    v_estimator: Literal["auto", "kl_exp", "is_variance", "chi2", "log_ratio", "grad_norm"] = "auto"
    """V-hat: kl_exp (exp(kl_beta * mean per-token KL between the two policies), the paper's form [paper-reading]),
    is_variance (1 + Var of per-token w = pi_t/pi_src on verified-correct rows), chi2 (1 + mean w^2 - 1), log_ratio
    (1 + mean (log w)^2), grad_norm (1 + Var of per-row |grad log pi_t|; lookahead only); auto: kl_exp in
    retrospective mode, is_variance in lookahead mode (as before). docs/algorithm.md has each."""
    kl_beta: float = 1.0
    """beta of V-hat = exp(beta * KL) (v_estimator=kl_exp). [assumption: the paper's constant is not reported]"""
    v_floor: float = 1.0
    """The on-policy variance cost added to V-hat by the importance-weight estimators (E[w^2] = 1 on-policy)."""
    max_grad_rows: int = 32
    """v_estimator=grad_norm: at most this many rows get a per-row backward pass."""

    def __post_init__(self) -> None:
        self.candidates = tuple(sorted(set(int(d) for d in self.candidates)))
        _check(bool(self.candidates) and self.candidates[0] >= 1, "autonpo.candidates", self.candidates, "Deltas >= 1")
        _check(self.snapshot_every >= 1, "autonpo.snapshot_every", self.snapshot_every, ">= 1")
        if self.mode == "retrospective":
            _check(
                all(d % self.snapshot_every == 0 for d in self.candidates),
                "autonpo.candidates",
                self.candidates,
                f"multiples of autonpo.snapshot_every={self.snapshot_every} in retrospective mode (a rollback "
                "returns to a saved snapshot)",
            )
            _check(self.v_estimator != "grad_norm", "autonpo.v_estimator", self.v_estimator, "not grad_norm in "
                   "retrospective mode (the probe has no source checkpoint to differentiate)")  # fmt: skip
        _check(self.window >= 2, "autonpo.window", self.window, ">= 2")
        _check(0 < self.smoothing <= 1, "autonpo.smoothing", self.smoothing, "in (0, 1]")
        _check(self.entropy_floor >= 0, "autonpo.entropy_floor", self.entropy_floor, ">= 0")
        _check(0 <= self.entropy_fraction < 1, "autonpo.entropy_fraction", self.entropy_fraction, "in [0, 1)")
        _check(0 <= self.bootstrap_floor <= 1, "autonpo.bootstrap_floor", self.bootstrap_floor, "in [0, 1]")
        _check(self.bootstrap_until >= 0, "autonpo.bootstrap_until", self.bootstrap_until, ">= 0")
        _check(self.cooldown >= 1, "autonpo.cooldown", self.cooldown, ">= 1")
        _check(self.max_interventions >= 0, "autonpo.max_interventions", self.max_interventions, ">= 0")
        _check(self.pool_size >= 1, "autonpo.pool_size", self.pool_size, ">= 1")
        _check(self.q_samples >= 1, "autonpo.q_samples", self.q_samples, ">= 1")
        _check(self.q_prompts >= 1, "autonpo.q_prompts", self.q_prompts, ">= 1")
        _check(self.kl_beta > 0, "autonpo.kl_beta", self.kl_beta, "> 0")
        _check(self.v_floor > 0, "autonpo.v_floor", self.v_floor, "> 0")
        _check(self.max_grad_rows >= 2, "autonpo.max_grad_rows", self.max_grad_rows, ">= 2")
        _check_choices(self, "autonpo")

    @property
    def v(self) -> str:
        """The V-hat estimator in use (``auto`` resolved by the mode)."""
        if self.v_estimator != "auto":
            return self.v_estimator
        return "kl_exp" if self.mode == "retrospective" else "is_variance"


@dataclass
class LuffyConfig:
    """LUFFY (arXiv 2504.14945): an external teacher fills one slot per group; its rows are shaped, unclipped."""

    gate: float = 1.0
    """A group gets a teacher row when its on-policy accuracy is strictly below this. 1.0 = every group that is
    not fully solved, which is LUFFY's 'every group' (a fully solved group has zero advantages either way)."""
    guide_slots: int = 1
    """Teacher rows per group (LUFFY: n_prefix = 1 of rollout.n = 8)."""
    teacher_samples: int = 4
    """Teacher samples per prompt to find a verified-correct one (LUFFY uses stored verified traces).
    [assumption]"""
    guide_loss: GuideLoss = "shaped"
    """Teacher rows in the loss (LUFFY: shaped, f(p) = p / (p + 0.1), pi_teacher taken as 1, no clip)."""
    shaping_gamma: float = 0.1
    """gamma of the shaping (LUFFY: 0.1)."""
    recipe: Literal["shared", "paper"] = "shared"
    """shared: the GRPO step every method of a comparison shares (grpo.*); paper: the published training script's
    own step for this method: advantages without the std (Dr. GRPO), the loss summed over tokens and divided by a
    constant (sum_norm), an entropy bonus of 0.001 (LUFFY's exp_scripts/train.sh). See npo_lab.config.method_grpo."""

    def __post_init__(self) -> None:
        _check(0.0 <= self.gate <= 1.0, "luffy.gate", self.gate, "in [0, 1]")
        _check(self.guide_slots >= 1, "luffy.guide_slots", self.guide_slots, ">= 1")
        _check(self.teacher_samples >= 1, "luffy.teacher_samples", self.teacher_samples, ">= 1")
        _check(self.shaping_gamma > 0, "luffy.shaping_gamma", self.shaping_gamma, "> 0")
        _check_choices(self, "luffy")


@dataclass
class ExGRPOConfig:
    """ExGRPO (arXiv 2510.02245): replay of the run's own past correct rows (code defaults of its release)."""

    experience_ratio: float = 0.5
    """Fraction of each batch's prompts drawn from the experience pool once mixing has started (ExGRPO: 0.5)."""
    start_solve_rate: float = 0.35
    """Mixing starts once the on-policy batch accuracy exceeds this (ExGRPO: 0.35); it then stays on."""
    bucket_sigma: float = 1.0
    """Prompts are bucketed by their latest number of correct rows k; bucket weight exp(-(k - G/2)^2 / (2
    sigma^2)), favouring medium difficulty (ExGRPO: mean G/2, sigma 1)."""
    selection: Literal["min_entropy", "latest", "random"] = "min_entropy"
    """Which stored correct row of a prompt is replayed (ExGRPO: the lowest-entropy one)."""
    guide_loss: GuideLoss = "shaped_is"
    """Replayed rows in the loss (ExGRPO: ratio to the recorded log-probs, shaped w / (w + 0.1), no clip)."""
    shaping_gamma: float = 0.1
    """gamma of the shaping (ExGRPO: 0.1)."""
    rows_per_prompt: int = 4
    """Correct rows kept per prompt in the pool (the newest). [assumption: the paper keeps all]"""
    recipe: Literal["shared", "paper"] = "shared"
    """shared: the GRPO step every method of a comparison shares (grpo.*); paper: the published training script's
    own step (ExGRPO's run_exgrpo.sh: the same settings as LUFFY's): advantages without the std (Dr. GRPO), the
    sum_norm loss, an entropy bonus of 0.001. See npo_lab.config.method_grpo."""

    def __post_init__(self) -> None:
        _check(0.0 < self.experience_ratio < 1.0, "exgrpo.experience_ratio", self.experience_ratio, "in (0, 1)")
        _check(0.0 <= self.start_solve_rate <= 1.0, "exgrpo.start_solve_rate", self.start_solve_rate, "in [0, 1]")
        _check(self.bucket_sigma > 0, "exgrpo.bucket_sigma", self.bucket_sigma, "> 0")
        _check(self.shaping_gamma > 0, "exgrpo.shaping_gamma", self.shaping_gamma, "> 0")
        _check(self.rows_per_prompt >= 1, "exgrpo.rows_per_prompt", self.rows_per_prompt, ">= 1")
        _check_choices(self, "exgrpo")


@dataclass
class RLEPConfig:
    """RLEP (arXiv 2507.07451): a fixed pool of verified-correct rows decoded by a previous finished run."""

    replay_per_group: int = 2
    """M, pool rows appended to every group (the group grows to G + M; RLEP: 2 with G = 16)."""
    decode_samples: int = 8
    """Samples per training prompt decoded from the previous run's checkpoint to build the pool. [assumption]"""
    guide_loss: GuideLoss = "on_policy"
    """Replayed rows in the loss (RLEP: the ordinary ratio against recomputed old log-probs, no IS correction)."""
    source_steps: int = 0
    """Length of the previous GRPO run whose final checkpoint decodes the pool; 0 = the run's own length."""

    def __post_init__(self) -> None:
        _check(self.replay_per_group >= 1, "rlep.replay_per_group", self.replay_per_group, ">= 1")
        _check(self.decode_samples >= 1, "rlep.decode_samples", self.decode_samples, ">= 1")
        _check(self.source_steps >= 0, "rlep.source_steps", self.source_steps, ">= 0")
        _check_choices(self, "rlep")


@dataclass
class MethodConfigs:
    """The settings of every method, one section each; a method reads its own section (autonpo also npo's)."""

    npo: NPOConfig = field(default_factory=NPOConfig)
    autonpo: AutoNPOConfig = field(default_factory=AutoNPOConfig)
    luffy: LuffyConfig = field(default_factory=LuffyConfig)
    exgrpo: ExGRPOConfig = field(default_factory=ExGRPOConfig)
    rlep: RLEPConfig = field(default_factory=RLEPConfig)


@dataclass
class RunConfig:
    """One training run's length, evaluation and output."""

    steps: int = 200
    """Training steps (look-ahead steps are extra and counted separately)."""
    eval_every: int = 10
    """Evaluate every this many steps (and at the first and last step)."""
    final_evals: int = 3
    """'Final accuracy' is the mean over this many last evaluations (smooths eval noise)."""
    checkpoint_every: int = 0
    """Save a checkpoint every this many steps; 0 saves only the final one."""
    keep_checkpoints: int = 3
    """Keep the newest this many checkpoints of a run (older ones are removed once a newer one is complete); 0
    keeps all. [assumption]"""
    tensorboard: bool = True
    """Write TensorBoard event files next to metrics.csv."""

    def __post_init__(self) -> None:
        _check(self.steps >= 1, "steps", self.steps, ">= 1")
        _check(self.eval_every >= 1, "eval_every", self.eval_every, ">= 1")
        _check(self.final_evals >= 1, "final_evals", self.final_evals, ">= 1")
        _check(self.checkpoint_every >= 0, "checkpoint_every", self.checkpoint_every, ">= 0")
        _check(self.keep_checkpoints >= 0, "keep_checkpoints", self.keep_checkpoints, ">= 0 (0 keeps all)")
        _check_choices(self, "")


def check_compatible(grpo: GRPOConfig, cfgs: MethodConfigs | NPOConfig, method: str = "npo", label: str = "") -> None:
    """Cross-field checks between the GRPO step and a method's settings, run before any training."""
    if isinstance(cfgs, NPOConfig):
        cfgs = MethodConfigs(npo=cfgs)
    pre = f"{label}: " if label else ""
    if method in ("npo", "autonpo"):
        npo = cfgs.npo
        _check(
            npo.guide_slots < grpo.group_size,
            f"{pre}npo.guide_slots",
            npo.guide_slots,
            f"< grpo.group_size={grpo.group_size} (at least one on-policy row must stay in each group)",
        )
        _check(
            npo.guide_samples >= npo.guide_slots,
            f"{pre}npo.guide_samples",
            npo.guide_samples,
            f">= npo.guide_slots={npo.guide_slots} (otherwise no group can ever be guided)",
        )
    elif method == "luffy":
        lf = cfgs.luffy
        _check(
            lf.guide_slots < grpo.group_size,
            f"{pre}luffy.guide_slots",
            lf.guide_slots,
            f"< grpo.group_size={grpo.group_size}",
        )
        _check(
            lf.teacher_samples >= lf.guide_slots,
            f"{pre}luffy.teacher_samples",
            lf.teacher_samples,
            f">= luffy.guide_slots={lf.guide_slots}",
        )
    elif method == "exgrpo":
        n = round(cfgs.exgrpo.experience_ratio * grpo.prompts_per_step)
        _check(
            0 < n < grpo.prompts_per_step,
            f"{pre}exgrpo.experience_ratio",
            cfgs.exgrpo.experience_ratio,
            f"a ratio that leaves both replay and fresh prompts among {grpo.prompts_per_step} prompts per step",
        )


PAPER_RECIPES: dict[str, dict[str, object]] = {
    # LUFFY exp_scripts/train.sh and ExGRPO run_exgrpo.sh: grpo_use_std=False, loss_remove_token_mean=True (sum over
    # tokens / a constant length), entropy_coeff=0.001, KL off. Both also set loss_remove_clip=True, which only matters
    # with several updates per batch (one update: the on-policy ratio is exactly 1).
    "luffy": {"advantage": "dr_grpo", "aggregation": "sum_norm", "entropy_coef": 0.001, "kl_coef": 0.0},
    "exgrpo": {"advantage": "dr_grpo", "aggregation": "sum_norm", "entropy_coef": 0.001, "kl_coef": 0.0},
}
"""The GRPO-step settings of a method's own published script (``<method>:recipe=paper``)."""


def method_grpo(method: str, cfgs: MethodConfigs, grpo: GRPOConfig) -> GRPOConfig:
    """The GRPO step ``method`` trains with: ``grpo`` itself, or with a ``recipe=paper`` method's own settings.

    >>> method_grpo("luffy", MethodConfigs(luffy=LuffyConfig(recipe="paper")), GRPOConfig()).advantage
    'dr_grpo'
    """
    section = getattr(cfgs, method, None)
    if getattr(section, "recipe", "shared") != "paper":
        return grpo
    return dataclasses.replace(grpo, **PAPER_RECIPES[method])  # type: ignore[arg-type]


AUTONPO_IGNORES = {
    "delta", "interventions", "every", "when", "window", "guidance_window", "future", "extrapolate_k",
    "extrapolate_alpha",
}  # fmt: skip
"""NPO fields AutoNPO does not read (it picks Delta, the intervention steps and the guided window itself)."""


def parse_method(spec: str, cfgs: MethodConfigs | NPOConfig) -> tuple[str, MethodConfigs]:
    """Resolve a method spec ``name[:field=value[:field=value...]]`` into (method name, its settings).

    Overrides set fields of the method's own section (``npo``, ``autonpo``, ``luffy``, ``exgrpo``, ``rlep``;
    autonpo also accepts npo's fields) for that method only, so one comparison can hold variants side by
    side, e.g. ``npo:delta=1`` or ``npo:interventions=0+250`` (``+`` separates the items of a tuple field).

    >>> parse_method("npo:delta=5:gate=0.5", NPOConfig())[1].npo.delta
    5
    """
    import difflib

    if isinstance(cfgs, NPOConfig):
        cfgs = MethodConfigs(npo=cfgs)
    known = list(METHODS)
    name, *overrides = spec.strip().split(":")
    if name not in known:
        near = difflib.get_close_matches(name, known, n=1)
        hint = f" (did you mean {near[0]!r}?)" if near else ""
        raise ValueError(f"methods: unknown method {name!r}{hint}; choose one of {list(known)}")
    if overrides and name == "grpo":
        raise ValueError(f"methods: {spec!r}: grpo takes no overrides")
    sections = [name] + (["npo"] if name == "autonpo" else [])

    def names_of(sec: str) -> set[str]:
        names = {f.name for f in dataclasses.fields(getattr(cfgs, sec))}
        # autonpo's guided steps read npo's gate/slots/loss, but not npo's manual schedule
        return names - AUTONPO_IGNORES if (name, sec) == ("autonpo", "npo") else names

    changes: dict[str, dict[str, object]] = {sec: {} for sec in sections}
    for ov in overrides:
        key, sep, raw = ov.partition("=")
        sec = next((s for s in sections if key in names_of(s)), None)
        if not sep or sec is None:
            names = [n for s in sections for n in sorted(names_of(s))]
            near = difflib.get_close_matches(key, names, n=1)
            hint = f" (did you mean {near[0]!r}?)" if near else ""
            raise ValueError(f"methods: {spec!r}: {ov!r} is not field=value of {' or '.join(sections)}{hint}")
        default = getattr(getattr(cfgs, sec), key)
        try:
            if isinstance(default, bool):
                if raw.lower() not in ("true", "false", "1", "0"):
                    raise ValueError(raw)
                value: object = raw.lower() in ("true", "1")
            elif isinstance(default, tuple):
                value = tuple(int(x) for x in raw.split("+") if x)
            else:
                value = type(default)(raw)
        except ValueError as e:
            raise ValueError(f"methods: {spec!r}: {sec}.{key} cannot be {raw!r}") from e
        changes[sec][key] = value
    new = {sec: dataclasses.replace(getattr(cfgs, sec), **kw) for sec, kw in changes.items() if kw}
    return name, dataclasses.replace(cfgs, **new)
