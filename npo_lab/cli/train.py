"""``npo-lab train``: one method, one seed -> metrics.csv, events, TensorBoard, checkpoints; ``--resume`` continues
a run exactly where it stopped."""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from npo_lab.cli.common import ExperimentConfig, backend_factory, run_label
from npo_lab.cli.config_file import flatten, to_dict
from npo_lab.config import method_grpo, parse_method


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

    @property
    def run_methods(self) -> list[str]:
        return [self.method]

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


RESUME_MAY_CHANGE = {"tensorboard", "checkpoint_every", "keep_checkpoints", "resume", "out", "llm.scratch_dir"}
"""Fields a resumed run may set differently from the run's config.json: nothing that changes its trajectory.
(``steps`` moves the learning-rate schedule and NPO's windows; ``threads`` changes how CPU sums round: a resumed
run keeps the thread count its checkpoint recorded unless ``threads`` is given, and then must give the same.)"""


def resume_target(path: str) -> tuple[Path, Path | None]:
    """(run folder, checkpoint folder or None) of ``--resume path``: a run folder (its newest complete checkpoint,
    None when it has none) or one checkpoint folder."""
    from npo_lab.checkpoint import MANIFEST, latest_checkpoint  # lazy (torch), as every training module here

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
    now = flatten(to_dict(cfg))
    diff = [k for k, v in flatten(saved).items() if k not in RESUME_MAY_CHANGE and now.get(k, v) != v]
    if diff:
        raise ValueError(
            f"resume: {', '.join(f'{k} ({flatten(saved)[k]!r} -> {now[k]!r})' for k in diff)} differ from "
            f"{run_dir / 'config.json'}; a resumed run may change only {', '.join(sorted(RESUME_MAY_CHANGE))}"
        )


def run_train(cfg: TrainCommand) -> Any:
    import torch  # lazy, as every import of a training module here: torch is not needed to build --help

    from npo_lab.checkpoint import CheckpointError, clean_stale, latest_checkpoint, set_aside_after, write_text_atomic
    from npo_lab.methods import make_method
    from npo_lab.metrics import CSVLogger, EventLog, MultiLogger, TensorBoardLogger
    from npo_lab.train import NonFiniteError, make_state, save_training_checkpoint, train
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
                _report_aside(set_aside_after(ckpt_root, _step_of(ckpt)))
        print("| parameter | value |\n|---|---|")
        for k, v in flatten(to_dict(cfg)).items():
            print(f"| {k} | {v} |")
    method, cfgs = parse_method(cfg.method, cfg.method_configs)
    grpo = method_grpo(method, cfgs, cfg.grpo)  # the shared step, or a recipe=paper method's own
    seed_everything(cfg.seed)
    backend = backend_factory(cfg)(cfg.seed)
    state = make_state(backend, grpo, cfg.seed)
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

    teacher = previous = None
    if method == "luffy":
        teacher = backend.teacher()
    if method == "rlep" and doc is None:  # a resumed rlep run restores its pool from the checkpoint
        previous = _previous_policy(cfg, cfgs.rlep.source_steps or cfg.steps, backend)
    run_method = make_method(method, cfgs, cfg.steps, grpo=grpo, teacher=teacher, previous=previous, seed=cfg.seed)
    resume_loop = None
    if doc is not None:
        state.load_state_dict(doc, copy_=False)  # last: it restores every global RNG
        resume_loop = doc["loop"]
        doc = None  # drops the policy's private copy (a folder-backed policy: a whole model on disk)
    from tqdm import tqdm

    try:
        with tqdm(total=cfg.steps, desc=f"train {cfg.method}", unit="step", disable=not main_rank) as bar:
            bar.update(state.step)
            res = train(
                state,
                run_method,
                cfg,
                grpo,
                seed=cfg.seed,
                logger=logger,
                on_step=bar.update,
                save_checkpoint=save,
                events=events,
                resume=resume_loop,
                on_rollback=(lambda s: _report_aside(set_aside_after(ckpt_root, s))) if main_rank else None,
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


def _report_aside(moved: tuple[int, Path | None]) -> None:
    n, aside = moved
    if n:
        print(f"moved {n} later checkpoint(s) to {aside}")


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


def _previous_policy(cfg: TrainCommand, steps: int, backend: Any) -> Any:
    """rlep's previous run: the policy of ``cfg.previous`` (a checkpoint file), or a fresh unlogged GRPO run of
    ``backend`` from its initial weights, which are then restored (as ``npo-lab compare`` does per seed; the
    checkpoint stays owned by the backend that reads it)."""
    if cfg.previous:
        from npo_lab.checkpoint import load_checkpoint

        # a checkpoint folder (or a legacy .pt file) of another run: its folders are linked into a temporary
        # folder, not beside that run's checkpoints
        return load_checkpoint(cfg.previous, scratch=tempfile.gettempdir())["policy"]
    from npo_lab.methods import train_previous_run

    print(f"rlep: training the previous GRPO run ({steps} steps) whose final policy decodes the replay pool")
    return train_previous_run(backend, cfg.grpo, cfg.seed, steps)
