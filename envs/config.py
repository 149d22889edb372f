"""Configuration of the small backends (standard library only, so the CLI can build --help cheaply)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from npo_lab.config import _check, _check_choices

STYLES = ("bare", "padded", "scratch", "alt")
"""Completion styles of the arithmetic task (npo_lab.tasks.arithmetic.format_completion)."""


@dataclass
class TinyLMConfig:
    """The tiny character-level transformer policy and its supervised warm start."""

    d_model: int = 64
    """Embedding width."""
    n_layer: int = 2
    """Transformer blocks."""
    n_head: int = 4
    """Attention heads (must divide d_model)."""
    temperature: float = 1.0
    """Policy temperature: logits are divided by it for sampling and for the training log-probs alike
    (evaluation is greedy)."""
    warm_steps: int = 300
    """Supervised warm-start steps, so RL starts with low but non-zero success. [assumption, tuned]"""
    warm_lr: float = 3e-3
    """Warm-start Adam learning rate."""
    warm_batch: int = 64
    """Warm-start batch size."""
    warm_easy_digits: int = 2
    """Warm-start problems have operands of at most this many significant digits (easier problems),
    padded to the task's digits in the prompt."""
    warm_full_frac: float = 0.1
    """Fraction of warm-start problems drawn at full difficulty from the training split."""
    warm_styles: str = "bare,padded,scratch"
    """Completion styles of the warm-start targets, sampled uniformly (several valid trajectories per problem)."""
    teacher_style: str = "alt"
    """Completion style of the external teacher (LUFFY's source): a style the student was not warm-started on,
    so the teacher's correct rows are unlikely under the student (strong but far). [assumption]"""
    teacher_steps: int = 1500
    """Supervised steps of the teacher, on full-difficulty training problems in teacher_style only. [assumption:
    enough for a strong teacher]"""
    teacher_seed: int = 99
    """Seed of the teacher's initialisation and data (one fixed external teacher for every student seed)."""

    def __post_init__(self) -> None:
        _check(self.d_model >= 8, "model.d_model", self.d_model, ">= 8")
        _check(self.n_head >= 1, "model.n_head", self.n_head, ">= 1")
        _check(
            self.d_model % self.n_head == 0, "model.d_model", self.d_model, f"divisible by model.n_head={self.n_head}"
        )
        _check(self.n_layer >= 1, "model.n_layer", self.n_layer, ">= 1")
        _check(self.temperature > 0, "model.temperature", self.temperature, "> 0")
        _check(self.warm_steps >= 0, "model.warm_steps", self.warm_steps, ">= 0")
        _check(self.warm_lr > 0, "model.warm_lr", self.warm_lr, "> 0")
        _check(self.warm_batch >= 1, "model.warm_batch", self.warm_batch, ">= 1")
        _check(self.warm_easy_digits >= 1, "model.warm_easy_digits", self.warm_easy_digits, ">= 1")
        _check(0.0 <= self.warm_full_frac <= 1.0, "model.warm_full_frac", self.warm_full_frac, "in [0, 1]")
        styles = [s for s in self.warm_styles.split(",") if s]
        _check(
            bool(styles) and all(s in STYLES for s in styles),
            "model.warm_styles",
            self.warm_styles,
            "a comma list of " + ", ".join(STYLES),
        )
        _check(self.teacher_style in STYLES, "model.teacher_style", self.teacher_style, "one of " + ", ".join(STYLES))
        _check(self.teacher_steps >= 1, "model.teacher_steps", self.teacher_steps, ">= 1")
        _check_choices(self, "model")


@dataclass
class GymConfig:
    """The gymnasium backend: environment, policy network, seeds."""

    policy: Literal["mlp", "gru"] = "mlp"
    """Policy network: mlp (memoryless, the observation is the state) or gru (recurrent over the episode)."""
    hidden: int = 64
    """Hidden width of the policy network."""
    n_train: int = 1024
    """Training reset seeds 0 .. n_train - 1 (the prompt ids)."""
    n_eval: int = 64
    """Evaluation episodes, on held-out reset seeds 10**6 .. 10**6 + n_eval - 1, greedy policy."""
    vector: bool = True
    """Step the episodes of a batch through gymnasium's vector API (SyncVectorEnv); False steps them one by one."""
    temperature: float = 1.0
    """Policy temperature for sampling and for the training log-probs."""
    teacher_steps: int = 150
    """luffy's external teacher: a policy of another seed trained by plain GRPO for this many steps. [assumption]"""
    teacher_seed: int = 99
    """Seed of that teacher."""

    def __post_init__(self) -> None:
        for name in ("hidden", "n_train", "n_eval", "teacher_steps"):
            _check(getattr(self, name) >= 1, f"gym.{name}", getattr(self, name), ">= 1")
        _check(self.temperature > 0, "gym.temperature", self.temperature, "> 0")
        _check_choices(self, "gym")
