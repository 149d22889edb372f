"""``npo-lab qvs``: Q, V and S of near-future, past and teacher sources along GRPO runs -> qvs.png, qvs.json."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from npo_lab.cli.common import ExperimentConfig, backend_factory
from npo_lab.cli.config_file import to_dict


@dataclass
class QVSCommand(ExperimentConfig):
    """Measure Q(Delta), V(Delta) and S(Delta) of near-future, past and teacher sources along GRPO runs."""

    steps: int = 300
    """Length of the plain GRPO run along which the sources are measured."""
    at: tuple[int, ...] = (0, 100, 200, 300)
    """Training steps at which Q, V and S are measured."""
    deltas: tuple[int, ...] = (-40, -20, -10, -5, 1, 5, 10, 20, 40)
    """Source distances: Delta > 0 the near future pi_{t+Delta}; Delta < 0 a past checkpoint (replay)."""
    teacher: bool = True
    """Also measure the backend's external teacher (luffy's source)."""
    extrapolate_k: int = 10
    """Also measure the extrapolated future theta_t + (Delta / k)(theta_t - theta_{t-k}) for every Delta > 0, with
    k = this (at measured steps t >= k); 0 leaves it out."""
    probe: int = 256
    """Probe prompts (drawn with the seed); the failed set is those pi_t solves in fewer than npo.gate of k tries."""
    k: int = 8
    """Samples per prompt, for pi_t's failed set and for every source."""
    seeds: int = 3
    """Number of seeds."""
    first_seed: int = 0
    """First seed."""
    workers: int = 0
    """Worker processes; 0 = min(seeds, CPU cores, 2)."""
    out: str = "runs/qvs"
    """Output folder for qvs.json, qvs.png, qvs.md and config.json."""
    tensorboard: bool = False
    """Unused by qvs (no per-step logs)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        self.at = tuple(sorted(set(int(a) for a in self.at)))
        self.deltas = tuple(sorted(set(int(d) for d in self.deltas)))
        if not self.at or self.at[0] < 0 or self.at[-1] > self.steps:
            raise ValueError(f"at must list steps in [0, steps={self.steps}], got {self.at}")
        if not self.deltas or 0 in self.deltas:
            raise ValueError(
                f"deltas must be non-zero distances (negative: past, positive: future), got {self.deltas}"
            )
        if self.extrapolate_k < 0:
            raise ValueError(f"extrapolate_k must be >= 0 (0: off), got {self.extrapolate_k}")
        for name in ("probe", "k", "seeds"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.workers < 0:
            raise ValueError(f"workers must be >= 0, got {self.workers}")


def run_qvs(cfg: QVSCommand, command: str) -> dict[str, Any]:
    from npo_lab.experiments.qvs import measure_qvs, write_report  # lazy: torch is not needed to build --help

    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(to_dict(cfg), indent=2) + "\n")
    doc = measure_qvs(
        backend_factory(cfg),
        list(range(cfg.first_seed, cfg.first_seed + cfg.seeds)),
        cfg.grpo,
        steps=cfg.steps,
        at=cfg.at,
        deltas=cfg.deltas,
        probe=cfg.probe,
        k=cfg.k,
        gate=cfg.npo.gate,
        teacher=cfg.teacher,
        estimator=cfg.autonpo.v,
        floor=cfg.autonpo.v_floor,
        kl_beta=cfg.autonpo.kl_beta,
        extrapolate_k=cfg.extrapolate_k,
        workers=cfg.workers,
        command=command,
    )
    print(write_report(doc, out))
    return doc
