"""Step time of the arithmetic backend, an older tree against this one, measured side by side (docs/benchmarks.md).

Each measurement is a fresh process that imports npo_lab from one source tree (this one, or ``OLD``: a checkout of
an older commit, e.g. ``git worktree add ../npo_lab_old <commit>``), warm-starts the default policy for one seed
(not timed), then times

* a GRPO step: the mean wall time of ``--grpo-steps`` plain GRPO steps (default settings, no evaluation), and
* an NPO run: the wall time of ``train()`` with the default NPO method for ``--npo-steps`` steps (its look-ahead,
  guide cache, evaluations and rollback included).

The two trees run interleaved (old, new, old, new, ...) ``--reps`` times with the same seed and one torch thread, so
a machine whose speed drifts slows both alike; the ratio old/new is taken per pair and summarised by its mean and
range. Every process also prints a fingerprint of what it computed (the rewards of every GRPO step and the NPO run's
evaluations): the script says whether the two trees computed the same numbers. ``--profile`` adds one cProfile run per
tree and prints where a step's time goes.

Usage: python benchmarks/step_time.py OLD [--reps 5] [--grpo-steps 30] [--npo-steps 30] [--profile] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

NEW = Path(__file__).resolve().parents[1]

# ---- the child: runs inside one tree ----------------------------------------------------------------------------


def _import_tree(root: Path) -> None:
    """Import npo_lab from ``root``; envs/ installs as npo_lab.envs (pyproject's package-dir), so map it by hand."""
    import importlib.util

    sys.path.insert(0, str(root))
    import npo_lab

    if Path(npo_lab.__file__).resolve().parent != (root / "npo_lab").resolve():
        raise RuntimeError(f"npo_lab was imported from {npo_lab.__file__}, not from {root}")
    if not (root / "npo_lab" / "envs").exists():
        spec = importlib.util.spec_from_file_location(
            "npo_lab.envs", root / "envs" / "__init__.py", submodule_search_locations=[str(root / "envs")]
        )
        assert spec is not None and spec.loader is not None
        mod = importlib.util.module_from_spec(spec)
        sys.modules["npo_lab.envs"] = mod
        spec.loader.exec_module(mod)
        npo_lab.envs = mod  # type: ignore[attr-defined]


# cProfile categories: (label, [(file suffix, function), ...]); cumulative ms per GRPO step
CATEGORIES = [
    ("sampling loop (rollouts, guide cache)", [("envs/arithmetic_backend.py", "_sample")]),
    (
        "verifier + decode",
        [
            ("tasks/arithmetic.py", "score"),
            ("envs/arithmetic_backend.py", "decode"),
            ("arithmetic_backend.py", "score_ids"),
        ],
    ),
    ("log-probs forward", [("envs/arithmetic_backend.py", "logprobs")]),
    ("backward", [("npo_lab/backend.py", "backward")]),
    ("optimizer (clip + Adam)", [("npo_lab/backend.py", "step")]),
    ("loss + advantages", [("core/losses.py", "policy_loss"), ("core/advantages.py", "group_advantages")]),
    ("RolloutBatch select/from_rows/replace", [("npo_lab/batch.py", n) for n in ("select", "from_rows", "replace")]),
    ("evaluation (greedy, 256 prompts)", [("envs/arithmetic_backend.py", "evaluate")]),
    (
        "snapshot / restore / save",
        [("train/rollback.py", "snapshot"), ("train/rollback.py", "restore"), ("envs/torch_policy.py", "save")],
    ),
    ("logging", [("npo_lab/metrics.py", "log")]),
]


def _cum(stats: dict, suffix: str, name: str, exclude_caller: str = "") -> float:
    """Cumulative seconds of ``name`` in files ending in ``suffix``, less its time under ``exclude_caller``."""
    total = 0.0
    for (path, _line, fn), (_cc, _nc, _tt, ct, callers) in stats.items():
        if fn == name and path.endswith(suffix):
            total += ct - sum(v[3] for k, v in callers.items() if k[2] == exclude_caller)
    return total


def _breakdown(stats: dict, steps: int) -> dict[str, float]:
    out = {label: 1000 * sum(_cum(stats, s, n) for s, n in parts) / steps for label, parts in CATEGORIES}
    # the greedy sampling of evaluate() is counted under evaluation only
    label = CATEGORIES[0][0]
    out[label] = 1000 * _cum(stats, "envs/arithmetic_backend.py", "_sample", exclude_caller="evaluate") / steps
    return out


def child(root: Path, grpo_steps: int, npo_steps: int, seed: int, profile: bool) -> dict:
    _import_tree(root)
    import time

    import torch

    torch.set_num_threads(1)
    from npo_lab.envs.arithmetic_backend import make_arithmetic_backend
    from npo_lab.envs.config import TinyLMConfig

    from npo_lab.config import GRPOConfig, MethodConfigs, RunConfig
    from npo_lab.methods import make_method
    from npo_lab.metrics import MemoryLogger
    from npo_lab.tasks.arithmetic import ArithmeticConfig
    from npo_lab.train import make_state, train
    from npo_lab.train.step import grpo_step
    from npo_lab.utils import seed_everything

    seed_everything(seed)
    backend = make_arithmetic_backend(ArithmeticConfig(), TinyLMConfig(), seed)
    start = backend.save()
    grpo, cfgs = GRPOConfig(), MethodConfigs()
    out: dict = {"tree": str(root)}

    # GRPO steps, no evaluation
    seed_everything(seed)
    state = make_state(backend, grpo, seed)
    state.total_steps = grpo_steps
    times, rewards = [], []
    for _ in range(grpo_steps):
        t0 = time.perf_counter()
        m = grpo_step(state, grpo)
        times.append(time.perf_counter() - t0)
        rewards.append(m["reward/on_policy_mean"])
    out["grpo_step_ms"] = 1000 * statistics.mean(times)

    # an NPO run (default settings: the step-0 look-ahead, its guide cache, evaluations, the rollback)
    def npo_run() -> tuple[float, list]:
        backend.load(start)
        seed_everything(seed)
        st = make_state(backend, grpo, seed)
        method = make_method("npo", cfgs, npo_steps, grpo=grpo, seed=seed)
        t0 = time.perf_counter()
        res = train(st, method, RunConfig(steps=npo_steps), grpo, seed=seed, logger=MemoryLogger())
        return time.perf_counter() - t0, res.evals

    out["npo_run_s"], evals = npo_run()
    out["fingerprint"] = json.dumps([rewards, evals])
    if profile:  # one more NPO run, under cProfile (slower: not the timed one)
        import cProfile
        import pstats

        prof = cProfile.Profile()
        prof.enable()
        npo_run()
        prof.disable()
        stats = pstats.Stats(prof).stats  # type: ignore[attr-defined]
        n = sum(v[1] for k, v in stats.items() if k[2] == "grpo_step" and k[0].endswith("train/step.py"))
        out["profile"] = {
            "grpo_steps": n,
            "run (ms per GRPO step)": 1000 * _cum(stats, "train/loop.py", "train") / n,
            "grpo_step": 1000 * _cum(stats, "train/step.py", "grpo_step") / n,
            **_breakdown(stats, n),
        }
    return out


# ---- the parent ------------------------------------------------------------------------------------------------


def _run(root: Path, args: argparse.Namespace, profile: bool = False) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", str(root)]
    cmd += ["--grpo-steps", str(args.grpo_steps), "--npo-steps", str(args.npo_steps), "--seed", str(args.seed)]
    if profile:
        cmd.append("--profile")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONPATH": ""}
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if res.returncode != 0:
        raise SystemExit(f"the run in {root} failed:\n{res.stderr[-3000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def _summary(xs: list[float]) -> str:
    return f"{statistics.mean(xs):.3f} (min {min(xs):.3f}, max {max(xs):.3f})"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("old", nargs="?", help="source tree of the older commit (a git worktree)")
    ap.add_argument("--new", default=str(NEW), help="source tree to compare (default: this one)")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--grpo-steps", type=int, default=30)
    ap.add_argument("--npo-steps", type=int, default=30)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--profile", action="store_true", help="also profile one NPO run in each tree")
    ap.add_argument("--out", help="write the measurements as JSON here")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(Path(args.child), args.grpo_steps, args.npo_steps, args.seed, args.profile)))
        return
    if not args.old:
        ap.error("give the source tree of the older commit")
    trees = {"old": Path(args.old).resolve(), "new": Path(args.new).resolve()}
    runs: dict[str, list[dict]] = {"old": [], "new": []}
    for r in range(args.reps):
        for name, root in trees.items():  # interleaved: old, new, old, new, ...
            runs[name].append(_run(root, args))
            m = runs[name][-1]
            print(f"rep {r} {name}: grpo step {m['grpo_step_ms']:.1f} ms, npo run {m['npo_run_s']:.2f} s", flush=True)
    same = {m["fingerprint"] for m in runs["old"] + runs["new"]}
    step_ratio = [o["grpo_step_ms"] / n["grpo_step_ms"] for o, n in zip(runs["old"], runs["new"])]
    run_ratio = [o["npo_run_s"] / n["npo_run_s"] for o, n in zip(runs["old"], runs["new"])]
    summary = {
        "reps": args.reps,
        "grpo_steps": args.grpo_steps,
        "npo_steps": args.npo_steps,
        "threads": 1,
        "grpo_step_ms": {k: statistics.mean(m["grpo_step_ms"] for m in v) for k, v in runs.items()},
        "npo_run_s": {k: statistics.mean(m["npo_run_s"] for m in v) for k, v in runs.items()},
        "grpo_step_ratio_old_over_new": step_ratio,
        "npo_run_ratio_old_over_new": run_ratio,
        "same_numbers": len(same) == 1,
    }
    print(f"\n{args.reps} interleaved pairs, 1 torch thread, seed {args.seed}")
    print("| measure | old | new | ratio old/new: mean (min, max) |")
    print("|---|---|---|---|")
    gs, ns = summary["grpo_step_ms"], summary["npo_run_s"]
    print(
        f"| GRPO step (ms, mean of {args.grpo_steps}) | {gs['old']:.1f} | {gs['new']:.1f} | {_summary(step_ratio)} |"
    )
    print(f"| NPO run of {args.npo_steps} steps (s) | {ns['old']:.2f} | {ns['new']:.2f} | {_summary(run_ratio)} |")
    print("same numbers in both trees (GRPO rewards, NPO evaluations):", summary["same_numbers"])
    if args.profile:
        prof = {name: _run(root, args, profile=True)["profile"] for name, root in trees.items()}
        summary["profile"] = prof
        print("\nNPO run under cProfile, ms per GRPO step (look-ahead steps included; cumulative, so nested calls")
        print("are counted in each category that contains them)")
        print("| part | old | new |")
        print("|---|---|---|")
        for key in prof["old"]:
            print(f"| {key} | {prof['old'][key]:.2f} | {prof['new'][key]:.2f} |")
    if args.out:
        Path(args.out).write_text(json.dumps({"summary": summary, "runs": runs}, indent=1))


if __name__ == "__main__":
    main()
