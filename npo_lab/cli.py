"""``npo-lab``: the composition root, the only module that names a backend.

    npo-lab compare [--config FILE] [flags]   methods over seeds -> report.md, curves.png, results.json
    npo-lab train   [--config FILE] [flags]   one method, one seed -> metrics.csv, events, TensorBoard, checkpoints
    npo-lab qvs     [--config FILE] [flags]   Q, V, S of near-future, past and teacher sources -> qvs.png, qvs.json

Every flag comes from a typed, documented config field (``--help`` lists them). ``--config`` reads a TOML or
JSON file with the same names (nested sections ``[task]``, ``[model]``, ``[grpo]``, ``[npo]``, ``[autonpo]``,
``[luffy]``, ``[exgrpo]``, ``[rlep]``); flags given
on the command line override the file.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import json
import shlex
import signal
import sys
import time
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from npo_lab.config import (
    METHODS,
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
    def method_configs(self) -> MethodConfigs:
        return MethodConfigs(self.npo, self.autonpo, self.luffy, self.exgrpo, self.rlep)

    def check_method(self, spec: str) -> None:
        """Parse a method spec and run its cross-field checks (errors name the spec and the field)."""
        try:
            name, cfgs = parse_method(spec, self.method_configs)
        except ValueError as e:  # an override's own check (npo:delta=0): say which method spec it came from
            raise ValueError(str(e) if "methods:" in str(e) else f"methods {spec!r}: {e}") from e
        check_compatible(self.grpo, cfgs, name, "" if ":" not in spec else f"methods {spec!r}")


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


@dataclass
class TrainCommand(ExperimentConfig):
    """Train one method on one seed, logging to CSV and TensorBoard and saving checkpoints."""

    method: str = "npo"
    """Method: grpo, npo, autonpo, luffy, exgrpo or rlep, optionally with overrides as in compare's --methods
    (e.g. npo:delta=5)."""
    previous: str = ""
    """rlep only: a checkpoint (folder) written by 'npo-lab train' whose policy decodes the replay pool; empty = train
    a plain GRPO run of rlep.source_steps (or steps) steps first, unlogged."""
    seed: int = 0
    """Seed of the run (model init, warm start, sampling)."""
    out: str = "runs"
    """Parent folder; the run writes to <out>/<task>__<method>__<seed>__<unix time>/."""
    threads: int = 0
    """torch CPU threads; 0 keeps torch's default."""
    resume: str = ""
    """Continue a run exactly where it stopped: its run folder (from the newest complete checkpoint in it; with
    none, the run starts again in that folder) or one checkpoint folder (<run>/checkpoints/step_000120). The run's
    config.json is the config; other flags may change only steps, threads, tensorboard, checkpoint_every and
    keep_checkpoints."""

    def __post_init__(self) -> None:
        super().__post_init__()
        self.check_method(self.method)
        if self.previous:
            if self.method.split(":")[0] != "rlep":
                raise ValueError(
                    f"previous must be empty unless --method is rlep (only rlep reads it), not {self.method!r}"
                )
            if not self.resume and not Path(self.previous).exists():  # a resumed rlep run restores its pool
                raise ValueError(f"previous: checkpoint {self.previous} does not exist")
        if self.threads < 0:
            raise ValueError(f"threads must be >= 0, got {self.threads}")


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
        for name in ("probe", "k", "seeds"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.workers < 0:
            raise ValueError(f"workers must be >= 0, got {self.workers}")


COMMANDS: dict[str, type] = {"compare": CompareCommand, "train": TrainCommand, "qvs": QVSCommand}


# ---- config files ----------------------------------------------------------------------------------
def from_dict(cls: type, data: dict[str, Any], where: str = "") -> Any:
    """Build dataclass ``cls`` from nested ``data``; unknown keys are rejected with the nearest valid name."""
    if not isinstance(data, dict):
        raise ValueError(f"config section {where or '<top>'} must be a table/object, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        k = key.replace("-", "_")
        full = f"{where}{k}"
        if k not in names:
            near = difflib.get_close_matches(k, sorted(names), n=1)
            hint = f"; did you mean '{where}{near[0]}'?" if near else ""
            raise ValueError(f"unknown config key {full!r}{hint} (valid keys here: {', '.join(sorted(names))})")
        tp = hints[k]
        if dataclasses.is_dataclass(tp):
            kwargs[k] = from_dict(tp, value, f"{full}.")
        else:
            kwargs[k] = _typed(value, tp, full)
    return cls(**kwargs)


def _typed(value: Any, tp: Any, name: str) -> Any:
    """``value`` checked against the field type ``tp`` (int, float, bool, str, Literal, tuple[int, ...])."""
    origin = typing.get_origin(tp)
    if origin is typing.Literal:
        if value not in typing.get_args(tp):
            raise ValueError(f"config key {name!r} must be one of {list(typing.get_args(tp))}, got {value!r}")
        return value
    if origin is tuple:
        if not isinstance(value, list | tuple) or not all(
            isinstance(v, int) and not isinstance(v, bool) for v in value
        ):
            raise ValueError(f"config key {name!r} must be a list of integers, got {value!r}")
        return tuple(value)
    ok = {
        bool: lambda v: isinstance(v, bool),
        int: lambda v: isinstance(v, int) and not isinstance(v, bool),
        float: lambda v: isinstance(v, int | float) and not isinstance(v, bool),
        str: lambda v: isinstance(v, str),
    }
    if tp in ok and not ok[tp](value):
        raise ValueError(f"config key {name!r} must be of type {tp.__name__}, got {value!r}")
    return float(value) if tp is float else value


def load_config_file(cls: type, path: str, **overrides: Any) -> Any:
    """Read a TOML (.toml) or JSON (.json) config file into ``cls`` (top-level ``overrides`` replace its keys)."""
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"config file {path} does not exist")
    text = p.read_text()
    try:
        if p.suffix == ".toml":
            import tomllib

            data = tomllib.loads(text)
        elif p.suffix == ".json":
            data = json.loads(text)
        else:
            raise ValueError(f"config file {path} must end in .toml or .json")
    except (ValueError, json.JSONDecodeError) as e:
        raise ValueError(f"config file {path} could not be parsed: {e}") from e
    return from_dict(cls, {**data, **overrides})


def to_dict(cfg: Any) -> dict[str, Any]:
    """The config as a JSON-able nested dict (the format ``--config`` reads back)."""
    d = dataclasses.asdict(cfg)

    def fix(x: Any) -> Any:
        if isinstance(x, dict):
            return {k: fix(v) for k, v in x.items()}
        if isinstance(x, tuple):
            return list(x)
        return x

    return fix(d)


def parse(command: str, argv: list[str]) -> Any:
    """Parse ``argv`` (after the sub-command) into the command's config, honouring ``--config FILE``."""
    import tyro

    cls = COMMANDS[command]
    default = None
    resume = _flag_value(argv, "--resume") if command == "train" else None
    if resume and _flag_value(argv, "--config") is None:  # a resumed run's config is its own config.json
        run_dir, _ = resume_target(resume)
        default = load_config_file(cls, str(run_dir / "config.json"), resume=resume)
    rest: list[str] = []
    i = 0
    while i < len(argv):
        a = argv[i]
        if a == "--config" and i + 1 < len(argv):
            default = load_config_file(cls, argv[i + 1])
            i += 2
            continue
        if a.startswith("--config="):
            default = load_config_file(cls, a.split("=", 1)[1])
        else:
            rest.append(a)
        i += 1
    kwargs: dict[str, Any] = {"prog": f"npo-lab {command}", "args": rest}
    if default is not None:
        kwargs["default"] = default
    cfg = tyro.cli(cls, **kwargs)
    if resume:
        check_resume_config(cfg)
    return cfg


def _flag_value(argv: list[str], flag: str) -> str | None:
    """The value given to ``flag`` in ``argv`` (``--flag X`` or ``--flag=X``), or None."""
    for i, a in enumerate(argv):
        if a == flag and i + 1 < len(argv):
            return argv[i + 1]
        if a.startswith(flag + "="):
            return a.split("=", 1)[1]
    return None


RESUME_MAY_CHANGE = {"tensorboard", "checkpoint_every", "keep_checkpoints", "resume", "out", "llm.scratch_dir"}
"""Fields a resumed run may set differently from the run's config.json: nothing that changes its trajectory.
(``steps`` moves the learning-rate schedule and NPO's windows; ``threads`` changes how CPU sums round: a resumed
run keeps the thread count its checkpoint recorded unless ``threads`` is given, and then must give the same.)"""


def resume_target(path: str) -> tuple[Path, Path | None]:
    """(run folder, checkpoint folder or None) of ``--resume path``: a run folder (its newest complete checkpoint,
    None when it has none) or one checkpoint folder."""
    from npo_lab.checkpoint import MANIFEST, latest_checkpoint

    p = Path(path)
    if p.is_file():
        raise ValueError(
            f"resume: {path} is a single-file checkpoint of an earlier version; it holds no loop state "
            "and cannot be resumed exactly (pass a run folder or a checkpoint folder)"
        )
    if p.is_dir() and (p / "config.json").is_file():
        return p, latest_checkpoint(p / "checkpoints")
    if p.is_dir() and ((p / MANIFEST).is_file() or p.name.startswith("step_")):
        run_dir = p.parent.parent
        if not (run_dir / "config.json").is_file():
            raise ValueError(f"resume: {run_dir} (the run folder of {path}) has no config.json")
        return run_dir, p
    raise ValueError(f"resume: {path} is neither a run folder (with config.json) nor a checkpoint folder")


def check_resume_config(cfg: Any) -> None:
    """A resumed run keeps its trajectory: refuse flags that change anything but RESUME_MAY_CHANGE."""
    run_dir, _ = resume_target(cfg.resume)
    saved = json.loads((run_dir / "config.json").read_text())
    now = _flatten(to_dict(cfg))
    diff = [k for k, v in _flatten(saved).items() if k not in RESUME_MAY_CHANGE and now.get(k, v) != v]
    if diff:
        raise ValueError(
            f"resume: {', '.join(f'{k} ({_flatten(saved)[k]!r} -> {now[k]!r})' for k in diff)} differ from "
            f"{run_dir / 'config.json'}; a resumed run may change only {', '.join(sorted(RESUME_MAY_CHANGE))}"
        )


# ---- commands --------------------------------------------------------------------------------------
def backend_factory(cfg: ExperimentConfig) -> Any:
    """A picklable ``make_backend(seed)`` for the configured backend (the only place a backend is named)."""
    if cfg.backend == "gym":
        from npo_lab.envs.gym_backend import make_gym_backend

        return functools.partial(make_gym_backend, cfg.env, cfg.gym)
    if cfg.backend == "qwen-vl":
        from npo_lab.llm.backend import make_qwen_vl_backend

        return functools.partial(make_qwen_vl_backend, cfg.llm)
    from npo_lab.envs.arithmetic import make_arithmetic_backend

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
        methods = cfg.method_list if isinstance(cfg, CompareCommand) else [getattr(cfg, "method", "grpo")]
        if any(m.split(":")[0] == "luffy" for m in methods) and not cfg.llm.teacher:
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
    import os

    method = cfg.method_list[0] if isinstance(cfg, CompareCommand) else getattr(cfg, "method", "grpo")
    method = method.split(":")[0]
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


def run_compare(cfg: CompareCommand, command: str) -> dict[str, Any]:
    from npo_lab.compare import compare

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


def run_train(cfg: TrainCommand) -> Any:
    import os
    import tempfile

    import torch

    from npo_lab.checkpoint import (
        CheckpointError,
        clean_stale,
        latest_checkpoint,
        list_checkpoints,
        restore_training_state,
        save_training_checkpoint,
        write_text_atomic,
    )
    from npo_lab.metrics import CSVLogger, EventLog, MultiLogger, TensorBoardLogger
    from npo_lab.sources import make_source
    from npo_lab.trainer import NonFiniteError, make_state, train
    from npo_lab.utils import seed_everything

    # under torchrun / accelerate launch every rank trains; rank 0 alone writes the run folder
    main_rank = int(os.environ.get("RANK", "0")) == 0
    world = int(os.environ.get("WORLD_SIZE", "1"))
    label = cfg.method.replace(":", "_").replace("=", "-")
    ckpt, doc = None, None
    if cfg.resume:
        if world > 1:
            raise ValueError("resume runs in one process: checkpoints of a sharded run hold no optimizer state")
        check_resume_config(cfg)  # also when resume came from a config file rather than the flag
        run_dir, ckpt = resume_target(cfg.resume)
    else:
        run_dir = Path(cfg.out) / f"{run_label(cfg)}__{label}__{cfg.seed}__{int(time.time())}"
    ckpt_root = run_dir / "checkpoints"
    lock = _lock_run_folder(run_dir) if main_rank else None  # noqa: F841 (held until the process ends)
    if cfg.resume:
        clean_stale(ckpt_root)  # what interrupted writes of the previous process left
        doc = _read_resume_checkpoint(ckpt) if ckpt is not None else None
        threads = (doc or {}).get("extra", {}).get("threads")
        if not cfg.threads and threads:  # the same thread count, so CPU reductions round the same way
            torch.set_num_threads(int(threads))
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    if main_rank:
        saved_cfg = {**to_dict(cfg), "resume": ""}  # the run's own config, reusable with --config
        write_text_atomic(run_dir / "config.json", json.dumps(saved_cfg, indent=2) + "\n")
        print(f"run folder: {run_dir}")
        if cfg.resume:
            print(f"resuming from {ckpt} (step {doc['step']})" if doc else "no complete checkpoint: starting over")
            if doc is not None:  # checkpoints after the one resumed from belong to a trajectory no longer followed
                later = [p for p in list_checkpoints(ckpt_root) if _step_of(p) > _step_of(ckpt)]
                if later:
                    aside = Path(tempfile.mkdtemp(prefix=f"superseded-{int(time.time())}-", dir=ckpt_root))
                    for p in later:
                        p.rename(aside / p.name)
                    print(f"moved {len(later)} later checkpoint(s) to {aside}")
        print("| parameter | value |\n|---|---|")
        for k, v in _flatten(to_dict(cfg)).items():
            print(f"| {k} | {v} |")
    seed_everything(cfg.seed)
    backend = backend_factory(cfg)(cfg.seed)
    state = make_state(backend, cfg.grpo, cfg.seed)
    resumed = doc.get("extra", {}) if doc else {}
    loggers: list[Any] = []
    csv_log = events = None
    if main_rank:
        csv_log = CSVLogger(run_dir / "metrics.csv", resume_at=resumed.get("csv"))
        events = EventLog(run_dir, resume_at=tuple(resumed["events"]) if "events" in resumed else None)
        loggers.append(csv_log)
        if cfg.tensorboard:
            # TensorBoard cannot cut files back: it hides what earlier processes logged from these steps on (a
            # run that starts over hides everything); the metrics of step s were logged before its checkpoint
            purge = (doc["step"] + 1, int(doc["loop"]["la_step"])) if doc else (0, 0) if cfg.resume else None
            loggers.append(TensorBoardLogger(run_dir, purge_step=purge[0] if purge else None,
                                             lookahead_purge_step=purge[1] if purge else None))  # fmt: skip
    logger = MultiLogger(*loggers)

    def save(st: Any, loop: dict[str, Any]) -> None:
        policy = st.backend.save()  # collective on a sharded model: every rank takes part
        if not main_rank:
            return
        assert csv_log is not None and events is not None
        logger.flush()
        extra = {
            "csv": csv_log.position(),
            "events": list(events.position()),
            "world_size": world,
            "threads": torch.get_num_threads(),
        }
        save_training_checkpoint(
            ckpt_root, st, loop, extra, keep=cfg.keep_checkpoints, policy=policy, optimizer=world == 1
        )

    method, cfgs = parse_method(cfg.method, cfg.method_configs)
    teacher = previous = None
    if method == "luffy":
        teacher = backend.teacher()
    if method == "rlep" and doc is None:  # a resumed rlep run restores its pool from the checkpoint
        previous = _previous_policy(cfg, cfgs.rlep.source_steps or cfg.steps, backend)
    source = make_source(method, cfgs, cfg.steps, grpo=cfg.grpo, teacher=teacher, previous=previous, seed=cfg.seed)
    resume_loop = None
    if doc is not None:
        restore_training_state(state, doc)  # last: it restores every global RNG
        resume_loop = doc["loop"]
        doc = None  # drops the policy's private copy (a folder-backed policy: a whole model on disk)
    from tqdm import tqdm

    try:
        with tqdm(total=cfg.steps, desc=f"train {cfg.method}", unit="step", disable=not main_rank) as bar:
            bar.update(state.step)
            res = train(
                state,
                source,
                cfg,
                cfg.grpo,
                seed=cfg.seed,
                logger=logger,
                on_step=bar.update,
                save_checkpoint=save,
                events=events,
                resume=resume_loop,
            )
    except (NonFiniteError, CheckpointError) as e:
        last = latest_checkpoint(ckpt_root)
        kept = f"the last good checkpoint is {last}" if last else "no checkpoint was written (see checkpoint_every)"
        raise type(e)(f"{e}; {kept}") from e
    finally:
        if hasattr(backend, "close"):
            backend.close()
        logger.close()
        if events is not None:
            events.close()
    if not main_rank:
        return res
    (run_dir / "result.json").write_text(json.dumps(dataclasses.asdict(res), indent=2) + "\n")
    print(
        f"final accuracy {res.final_accuracy:.3f} after {cfg.steps} steps (+{res.lookahead_steps} look-ahead), "
        f"{res.wall_s:.1f} s; metrics in {run_dir}"
    )
    return res


def _step_of(ckpt: Path) -> int:
    return int(ckpt.name.split("_")[-1])


def _lock_run_folder(run_dir: Path) -> Any:
    """An exclusive lock on ``run_dir/.lock`` for this process's lifetime: a second process on the same run (a
    resume of a run still going) would delete the first one's temporary folders and interleave its logs."""
    import fcntl

    run_dir.mkdir(parents=True, exist_ok=True)
    f = open(run_dir / ".lock", "w")  # noqa: SIM115 (kept open: the lock lasts as long as the file)
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        f.close()
        raise ValueError(f"run folder {run_dir} is in use by another npo-lab process") from e
    return f


def _read_resume_checkpoint(ckpt: Path) -> dict[str, Any]:
    """Load the checkpoint a run resumes from; if it is damaged, the error names the file and the newest intact
    earlier checkpoint to resume from instead."""
    from npo_lab.checkpoint import CheckpointError, list_checkpoints, load_checkpoint, verify_checkpoint

    try:
        doc = load_checkpoint(ckpt)
    except CheckpointError as e:
        intact = None
        for p in reversed([p for p in list_checkpoints(ckpt.parent) if _step_of(p) < _step_of(ckpt)]):
            try:
                verify_checkpoint(p)
                intact = p
                break
            except CheckpointError:
                continue
        hint = f"; the newest intact earlier checkpoint is {intact}: --resume {intact}" if intact else ""
        raise CheckpointError(f"{e}{hint}") from e
    if not doc.get("loop"):
        raise CheckpointError(f"resume: checkpoint {ckpt} holds no training-loop state (an earlier version wrote it)")
    return doc


def run_qvs(cfg: QVSCommand, command: str) -> dict[str, Any]:
    import multiprocessing as mp
    import os

    from npo_lab.qvs import plot_qvs, qvs_along_run, summarize_qvs

    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(to_dict(cfg), indent=2) + "\n")
    seeds = list(range(cfg.first_seed, cfg.first_seed + cfg.seeds))
    workers = cfg.workers or min(len(seeds), os.cpu_count() or 1, 2)
    threads = max(1, (os.cpu_count() or 1) // workers)
    job = functools.partial(
        qvs_along_run,
        backend_factory(cfg),
        grpo=cfg.grpo,
        steps=cfg.steps,
        at=cfg.at,
        deltas=cfg.deltas,
        probe=cfg.probe,
        k=cfg.k,
        gate=cfg.npo.gate,
        teacher=cfg.teacher,
        estimator=cfg.autonpo.v_estimator,
        floor=cfg.autonpo.v_floor,
        threads=threads,
    )
    t0 = time.perf_counter()
    records: list[dict[str, Any]] = []
    if workers == 1:
        for s in seeds:
            records += job(s)
    else:
        pool = mp.get_context("spawn").Pool(workers)
        try:
            for recs in pool.imap(job, seeds):
                records += recs
            pool.close()
        except BaseException:
            pool.terminate()
            raise
        finally:
            pool.join()
    summary = summarize_qvs(records)
    doc = {
        "command": command,
        "seeds": seeds,
        "wall_s": time.perf_counter() - t0,
        "summary": summary,
        "records": records,
    }
    (out / "qvs.json").write_text(json.dumps(doc, indent=2) + "\n")
    plot_qvs(summary, out / "qvs.png")
    lines = [
        "# npo-lab qvs",
        "",
        f"Seeds {seeds}; medians over seeds [95% bootstrap CI].",
        "",
        "| step | source | Q | V | S |",
        "|---|---|---|---|---|",
    ]
    for step, sources in summary.items():
        for src, e in sources.items():
            cells = [f"{e[m]['median']:.3f} [{e[m]['ci95'][0]:.3f}, {e[m]['ci95'][1]:.3f}]" for m in ("q", "v", "s")]
            lines.append(f"| {step} | {src} | " + " | ".join(cells) + " |")
    lines += ["", "![qvs](qvs.png)", "", "Reproduce:", "", "```bash", command, "```", ""]
    (out / "qvs.md").write_text("\n".join(lines))
    print("\n".join(lines))
    return doc


def _previous_policy(cfg: TrainCommand, steps: int, backend: Any) -> Any:
    """rlep's previous run: the policy of ``cfg.previous`` (a checkpoint file), or a fresh unlogged GRPO run of
    ``backend`` from its initial weights, which are then restored (as ``npo-lab compare`` does per seed; the
    checkpoint stays owned by the backend that reads it)."""
    if cfg.previous:
        import tempfile

        from npo_lab.checkpoint import load_training_checkpoint

        # a checkpoint folder (or a legacy .pt file) of another run: its folders are linked into a temporary
        # folder, not beside that run's checkpoints
        return load_training_checkpoint(cfg.previous, scratch=tempfile.gettempdir())["policy"]
    from npo_lab.trainer import make_state, train
    from npo_lab.utils import seed_everything

    print(f"rlep: training the previous GRPO run ({steps} steps) whose final policy decodes the replay pool")
    start = backend.save()
    seed_everything(cfg.seed)
    train(make_state(backend, cfg.grpo, cfg.seed), "grpo", RunConfig(steps=steps, eval_every=steps), cfg.grpo)
    policy = backend.save()
    backend.load(start)
    seed_everything(cfg.seed)  # the rlep run starts from the same weights and global RNG state as any other run
    return policy


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


USAGE = __doc__ or ""


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE.strip())
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        near = difflib.get_close_matches(command, list(COMMANDS), n=1)
        hint = f" (did you mean {near[0]!r}?)" if near else ""
        print(f"npo-lab: unknown command {command!r}{hint}; choose one of: {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    try:
        cfg = parse(command, rest)
        check_backend(cfg)
    except (ValueError, TypeError) as e:  # config validation: stop before any work, naming the field
        print(f"npo-lab {command}: error: {e}", file=sys.stderr)
        return 2
    if cfg.dry_run:
        print(dry_run(cfg))
        return 0
    # a terminated run (SIGTERM) unwinds like Ctrl-C, so worker processes are stopped and files closed
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        if command == "compare":
            run_compare(cfg, shlex.join(["npo-lab", "compare", *argv[1:]]))
        elif command == "qvs":
            run_qvs(cfg, shlex.join(["npo-lab", "qvs", *argv[1:]]))
        else:
            run_train(cfg)
    except KeyboardInterrupt:
        msg = "interrupted; the files written so far are kept and no worker is left running"
        print(f"npo-lab {command}: {msg}", file=sys.stderr)
        return 130
    except (ValueError, FileNotFoundError, RuntimeError) as e:  # e.g. an unreadable --previous, a NaN loss
        print(f"npo-lab {command}: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
