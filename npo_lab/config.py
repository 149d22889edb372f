"""Typed, documented configuration for the algorithm core.

Every field's docstring is its ``--help`` text. Each default says where it comes from: ``[paper]`` for a
value the NPO paper (arXiv 2604.20733) states, the cited work for a value taken from another method, and
``[assumption]`` for a choice this toolkit made where the paper is silent.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass
from typing import Literal

METHODS = {
    "grpo": "plain GRPO: no guide rows",
    "npo": "NPO: guides from the run's own near-future checkpoint (manual schedule)",
}
"""The methods one run can train, by name (docs/methods.md maps each to its paper and its config)."""


def _check(cond: bool, field: str, got: object, allowed: str) -> None:
    if not cond:
        raise ValueError(f"{field} must be {allowed}, got {got!r}")


def _check_choices(cfg: object, prefix: str) -> None:
    """Every ``Literal[...]`` field of ``cfg`` holds one of its declared values (read from the annotation,
    so the allowed values are written once)."""
    hints = typing.get_type_hints(type(cfg))
    for f in dataclasses.fields(cfg):  # type: ignore[arg-type]
        tp = hints[f.name]
        if typing.get_origin(tp) is Literal:
            allowed = typing.get_args(tp)
            value = getattr(cfg, f.name)
            _check(value in allowed, f"{prefix}.{f.name}", value, "one of " + ", ".join(map(repr, allowed)))


@dataclass
class GRPOConfig:
    """The GRPO step shared by every method."""

    batch_size: int = 128
    """Rows sampled per training step (prompts x group_size); must be divisible by group_size. [assumption]"""
    group_size: int = 8
    """G, rollouts per prompt; one GRPO group. [assumption: the LUFFY/ExGRPO convention of 8]"""
    minibatch_size: int = 0
    """Rows per optimiser step; 0 means the whole batch (one update per batch, ratio exactly 1)."""
    epochs: int = 1
    """Passes over each batch (PPO epochs). 1 keeps GRPO on-policy. [assumption]"""
    lr: float = 3e-4
    """Adam learning rate. [assumption: 1e-3 made GRPO collapse on the tiny simulation model, 3e-4 learns]"""
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
        _check(self.epochs >= 1, "grpo.epochs", self.epochs, ">= 1")
        _check(self.lr > 0, "grpo.lr", self.lr, "> 0")
        _check(self.max_grad_norm >= 0, "grpo.max_grad_norm", self.max_grad_norm, ">= 0")
        _check(0 <= self.clip_eps_low < 1, "grpo.clip_eps_low", self.clip_eps_low, "in [0, 1)")
        _check(self.clip_eps_high >= 0, "grpo.clip_eps_high", self.clip_eps_high, ">= 0")
        _check(self.kl_coef >= 0, "grpo.kl_coef", self.kl_coef, ">= 0")
        _check(self.norm_constant >= 0, "grpo.norm_constant", self.norm_constant, ">= 0")
        _check_choices(self, "grpo")

    @property
    def prompts_per_step(self) -> int:
        """Groups per batch: batch_size / group_size."""
        return self.batch_size // self.group_size


@dataclass
class NPOConfig:
    """Near-Future Policy Optimization: look ahead, keep pi_{t+delta}, roll back, guide failing groups."""

    delta: int = 20
    """Look-ahead distance: plain GRPO steps trained ahead to get the near-future checkpoint. [assumption]"""
    gate: float = 0.6
    """A prompt is guided when its on-policy group accuracy is strictly below this. [paper: 0.6; 'strictly' assumed]"""
    guide_slots: int = 1
    """k, on-policy slots replaced by verified-correct guide rows in each gated group. [paper: 1]"""
    guide_samples: int = 8
    """Samples drawn from pi_{t+delta} per gated prompt to find a verified-correct one. [assumption: one group's
    worth (G = 8); more samples raise the guide's quality Q at the price of guide rollouts]"""
    slot: Literal["last", "incorrect_first"] = "last"
    """Which slot a guide replaces: last (a uniformly random slot, rows are i.i.d.) or incorrect_first. [assumption]"""
    guide_loss: Literal["on_policy", "shaped", "importance"] = "on_policy"
    """Guide rows in the loss: on_policy (ordinary clipped ratio vs recomputed old log-probs: the reading of
    'the RL objective remains unchanged' [assumption]), shaped (LUFFY p/(p+gamma)), importance (pi/pi_behaviour,
    truncated)."""
    shaping_gamma: float = 0.1
    """gamma of the shaped guide loss f(p) = p / (p + gamma) (LUFFY: 0.1)."""
    is_cap: float = 2.0
    """Truncation of the importance ratio for guide_loss=importance. [assumption]"""
    interventions: tuple[int, ...] = (0, 100)
    """Steps at which NPO looks ahead: 0 is the early bootstrap, a later step the plateau breakthrough.
    [assumption: the paper does not give the steps]"""
    every: int = 0
    """If > 0, also intervene every this many steps after the last listed intervention. [assumption]"""
    guidance_window: int = 0
    """Steps the guide checkpoint is used after an intervention; 0 = until the next intervention or the end
    of training. [assumption: the paper does not say]"""
    restore_optimizer: bool = True
    """Restore the optimizer state on rollback (exact rollback). [assumption: the paper does not say]"""

    def __post_init__(self) -> None:
        _check(self.delta >= 1, "npo.delta", self.delta, ">= 1 (look-ahead steps)")
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

    def intervention_steps(self, total_steps: int) -> list[int]:
        """The sorted intervention steps below ``total_steps``."""
        steps = set(s for s in self.interventions if s < total_steps)
        if self.every > 0:
            start = max(self.interventions, default=0) + self.every
            steps.update(range(start, total_steps, self.every))
        return sorted(steps)


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
    tensorboard: bool = True
    """Write TensorBoard event files next to metrics.csv."""

    def __post_init__(self) -> None:
        _check(self.steps >= 1, "steps", self.steps, ">= 1")
        _check(self.eval_every >= 1, "eval_every", self.eval_every, ">= 1")
        _check(self.final_evals >= 1, "final_evals", self.final_evals, ">= 1")
        _check(self.checkpoint_every >= 0, "checkpoint_every", self.checkpoint_every, ">= 0")


def check_compatible(grpo: GRPOConfig, npo: NPOConfig, label: str = "npo") -> None:
    """Cross-field checks between the GRPO step and NPO, run before any training."""
    _check(
        npo.guide_slots < grpo.group_size,
        f"{label}.guide_slots",
        npo.guide_slots,
        f"< grpo.group_size={grpo.group_size} (at least one on-policy row must stay in each group)",
    )
    _check(
        npo.guide_samples >= npo.guide_slots,
        f"{label}.guide_samples",
        npo.guide_samples,
        f">= {label}.guide_slots={npo.guide_slots} (otherwise no group can ever be guided)",
    )


def parse_method(spec: str, npo: NPOConfig) -> tuple[str, NPOConfig]:
    """Resolve a method spec ``name[:field=value[:field=value...]]`` into (method name, its NPOConfig).

    Overrides set NPOConfig fields for that method only, so one comparison can hold variants side by side,
    e.g. ``npo:delta=1`` or ``npo:interventions=0+250`` (``+`` separates the items of a tuple field).

    >>> parse_method("npo:delta=5:gate=0.5", NPOConfig())[1].delta
    5
    """
    import dataclasses
    import difflib

    known = list(METHODS)
    name, *overrides = spec.strip().split(":")
    if name not in known:
        near = difflib.get_close_matches(name, known, n=1)
        hint = f" (did you mean {near[0]!r}?)" if near else ""
        raise ValueError(f"methods: unknown method {name!r}{hint}; choose one of {list(known)}")
    if overrides and name == "grpo":
        raise ValueError(f"methods: {spec!r}: grpo takes no npo.* overrides")
    fields = {f.name: f for f in dataclasses.fields(NPOConfig)}
    changes: dict[str, object] = {}
    for ov in overrides:
        key, sep, raw = ov.partition("=")
        if not sep or key not in fields:
            near = difflib.get_close_matches(key, list(fields), n=1)
            hint = f" (did you mean {near[0]!r}?)" if near else ""
            raise ValueError(f"methods: {spec!r}: {ov!r} is not field=value of npo{hint}")
        default = getattr(npo, key)
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
            raise ValueError(f"methods: {spec!r}: npo.{key} cannot be {raw!r}") from e
        changes[key] = value
    return name, dataclasses.replace(npo, **changes)
