"""``npo-lab compare``: several methods over several seeds, side by side -> report.md, curves.png, results.json."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from npo_lab.cli.common import ExperimentConfig, backend_factory
from npo_lab.cli.config_file import to_dict
from npo_lab.config import METHODS, RunConfig


@dataclass
class CompareCommand(ExperimentConfig):
    """Compare methods over several seeds, on the built-in arithmetic task or (--backend gym) an environment."""

    steps: int = 400
    """Training steps per run (look-ahead steps are extra and reported separately)."""
    eval_every: int = 20
    """Evaluate every this many steps (and at the first and last step)."""
    tensorboard: bool = False
    """Also write TensorBoard files for every run (CSV metrics are always written)."""
    checkpoint_every: int = 0
    """Save a training checkpoint of every run every this many steps (and at the end); 0 saves none."""
    methods: str = "grpo,npo,autonpo,luffy,exgrpo,rlep"
    """Comma-separated methods (grpo, npo, autonpo, luffy, exgrpo, rlep); the first is the baseline for the target
    and the speed-ups. A method may carry overrides of its own section for side-by-side variants:
    'grpo,npo,npo:delta=1,npo:guide_samples=16:interventions=0+250,autonpo:cooldown=40'."""
    seeds: int = 4
    """Number of seeds (seeds first_seed .. first_seed + seeds - 1)."""
    first_seed: int = 0
    """First seed."""
    out: str = "runs/compare"
    """Output folder for report.md, curves.png, results.json, config.json and per-run metrics."""
    workers: int = 0
    """Worker processes (one seed each at a time); 0 = min(seeds, CPU cores, 2)."""
    target: float = 0.0
    """Target eval accuracy for 'steps to target'; 0 = target_fraction x the baseline's median final accuracy."""
    target_fraction: float = 0.9
    """Used when target is 0. [assumption: 90% of GRPO's final accuracy, in the spirit of RLEP's 'steps to
    reach the baseline's peak']"""
    bootstrap: int = 2000
    """Bootstrap resamples for the confidence intervals."""

    def __post_init__(self) -> None:
        super().__post_init__()
        names = self.method_list
        if not names:
            raise ValueError(f"methods must list at least one of {list(METHODS)}, got {self.methods!r}")
        if len(set(names)) != len(names):
            raise ValueError(f"methods must list each method once, got {self.methods!r}")
        for spec in names:
            self.check_method(spec)
        if self.seeds < 1:
            raise ValueError(f"seeds must be >= 1, got {self.seeds}")
        if self.workers < 0:
            raise ValueError(f"workers must be >= 0, got {self.workers}")
        if not 0.0 <= self.target <= 1.0:
            raise ValueError(f"target must be in [0, 1], got {self.target}")
        if not 0.0 < self.target_fraction <= 1.0:
            raise ValueError(f"target_fraction must be in (0, 1], got {self.target_fraction}")
        if self.bootstrap < 100:
            raise ValueError(f"bootstrap must be >= 100, got {self.bootstrap}")

    @property
    def method_list(self) -> list[str]:
        return [m.strip() for m in self.methods.split(",") if m.strip()]

    @property
    def run_methods(self) -> list[str]:
        return self.method_list


def run_compare(cfg: CompareCommand, command: str) -> dict[str, Any]:
    from npo_lab.experiments.compare import compare  # lazy: torch is not needed to build --help

    seeds = list(range(cfg.first_seed, cfg.first_seed + cfg.seeds))
    run = RunConfig(
        steps=cfg.steps,
        eval_every=cfg.eval_every,
        final_evals=cfg.final_evals,
        checkpoint_every=cfg.checkpoint_every,
        keep_checkpoints=cfg.keep_checkpoints,
        tensorboard=cfg.tensorboard,
    )
    doc = compare(
        backend_factory(cfg),
        cfg.method_list,
        seeds,
        run,
        cfg.grpo,
        cfg.method_configs,
        cfg.out,
        workers=cfg.workers,
        target=cfg.target or None,
        target_fraction=cfg.target_fraction,
        n_boot=cfg.bootstrap,
        command=command,
        config_doc=to_dict(cfg),
    )
    print(Path(cfg.out, "report.md").read_text())
    return doc
