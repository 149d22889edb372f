"""Run several methods over several seeds, side by side (``npo-lab compare``); :mod:`.report` turns the runs into
results.json, report.md and curves.png.

Backend-neutral: it receives a picklable ``make_backend(seed)`` factory from the composition root
(:mod:`npo_lab.cli`). Each worker process takes one seed: it builds (and warm-starts) the backend once,
then trains every method from that same starting checkpoint, so methods are compared on paired seeds.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import queue
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from npo_lab.checkpoint import set_aside_after
from npo_lab.config import GRPOConfig, MethodConfigs, RunConfig, method_grpo, parse_method
from npo_lab.experiments.report import aggregate, plot_curves, write_report
from npo_lab.methods import make_method, train_previous_run
from npo_lab.metrics import CSVLogger, EventLog, MultiLogger, TensorBoardLogger
from npo_lab.train import make_state, save_training_checkpoint, train
from npo_lab.utils import seed_everything


@dataclass
class SeedJob:
    seed: int
    methods: list[str]
    make_backend: Callable[[int], Any]
    run: RunConfig
    grpo: GRPOConfig
    cfgs: MethodConfigs
    out: str
    threads: int = 1


def _label(spec: str) -> str:
    return spec.replace(":", "_").replace("=", "-")


def run_seed(job: SeedJob, progress: Any = None) -> list[dict[str, Any]]:
    """Train every method of ``job`` on one seed (in a worker process). Returns RunResult dicts.

    Every method starts from the same warm-started checkpoint, so methods are paired by seed. rlep's
    "previous run" is this seed's plain GRPO run when the comparison has one of the same length (its final
    checkpoint decodes the pool); otherwise an unlogged GRPO run of ``rlep.source_steps`` is trained first."""
    torch.set_num_threads(job.threads)
    seed_everything(job.seed)
    t0 = time.perf_counter()
    backend = job.make_backend(job.seed)
    setup_s = time.perf_counter() - t0
    start = backend.save()
    finals: dict[str, Any] = {}  # spec -> final checkpoint (rlep's previous run)
    results = []

    def tick(n: int) -> None:
        if progress is not None:
            progress.put(n)

    def previous_run(steps: int) -> Any:
        if "grpo" in finals and steps == job.run.steps:  # this seed's GRPO run of the comparison is that run
            return finals["grpo"]
        backend.load(start)
        return train_previous_run(backend, job.grpo, job.seed, steps)

    order = sorted(job.methods, key=lambda spec: spec.split(":")[0] == "rlep")  # rlep after the GRPO run
    for spec in order:
        name, cfgs = parse_method(spec, job.cfgs)
        teacher = previous = None
        prior_steps = 0
        if name == "luffy":
            if not hasattr(backend, "teacher"):
                raise ValueError(f"luffy needs an external teacher, and {type(backend).__name__} has no teacher()")
            teacher = backend.teacher()
        if name == "rlep":
            prior_steps = cfgs.rlep.source_steps or job.run.steps
            previous = previous_run(prior_steps)
        grpo = method_grpo(name, cfgs, job.grpo)  # the shared step, or a recipe=paper method's own
        backend.load(start)
        seed_everything(job.seed)
        state = make_state(backend, grpo, job.seed)
        method = make_method(name, cfgs, job.run.steps, grpo=grpo, teacher=teacher, previous=previous, seed=job.seed)
        run_dir = Path(job.out) / "runs" / f"{_label(spec)}__seed{job.seed}"
        loggers: list[Any] = [CSVLogger(run_dir / "metrics.csv")]
        if job.run.tensorboard:
            loggers.append(TensorBoardLogger(run_dir))
        logger = MultiLogger(*loggers)
        events = EventLog(run_dir)

        def save(st: Any, loop: dict[str, Any], run_dir: Path = run_dir) -> None:
            save_training_checkpoint(run_dir / "checkpoints", st, loop, keep=job.run.keep_checkpoints)

        def rolled_back(step: int, run_dir: Path = run_dir) -> None:
            set_aside_after(run_dir / "checkpoints", step)

        res = train(
            state,
            method,
            job.run,
            grpo,
            seed=job.seed,
            logger=logger,
            on_step=tick,
            save_checkpoint=save if job.run.checkpoint_every else None,
            events=events,
            on_rollback=rolled_back if job.run.checkpoint_every else None,
        )
        logger.close()
        events.close()
        finals[spec] = backend.save()
        d = asdict(res)
        d["setup_s"] = setup_s
        d["method"] = spec
        d["prior_steps"] = prior_steps
        results.append(d)
    return sorted(results, key=lambda r: job.methods.index(r["method"]))


def compare(
    make_backend: Callable[[int], Any],
    methods: list[str],
    seeds: list[int],
    run: RunConfig,
    grpo: GRPOConfig,
    cfgs: MethodConfigs,
    out: str | Path,
    *,
    workers: int = 0,
    target: float | None = None,
    target_fraction: float = 0.9,
    n_boot: int = 2000,
    command: str = "",
    config_doc: dict[str, Any] | None = None,
    show_progress: bool = True,
) -> dict[str, Any]:
    """Run ``methods`` x ``seeds`` and write results.json, report.md and curves.png into ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if config_doc is not None:
        (out / "config.json").write_text(json.dumps(config_doc, indent=2) + "\n")
    workers = workers or min(len(seeds), os.cpu_count() or 1, 2)
    threads = max(1, (os.cpu_count() or 1) // workers)  # one worker alone may use every core
    jobs = [SeedJob(s, methods, make_backend, run, grpo, cfgs, str(out), threads) for s in seeds]
    total = len(seeds) * len(methods) * run.steps
    t0 = time.perf_counter()
    results: list[dict[str, Any]] = []
    from tqdm import tqdm

    bar = tqdm(total=total, desc="compare", unit="step", disable=not show_progress, dynamic_ncols=True)
    for per_seed in run_jobs(run_seed, jobs, workers, bar):
        results += per_seed
    bar.close()
    wall = time.perf_counter() - t0
    doc = aggregate(results, methods, target, target_fraction, n_boot)
    doc["wall_s_total"] = wall
    doc["seeds"] = seeds
    doc["command"] = command
    (out / "results.json").write_text(json.dumps(doc, indent=2) + "\n")
    plot_curves(doc, out / "curves.png")
    write_report(doc, out / "report.md", command, seeds, wall)
    return doc


def run_jobs(fn: Callable[[Any, Any], Any], jobs: list[Any], workers: int, bar: Any) -> list[Any]:
    """``fn(job, progress)`` for every job, in this process (``workers == 1``) or in ``workers`` spawned processes;
    ``progress.put(n)`` from any of them advances ``bar``. Returns the results in job order. A failing job is reported
    as soon as it fails, and on any error (or Ctrl-C, SIGTERM) every worker is stopped: none is left running."""
    if workers == 1:
        return [fn(job, _BarQueue(bar)) for job in jobs]
    results = []
    ctx = mp.get_context("spawn")  # no fork after torch has started threads
    with ctx.Manager() as manager:
        q = manager.Queue()
        # ProcessPoolExecutor's workers are not daemonic, so a backend may start processes of its own (the
        # qwen-vl backend grades with math-verify in killable worker processes)
        pool = ProcessPoolExecutor(workers, mp_context=ctx)
        try:
            pending = [pool.submit(fn, job, q) for job in jobs]
            while not all(f.done() for f in pending):
                if any(f.done() and f.exception() is not None for f in pending):
                    break  # a job failed: report it now rather than after the others finish
                try:
                    bar.update(q.get(timeout=0.2))
                except queue.Empty:
                    pass
            results = [f.result() for f in pending]  # re-raises a worker's error here
            pool.shutdown(wait=True)
        except BaseException:
            _terminate(pool)  # Ctrl-C, SIGTERM or a failed job: stop every worker, leave no orphans
            raise
        while not q.empty():
            bar.update(q.get())
    return results


def _terminate(pool: ProcessPoolExecutor) -> None:
    """Stop every worker of ``pool`` now (the executor has no public way before Python 3.14)."""
    procs = list((getattr(pool, "_processes", None) or {}).values())
    for p in procs:
        p.terminate()
    pool.shutdown(wait=False, cancel_futures=True)
    for p in procs:
        p.join(timeout=10)


class _BarQueue:
    """Progress sink for the single-process path."""

    def __init__(self, bar: Any) -> None:
        self.bar = bar

    def put(self, n: int) -> None:
        self.bar.update(n)
