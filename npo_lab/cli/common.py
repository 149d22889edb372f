"""What every command shares: the experiment's config (task, policy, backend, GRPO step, every method's section), and
the composition root: the only place that names a backend (:func:`backend_factory`)."""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from npo_lab.config import (
    AutoNPOConfig,
    ExGRPOConfig,
    GRPOConfig,
    LuffyConfig,
    MethodConfigs,
    NPOConfig,
    RLEPConfig,
    RunConfig,
    check_compatible,
    parse_method,
)
from npo_lab.envs.config import GymConfig, TinyLMConfig
from npo_lab.llm.config import LLMConfig
from npo_lab.tasks.arithmetic import ArithmeticConfig


@dataclass
class ExperimentConfig(RunConfig):
    """A run's length and outputs, plus the task, the policy, the GRPO step and every method's settings."""

    backend: Literal["arith", "gym", "qwen-vl"] = "arith"
    """Which backend runs the policy: arith (the built-in arithmetic task: task.* and model.*), gym (a gymnasium
    environment: env and gym.*) or qwen-vl (a Qwen3-VL model on image+text RLVR data: llm.*, e.g.
    --llm.model Qwen/Qwen3-VL-8B-Instruct; needs the [llm] extra)."""
    dry_run: bool = False
    """Print the effective batch arithmetic (and, for qwen-vl, a per-GPU memory estimate) and exit."""
    env: str = "npo_lab/Chain-v0"
    """backend=gym: the environment id (npo_lab/Chain-v0, npo_lab/ChainEasy-v0, npo_lab/KeyDoor-v0,
    npo_lab/FrozenLake-v0, npo_lab/CartPoleBalance-v0, or 'module:id' of a registered success task: time limit,
    Discrete actions, info['success']; see docs/gym.md)."""
    task: ArithmeticConfig = field(default_factory=ArithmeticConfig)
    model: TinyLMConfig = field(default_factory=TinyLMConfig)
    gym: GymConfig = field(default_factory=GymConfig)
    llm: LLMConfig = field(default_factory=LLMConfig)
    grpo: GRPOConfig = field(default_factory=GRPOConfig)
    npo: NPOConfig = field(default_factory=NPOConfig)
    autonpo: AutoNPOConfig = field(default_factory=AutoNPOConfig)
    luffy: LuffyConfig = field(default_factory=LuffyConfig)
    exgrpo: ExGRPOConfig = field(default_factory=ExGRPOConfig)
    rlep: RLEPConfig = field(default_factory=RLEPConfig)

    @property
    def run_methods(self) -> list[str]:
        """The method specs this command trains (the checks that depend on the method read them)."""
        return ["grpo"]

    @property
    def method_configs(self) -> MethodConfigs:
        return MethodConfigs(self.npo, self.autonpo, self.luffy, self.exgrpo, self.rlep)

    def check_method(self, spec: str) -> None:
        """Parse a method spec and run its cross-field checks (errors name the spec and the field)."""
        try:
            name, cfgs = parse_method(spec, self.method_configs)
        except ValueError as e:  # an override's own check (npo:delta=0): say which method spec it came from
            raise ValueError(str(e) if "methods:" in str(e) else f"methods {spec!r}: {e}") from e
        check_compatible(self.grpo, cfgs, name, "" if ":" not in spec else f"methods {spec!r}")


def backend_factory(cfg: ExperimentConfig) -> Any:
    """A picklable ``make_backend(seed)`` for the configured backend (the only place a backend is named)."""
    if cfg.backend == "gym":
        from npo_lab.envs.gym_backend import make_gym_backend

        return functools.partial(make_gym_backend, cfg.env, cfg.gym)
    if cfg.backend == "qwen-vl":
        from npo_lab.llm.backend import make_qwen_vl_backend

        return functools.partial(make_qwen_vl_backend, cfg.llm)
    from npo_lab.envs.arithmetic_backend import make_arithmetic_backend

    return functools.partial(make_arithmetic_backend, cfg.task, cfg.model)


def check_backend(cfg: ExperimentConfig) -> None:
    """Checks that need the backend's packages (gym: the environment id and its spaces), before any work."""
    if cfg.backend == "gym":
        from npo_lab.envs.gym_backend import make_env

        make_env(cfg.env).close()
    if cfg.backend == "qwen-vl" and not cfg.dry_run:
        try:
            import transformers  # noqa: F401
        except ImportError as e:
            raise ValueError("--backend qwen-vl needs the [llm] extra: pip install -e '.[llm]'") from e
        if any(m.split(":")[0] == "luffy" for m in cfg.run_methods) and not cfg.llm.teacher:
            raise ValueError("method luffy on --backend qwen-vl needs --llm.teacher <hub id or folder>")
        data = cfg.llm.data.dataset
        if data.endswith(".jsonl") and not Path(data).is_file():
            raise ValueError(f"llm.data.dataset: {data} does not exist")


def run_label(cfg: ExperimentConfig) -> str:
    """The task part of a run folder's name: ``arith`` or the environment id (``npo_lab-Chain-v0``)."""
    if cfg.backend == "qwen-vl":
        return "qwen-vl-" + Path(cfg.llm.model.rstrip("/")).name
    return cfg.task.name if cfg.backend == "arith" else cfg.env.replace("/", "-")


def dry_run(cfg: ExperimentConfig) -> str:
    """The report ``--dry-run`` prints: batch arithmetic (and, for qwen-vl, a memory estimate)."""
    method = cfg.run_methods[0].split(":")[0]
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if cfg.backend == "qwen-vl":
        from npo_lab.llm.plan import plan

        return plan(cfg.llm, cfg.grpo, method, world)
    g = cfg.grpo
    return (
        f"# dry run: backend {cfg.backend}, method {method}\n\n"
        f"prompts per step x G = {g.prompts_per_step} x {g.group_size} = {g.batch_size} rows; "
        f"{g.epochs * g.batch_size // (g.minibatch_size or g.batch_size)} optimizer step(s) per batch"
    )
