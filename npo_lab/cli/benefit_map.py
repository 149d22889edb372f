"""``npo-lab benefit-map``: regimes x methods x seeds, and Q, V, S along GRPO runs -> map.md, map.png, map.json.

A regime is a point of a grid of two config knobs (``--row-knob task.min_digits --row-values 0 1`` ...); every knob
is an ordinary config field, so a regime is exactly the run ``npo-lab compare`` would make with those two flags.
``--preset NAME`` starts from a named grid (:data:`PRESETS`, docs/benefit_map.md); flags given after it override it.
"""

from __future__ import annotations

import dataclasses
import json
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from npo_lab.cli.common import ExperimentConfig, backend_factory
from npo_lab.cli.config_file import to_dict
from npo_lab.config import NPOConfig

PRESETS: dict[str, dict[str, Any]] = {
    # the default grid: transfer between prompts (rows) x learning per step (columns); grpo, npo at Delta = 1 (the
    # control) and at Delta = 20; 5 seeds of 100 steps; Q, V, S along the GRPO runs (docs/benefit_map.md)
    "default": {},
    # the map of docs/benefit_map.md: the default grid with npo's extrapolated future and autonpo as well
    "full": {"methods": "grpo,npo:delta=1,npo:delta=20,npo:future=extrapolate,autonpo"},
    # the one regime where the future beat the Delta = 1 control on seeds the map had not seen (docs/benefit_map.md):
    # 2- and 3-digit problems mixed, lr 1e-3 (so much learning per step that GRPO ends below its warm start); npo at
    # Delta 1, 5, 20, 40; seeds 10-19 (the map's seeds 0-9 chose it)
    "high_lr": {
        "row_values": ["2"],
        "col_values": ["0.001"],
        "methods": "grpo,npo:delta=1,npo:delta=5,npo:delta=20,npo:delta=40",
        "seeds": 10,
        "first_seed": 10,
    },
    # a 2 x 2 map of 3 methods and 2 seeds that finishes in a few minutes (notebook 7, a first look)
    "quick": {
        "row_values": ["0", "1"],
        "col_values": ["0.0003", "0.001"],
        "seeds": 2,
        "steps": 40,
        "qvs_at": [0, 20],
        "qvs_deltas": [1, 5, 20],
        "qvs_probe": 64,
        "npo": {"interventions": [0, 20]},
        "task": {"n_eval": 128},
    },
}
"""Named starting points of ``npo-lab benefit-map --preset NAME`` (values in the config-file format)."""

SECTIONS = ("task", "model", "gym", "llm", "grpo", "npo", "autonpo", "luffy", "exgrpo", "rlep")


@dataclass
class BenefitMapCommand(ExperimentConfig):
    """Map when a future checkpoint beats the present: regimes x methods x seeds, Q, V and S along GRPO runs."""

    preset: str = ""
    """The named preset this configuration started from (set by --preset NAME; see docs/benefit_map.md)."""
    row_knob: str = "task.min_digits"
    """The grid's first knob, a config field as section.field (rows of the heatmaps); '' for a single row. Default:
    transfer between prompts (0 = one operand length, no mixture; 2, 1 = shorter problems that share the carry)."""
    row_values: tuple[str, ...] = ("0", "2", "1")
    """Values of row_knob, read with the field's type."""
    col_knob: str = "grpo.lr"
    """The grid's second knob (columns); '' for a single column. Default: learning per step."""
    col_values: tuple[str, ...] = ("0.0001", "0.0003", "0.001")
    """Values of col_knob."""
    methods: str = "grpo,npo:delta=1,npo:delta=20"
    """Comma-separated method specs (as in compare); must include grpo (the baseline, and the run Q, V, S are measured
    along) and the control. rlep is not offered (it needs a previous run of its own)."""
    control: str = "npo:delta=1"
    """The near-future control: the same NPO with Delta = 1, which has the look-ahead's extra guide samples and almost
    none of its future."""
    steps: int = 100
    """Training steps per run (look-ahead and rolled-back steps are extra and counted in the speed-up)."""
    eval_every: int = 10
    """Evaluate every this many steps (and at the first and last step)."""
    seeds: int = 5
    """Seeds per regime (first_seed .. first_seed + seeds - 1); every method of a seed starts from the same
    checkpoint."""
    first_seed: int = 0
    """First seed."""
    measure: bool = True
    """Measure Q, V and S along each regime's GRPO runs (qvs_*); False skips it (faster)."""
    qvs_at: tuple[int, ...] = (0, 50)
    """Steps of the GRPO runs at which Q, V and S are measured (each must be < steps)."""
    qvs_deltas: tuple[int, ...] = (1, 5, 10, 20, 40)
    """Near-future distances measured (one look-ahead of the largest, rolled back)."""
    qvs_probe: int = 128
    """Probe prompts per measurement; the failed set is those pi_t solves in at most npo.gate of qvs_k tries."""
    qvs_k: int = 8
    """Samples per probe prompt, for pi_t and for every source."""
    extrapolate_k: int = 10
    """The measured extrapolated futures use theta_t - theta_{t-k} with this k (and alpha = Delta / k); 0: none."""
    workers: int = 0
    """Worker processes (one (regime, seed) each at a time); 0 = min(jobs, CPU cores, 2)."""
    out: str = "runs/benefit_map"
    """Output folder: map.md, map.png, qvs_map.png, map.json, config.json and cells/ (one file per finished run; a run
    started again with the same out continues where it stopped)."""
    target_fraction: float = 0.9
    """Speed-up target: this fraction of GRPO's median final accuracy in the regime."""
    bootstrap: int = 2000
    """Bootstrap resamples for the confidence intervals."""
    tensorboard: bool = False
    """Unused by benefit-map (no per-step logs are written)."""
    npo: NPOConfig = field(default_factory=lambda: NPOConfig(interventions=(0, 50)))
    """NPO's settings; here the interventions default to steps 0 (the early bootstrap) and 50 (mid-run), which fit
    the map's 100-step runs."""

    def __post_init__(self) -> None:
        super().__post_init__()
        self.row_values, self.col_values = tuple(self.row_values), tuple(self.col_values)
        self.qvs_at = tuple(sorted(set(int(a) for a in self.qvs_at)))
        self.qvs_deltas = tuple(sorted(set(int(d) for d in self.qvs_deltas)))
        names = self.method_list
        if "grpo" not in names:
            raise ValueError(f"methods must include grpo (the baseline), got {self.methods!r}")
        if self.control not in names:
            raise ValueError(f"control {self.control!r} must be one of methods {names}")
        if len(set(names)) != len(names):
            raise ValueError(f"methods must list each method once, got {self.methods!r}")
        for spec in names:
            if spec.split(":")[0] == "rlep":
                raise ValueError("methods must not include rlep in benefit-map (it needs a previous run of its own)")
            self.check_method(spec)
        for name in ("seeds", "qvs_probe", "qvs_k"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.workers < 0 or self.extrapolate_k < 0:
            raise ValueError(f"workers and extrapolate_k must be >= 0, got {self.workers}, {self.extrapolate_k}")
        if self.measure and (not self.qvs_at or self.qvs_at[0] < 0 or self.qvs_at[-1] >= self.steps):
            raise ValueError(f"qvs_at must list steps in [0, steps={self.steps}), got {self.qvs_at}")
        if self.measure and (not self.qvs_deltas or self.qvs_deltas[0] < 1):
            raise ValueError(f"qvs_deltas must be near-future distances >= 1, got {self.qvs_deltas}")
        if not 0.0 < self.target_fraction <= 1.0:
            raise ValueError(f"target_fraction must be in (0, 1], got {self.target_fraction}")
        if self.bootstrap < 100:
            raise ValueError(f"bootstrap must be >= 100, got {self.bootstrap}")
        self.regimes()  # every knob and value checked now, before any work

    @property
    def method_list(self) -> list[str]:
        return [m.strip() for m in self.methods.split(",") if m.strip()]

    @property
    def run_methods(self) -> list[str]:
        return self.method_list

    def grid(self, command: str) -> dict[str, Any]:
        """The grid's axes as the report draws them ('-' for an axis without a knob) and the reproducing command."""
        return {
            "row_knob": self.row_knob or "-",
            "row_values": list(self.row_values) if self.row_knob else ["-"],
            "col_knob": self.col_knob or "-",
            "col_values": list(self.col_values) if self.col_knob else ["-"],
            "command": command,
        }

    def regimes(self) -> list[tuple[Any, ExperimentConfig]]:
        """Every regime of the grid and the configuration it runs (the knobs applied and validated)."""
        from npo_lab.experiments.benefit_map import Regime

        rows = [(self.row_knob, v) for v in self.row_values] if self.row_knob else [("", "")]
        cols = [(self.col_knob, v) for v in self.col_values] if self.col_knob else [("", "")]
        if self.row_knob and self.row_knob == self.col_knob:
            raise ValueError(f"col_knob must differ from row_knob, got {self.col_knob!r} twice")
        for side, knob, values in (("row", self.row_knob, self.row_values), ("col", self.col_knob, self.col_values)):
            if knob and not values:
                raise ValueError(f"{side}_values must list at least one value of {side}_knob={knob!r}")
        out = []
        for i, (rk, rv) in enumerate(rows):
            for j, (ck, cv) in enumerate(cols):
                cfg: ExperimentConfig = ExperimentConfig(**{f.name: getattr(self, f.name) for f in _base_fields()})
                overrides: dict[str, Any] = {}
                for side, knob, raw in (("row", rk, rv), ("col", ck, cv)):
                    if knob:
                        cfg, value = apply_knob(cfg, knob, raw, side)
                        overrides[knob] = value
                name = ",".join(f"{k.split('.')[-1]}={v}" for k, v in overrides.items()) or "base"
                for spec in self.method_list:  # the methods' cross-field checks against this regime's GRPO step
                    try:
                        cfg.check_method(spec)
                    except ValueError as e:
                        raise ValueError(f"row_values/col_values: regime {name}: {e}") from e
                out.append((Regime(name.replace("/", "_").replace(" ", ""), overrides, i, j), cfg))
        names = [r.name for r, _ in out]
        if len(set(names)) != len(names):
            raise ValueError(f"row_values and col_values must give distinct regimes, got {names}")
        return out


def _base_fields() -> list[dataclasses.Field]:
    return [f for f in dataclasses.fields(ExperimentConfig) if f.init]


def apply_knob(cfg: ExperimentConfig, knob: str, raw: str, side: str = "row") -> tuple[ExperimentConfig, Any]:
    """``cfg`` with the field ``knob`` (``section.field``) set to ``raw`` read with the field's type; the section's
    own checks run on the new value. ``side`` (row, col) names the flag in errors."""
    section, _, name = knob.partition(".")
    if section not in SECTIONS or not name:
        raise ValueError(f"{side}_knob must be section.field with a section of {', '.join(SECTIONS)}, got {knob!r}")
    sub = getattr(cfg, section)
    hints = typing.get_type_hints(type(sub))
    if name not in hints or name not in {f.name for f in dataclasses.fields(sub)}:
        import difflib

        near = difflib.get_close_matches(name, sorted(hints), n=1)
        hint = f" (did you mean {section}.{near[0]}?)" if near else ""
        raise ValueError(f"{side}_knob must name a field of {section}, got {knob!r}{hint}")
    tp = hints[name]
    try:
        if tp is bool:
            if raw.lower() not in ("true", "false", "1", "0"):
                raise ValueError(raw)
            value: Any = raw.lower() in ("true", "1")
        elif tp in (int, float, str):
            value = tp(raw)
        elif typing.get_origin(tp) is typing.Literal:
            value = raw
        elif typing.get_origin(tp) is tuple:
            value = tuple(int(x) for x in raw.split("+") if x)
        else:
            raise ValueError(raw)
    except ValueError as e:
        raise ValueError(f"{side}_values must be values of {knob} ({getattr(tp, '__name__', tp)}), got {raw!r}") from e
    try:
        new_sub = dataclasses.replace(sub, **{name: value})
    except ValueError as e:
        raise ValueError(f"{side}_values must be values {knob} accepts: {e}") from e
    return dataclasses.replace(cfg, **{section: new_sub}), value


def run_benefit_map(cfg: BenefitMapCommand, command: str) -> dict[str, Any]:
    from npo_lab.config import RunConfig
    from npo_lab.experiments.benefit_map import ProbeSpec, load_cells, run_map, summarize_map, write_map_report

    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    doc_cfg = to_dict(cfg)
    check_same_map(out / "config.json", doc_cfg)
    (out / "config.json").write_text(json.dumps(doc_cfg, indent=2) + "\n")
    pairs = cfg.regimes()
    by_name = {r.name: c for r, c in pairs}
    regimes = [r for r, _ in pairs]

    def prepare(regime: Any) -> tuple[Any, Any, Any]:
        c = by_name[regime.name]
        return backend_factory(c), c.grpo, c.method_configs

    run = RunConfig(steps=cfg.steps, eval_every=cfg.eval_every, final_evals=cfg.final_evals, tensorboard=False)
    probe = None
    if cfg.measure:
        probe = ProbeSpec(
            at=cfg.qvs_at,
            deltas=cfg.qvs_deltas,
            probe=cfg.qvs_probe,
            k=cfg.qvs_k,
            gate=cfg.npo.gate,
            extrapolate_k=cfg.extrapolate_k,
            estimator=cfg.autonpo.v,
            floor=cfg.autonpo.v_floor,
            kl_beta=cfg.autonpo.kl_beta,
        )
    seeds = list(range(cfg.first_seed, cfg.first_seed + cfg.seeds))
    wall = run_map(prepare, regimes, cfg.method_list, seeds, run, out, probe=probe, workers=cfg.workers)
    doc = summarize_map(
        load_cells(out),
        regimes,
        cfg.method_list,
        cfg.method_configs,
        control=cfg.control,
        target_fraction=cfg.target_fraction,
        n_boot=cfg.bootstrap,
    )
    doc.update(command=command, seeds=seeds, wall_s_this_call=wall)
    grid = cfg.grid(command)
    doc["grid"] = grid
    print(write_map_report(doc, out, grid))
    return doc


RESUME_MAY_CHANGE = ("workers", "preset")
"""Fields a map continued in the same folder may change (they do not change any result)."""


def check_same_map(path: Path, doc: dict[str, Any]) -> None:
    """A folder that already holds a map's cells continues only the same map: refuse another configuration, naming
    the fields that differ."""
    if not path.is_file():
        return
    from npo_lab.cli.config_file import flatten

    try:
        old = flatten(json.loads(path.read_text()))
    except (ValueError, json.JSONDecodeError) as e:
        raise ValueError(f"{path} could not be read ({e}); remove it or choose another --out") from e
    new = flatten(doc)
    # a field the old map's npo_lab did not have yet ran at its default there: only a changed value differs
    defaults = flatten(to_dict(BenefitMapCommand()))
    diff = sorted(
        k for k in set(old) | set(new) if old.get(k, defaults.get(k)) != new.get(k) and k not in RESUME_MAY_CHANGE
    )
    if diff:
        raise ValueError(
            f"{path.parent} holds a map made with another configuration (differs in: {', '.join(diff[:8])}); continue "
            "it with the same flags, or choose another --out"
        )
