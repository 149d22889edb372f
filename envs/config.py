"""Configuration of the small backends (standard library only, so the CLI can build --help cheaply)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


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
        if self.d_model < 8 or self.n_head < 1 or self.d_model % self.n_head:
            raise ValueError(
                f"model.d_model ({self.d_model}) must be >= 8 and divisible by model.n_head ({self.n_head})"
            )
        if self.n_layer < 1:
            raise ValueError(f"model.n_layer must be >= 1, got {self.n_layer}")
        if self.temperature <= 0:
            raise ValueError(f"model.temperature must be > 0, got {self.temperature}")
        if self.warm_steps < 0 or self.warm_batch < 1 or self.warm_lr <= 0:
            raise ValueError("model.warm_steps must be >= 0, model.warm_batch >= 1 and model.warm_lr > 0")
        if not 0.0 <= self.warm_full_frac <= 1.0:
            raise ValueError(f"model.warm_full_frac must be in [0, 1], got {self.warm_full_frac}")
        styles = [s for s in self.warm_styles.split(",") if s]
        bad = [s for s in styles if s not in ("bare", "padded", "scratch", "alt")]
        if not styles or bad:
            raise ValueError(
                f"model.warm_styles must be a comma list of bare, padded, scratch, alt; got {self.warm_styles!r}"
            )
        if self.teacher_style not in ("bare", "padded", "scratch", "alt"):
            raise ValueError(
                f"model.teacher_style must be one of bare, padded, scratch, alt; got {self.teacher_style!r}"
            )
        if self.teacher_steps < 1:
            raise ValueError(f"model.teacher_steps must be >= 1, got {self.teacher_steps}")


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
        if self.policy not in ("mlp", "gru"):
            raise ValueError(f"gym.policy must be one of 'mlp', 'gru', got {self.policy!r}")
        if self.hidden < 1 or self.n_train < 1 or self.n_eval < 1:
            raise ValueError("gym.hidden, gym.n_train and gym.n_eval must be >= 1")
        if self.temperature <= 0:
            raise ValueError(f"gym.temperature must be > 0, got {self.temperature}")
        if self.teacher_steps < 1:
            raise ValueError(f"gym.teacher_steps must be >= 1, got {self.teacher_steps}")
