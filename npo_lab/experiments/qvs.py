"""``npo-lab qvs``: Q(Delta), V(Delta) and S(Delta) of near-future, past and teacher sources along GRPO runs.

At chosen steps of a plain GRPO run, every source (pi_{t+Delta} from one look-ahead, past checkpoints of the same
run, the extrapolated future theta_t + (Delta / k)(theta_t - theta_{t-k}) of :mod:`npo_lab.train.extrapolate`, the
backend's external teacher) is probed on the prompts pi_t fails (:func:`npo_lab.train.probe.measure_sources`)
and the whole measurement is rolled back, so the run is the one it would have been. Summaries over seeds with
bootstrap CIs go to qvs.json, qvs.md and qvs.png.
"""

from __future__ import annotations

import functools
import json
import multiprocessing as mp
import os
import random
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from npo_lab.backend import Checkpoint
from npo_lab.config import GRPOConfig
from npo_lab.core.signal import CHEAP_V_ESTIMATORS
from npo_lab.experiments.stats import bootstrap_ci
from npo_lab.train.extrapolate import extrapolated_checkpoint, parameter_copy
from npo_lab.train.probe import failed_prompts, measure_sources
from npo_lab.train.rollback import lookahead, restore, snapshot
from npo_lab.train.state import TrainState, make_state
from npo_lab.train.step import grpo_step
from npo_lab.utils import seed_everything


def source_label(key: Any) -> str:
    """``+10`` (near future), ``-10`` (past checkpoint: replay), ``x+10`` (extrapolated 10 steps ahead),
    ``teacher``."""
    if isinstance(key, tuple):
        return f"x{key[1]:+d}"
    return key if isinstance(key, str) else f"{key:+d}"


def source_kind(key: Any) -> str:
    """``future``, ``past``, ``extrapolated`` or ``teacher``."""
    if isinstance(key, tuple):
        return "extrapolated"
    if isinstance(key, str):
        return "teacher"
    return "future" if key > 0 else "past"


def qvs_along_run(
    make_backend: Any,
    seed: int,
    grpo: GRPOConfig,
    steps: int,
    at: Sequence[int],
    deltas: Sequence[int],
    *,
    probe: int = 256,
    k: int = 8,
    gate: float = 0.6,
    teacher: bool = True,
    estimator: str = "is_variance",
    floor: float = 1.0,
    kl_beta: float = 1.0,
    extrapolate_k: int = 0,
    threads: int = 1,
) -> list[dict[str, Any]]:
    """Build the backend of ``seed`` and run :func:`measure_along_run` on a plain GRPO run (``npo-lab qvs``).

    The probe set is ``probe`` prompt ids drawn with the seed; the teacher is the backend's ``teacher()``."""
    torch.set_num_threads(threads)
    seed_everything(seed)
    backend = make_backend(seed)
    state = make_state(backend, grpo, seed)
    state.total_steps = steps  # the learning-rate schedule decays over the measured run's length
    rng = random.Random(seed + 31337)
    probe_ids = sorted(rng.sample(range(backend.num_prompts), min(probe, backend.num_prompts)))
    teacher_ck = backend.teacher() if teacher and hasattr(backend, "teacher") else None
    records = measure_along_run(
        state,
        grpo,
        steps,
        at,
        deltas,
        probe_ids,
        k=k,
        gate=gate,
        teacher=teacher_ck,
        estimator=estimator,
        floor=floor,
        kl_beta=kl_beta,
        extrapolate_k=extrapolate_k,
    )
    return [{"seed": seed, **r} for r in records]


def measure_along_run(
    state: TrainState,
    grpo: GRPOConfig,
    steps: int,
    at: Sequence[int],
    deltas: Sequence[int],
    probe_ids: Sequence[int],
    *,
    k: int = 8,
    gate: float = 0.6,
    teacher: Checkpoint | None = None,
    estimator: str = "is_variance",
    floor: float = 1.0,
    kl_beta: float = 1.0,
    extrapolate_k: int = 0,
) -> list[dict[str, Any]]:
    """Train plain GRPO on ``state`` to ``steps``; at each step in ``at`` measure Q, V, S of every source.

    Sources at step t: pi_{t+Delta} for Delta > 0 (one look-ahead run), pi_{t+Delta} for Delta < 0 (a past
    checkpoint of the same run: what replay methods draw from), the extrapolated future theta_t + (Delta / k)
    (theta_t - theta_{t-k}) for Delta > 0 when ``extrapolate_k`` = k > 0 and t >= k, and ``teacher``. Failed
    prompts: those of ``probe_ids`` whose k-sample group under pi_t is below ``gate``. The whole measurement
    (look-ahead and every sample it draws) is rolled back exactly, so the GRPO run is the same whatever is measured.

    Returns one record per (step, source): ``{"step", "source", "kind", "delta", "q", "v", "s", "failed", ...}``.
    """
    future = sorted(d for d in deltas if d > 0)
    past = sorted(-d for d in deltas if d < 0)
    saved: dict[int, Checkpoint] = {}
    before: dict[int, list[Any]] = {}  # theta_{t-k} for each measured step t (the extrapolated sources)
    records: list[dict[str, Any]] = []
    at_set = set(at)
    while True:
        t = state.step
        if t in at_set:
            records += measure_step(
                state,
                grpo,
                future,
                probe_ids,
                past={-d: saved[t - d] for d in past if t - d in saved},
                params_before=before.pop(t, None),
                extrapolate_k=extrapolate_k,
                teacher=teacher,
                k=k,
                gate=gate,
                estimator=estimator,
                floor=floor,
                kl_beta=kl_beta,
            )
        if t >= steps:
            return records
        if extrapolate_k and future and t + extrapolate_k in at_set:
            before[t + extrapolate_k] = parameter_copy(state.backend)
        if past:
            saved[t] = state.backend.save()
            for s in [s for s in saved if s < t - past[-1]]:
                del saved[s]
        grpo_step(state, grpo)


def measure_step(
    state: TrainState,
    grpo: GRPOConfig,
    future: Sequence[int],
    probe_ids: Sequence[int],
    *,
    past: dict[int, Checkpoint] | None = None,
    params_before: list[Any] | None = None,
    extrapolate_k: int = 0,
    teacher: Checkpoint | None = None,
    k: int = 8,
    gate: float = 0.6,
    estimator: str = "is_variance",
    floor: float = 1.0,
    kl_beta: float = 1.0,
) -> list[dict[str, Any]]:
    """Q, V and S at the current step t of every source, the run put back exactly afterwards.

    Sources: pi_{t+Delta} for each Delta in ``future`` (one look-ahead of max(future) plain GRPO steps), the
    checkpoints of ``past`` (keyed by a negative Delta), the extrapolated futures theta_t + (Delta / k)(theta_t -
    ``params_before``) for each Delta in ``future`` (``params_before`` taken k = ``extrapolate_k`` steps ago), and
    ``teacher``. Returns one record per source (see :func:`measure_along_run`)."""
    t = state.step
    snap = snapshot(state)
    sources: dict[Any, Checkpoint] = {}
    if future:
        sources.update(lookahead(state, list(future), lambda: grpo_step(state, grpo)).checkpoints)
    sources.update(past or {})
    if params_before is not None and extrapolate_k:
        for d in future:
            sources[("x", d)] = extrapolated_checkpoint(state.backend, params_before, d / extrapolate_k)[0]
    if teacher is not None:
        sources["teacher"] = teacher
    failed, acc = failed_prompts(state.backend, probe_ids, k, gate, grpo.correct_threshold)
    scores = measure_sources(
        state.backend,
        failed,
        sources,
        k=k,
        correct_threshold=grpo.correct_threshold,
        estimator=estimator,
        floor=floor,
        kl_beta=kl_beta,
    )
    restore(state, snap)  # the samples drawn above must not change the run
    records = []
    for key, sc in scores.items():
        delta = key if isinstance(key, int) else key[1] if isinstance(key, tuple) else None
        records.append(
            {
                "step": t,
                "source": source_label(key),
                "kind": source_kind(key),
                "delta": delta,
                "failed": len(failed),
                "probe_accuracy": acc,
                **sc,
            }
        )
    return records


def summarize_qvs(records: list[dict[str, Any]], n_boot: int = 2000) -> dict[str, Any]:
    """Median and bootstrap 95% CI over seeds of Q, V and S for every (step, source)."""
    out: dict[str, Any] = {}
    keys = sorted({(r["step"], r["source"]) for r in records}, key=lambda x: (x[0], _order(x[1])))
    for step, src in keys:
        rows = [r for r in records if r["step"] == step and r["source"] == src]
        entry: dict[str, Any] = {"n_seeds": len(rows), "delta": rows[0]["delta"], "kind": _kind(rows[0])}
        for m in ("q", "v", "s", *(f"{p}_{e}" for e in CHEAP_V_ESTIMATORS for p in "vs")):
            vals = [r[m] for r in rows if m in r and r[m] == r[m]]
            med, lo, hi = bootstrap_ci(vals, "median", n_boot) if vals else (float("nan"),) * 3
            entry[m] = {"median": med, "ci95": [lo, hi], "n": len(vals)}
        out.setdefault(str(step), {})[src] = entry
    return out


def _kind(record: dict[str, Any]) -> str:
    """A record's source kind (records written before the kinds existed: from its delta)."""
    if "kind" in record:
        return str(record["kind"])
    d = record["delta"]
    return "teacher" if d is None else ("future" if d > 0 else "past")


def _order(src: str) -> float:
    """Sources in the table: past, future, extrapolated (after every Delta), teacher."""
    if src == "teacher":
        return float("inf")
    if src.startswith("x"):
        return 1e6 + float(src[1:])
    return float(src)


def plot_qvs(summary: dict[str, Any], path: Any) -> None:
    """qvs.png: Q, V and S against Delta (negative: past checkpoints, positive: near future; the teacher as a
    dashed line) for each measured step, V and S under the selected estimator (solid) and log_ratio (dotted),
    and every source on one Q-V plane (V by log_ratio, log scale) with lines of equal S."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 4, figsize=(20, 4.6))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    panels = [
        ("q", "Q: failed prompts the source solves", None),
        ("v", "V (solid: selected; dotted: log_ratio)", "v_log_ratio"),
        ("s", "S = Q / V (solid: selected; dotted: log_ratio)", "s_log_ratio"),
    ]
    for i, (step, sources) in enumerate(summary.items()):
        c = colors[i % len(colors)]
        ds = [e for e in sources.values() if e.get("kind", "future") in ("future", "past") and e["delta"] is not None]
        xs = [e for e in sources.values() if e.get("kind") == "extrapolated"]
        x = np.array([e["delta"] for e in ds], dtype=float)
        for j, (m, title, alt) in enumerate(panels):
            ax = axes[j]
            for key, style in ((m, "o-"), (alt, "o:")):
                if key is None or key not in ds[0]:
                    continue
                med = np.array([e[key]["median"] for e in ds], dtype=float)
                lo = np.array([e[key]["ci95"][0] for e in ds], dtype=float)
                hi = np.array([e[key]["ci95"][1] for e in ds], dtype=float)
                for side in (x < 0, x > 0):  # past and future drawn apart: Delta = 0 is pi_t itself
                    ax.plot(x[side], med[side], style, color=c, ms=4)
                    if key == m:
                        ax.fill_between(x[side], lo[side], hi[side], color=c, alpha=0.12)
                if xs and key == m:  # the extrapolated futures at the same Delta: crosses, dashed
                    ax.plot([e["delta"] for e in xs], [e[key]["median"] for e in xs], "x--", color=c, ms=6, lw=1)
                if "teacher" in sources and key in sources["teacher"]:
                    ax.axhline(sources["teacher"][key]["median"], color=c, ls="--" if key == m else ":", lw=1)
            if j == 0:
                ax.plot([], [], "o-", color=c, label=f"step {step}")
            ax.set_title(title, fontsize=10)
            ax.set_xlabel("Delta (<0: past / replay, >0: near future; x: extrapolated); dashed line: teacher")
            ax.grid(alpha=0.3)
            ax.axvline(0, color="gray", lw=0.8)
        ax = axes[3]
        for key, e in sources.items():
            q = e["q"]["median"]
            v = e.get("v_log_ratio", e["v"])["median"]
            if q != q or v != v:
                continue
            kind = e.get("kind") or ("teacher" if key == "teacher" else ("past" if e["delta"] < 0 else "future"))
            marker = {"teacher": "*", "past": "s", "future": "o", "extrapolated": "x"}[kind]
            ax.scatter([v], [q], color=c, marker=marker, s=120 if kind == "teacher" else 30)
            if kind != "future" or e["delta"] in (1, 40):
                ax.annotate(key, (v, q), fontsize=7, xytext=(3, 3), textcoords="offset points")
    axes[1].set_yscale("log")
    ax = axes[3]
    ax.set_xscale("log")
    vs = np.geomspace(1.0, max(ax.get_xlim()[1], 2.0), 50)
    for s_level in (0.05, 0.1, 0.2, 0.4, 0.8):
        ax.plot(vs, np.minimum(s_level * vs, 1.0), color="gray", lw=0.6, ls=":")
    ax.set_ylim(0, 1.05)
    ax.set_xlabel("V, log_ratio (log); o future, x extrapolated, s past, * teacher; dotted: equal S")
    ax.set_ylabel("Q")
    ax.set_title("all sources on one Q-V plane", fontsize=10)
    ax.grid(alpha=0.3)
    axes[0].legend(loc="best", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def measure_qvs(
    make_backend: Callable[[int], Any],
    seeds: list[int],
    grpo: GRPOConfig,
    *,
    workers: int = 0,
    command: str = "",
    **kwargs: Any,
) -> dict[str, Any]:
    """:func:`qvs_along_run` for every seed (``workers`` processes, one seed each at a time; 0 = min(seeds, CPU
    cores, 2)) and the summary over seeds; ``kwargs`` go to :func:`qvs_along_run`. Returns the qvs.json document."""
    workers = workers or min(len(seeds), os.cpu_count() or 1, 2)
    threads = max(1, (os.cpu_count() or 1) // workers)
    job = functools.partial(qvs_along_run, make_backend, grpo=grpo, threads=threads, **kwargs)
    t0 = time.perf_counter()
    records: list[dict[str, Any]] = []
    if workers == 1:
        for s in seeds:
            records += job(s)
    else:
        pool = mp.get_context("spawn").Pool(workers)  # no fork after torch has started threads
        try:
            for recs in pool.imap(job, seeds):
                records += recs
            pool.close()
        except BaseException:
            pool.terminate()
            raise
        finally:
            pool.join()
    return {
        "command": command,
        "seeds": seeds,
        "estimator": kwargs.get("estimator", "is_variance"),
        "wall_s": time.perf_counter() - t0,
        "summary": summarize_qvs(records),
        "records": records,
    }


def write_report(doc: dict[str, Any], out: Path) -> str:
    """qvs.json, qvs.png and qvs.md in ``out`` from the records of every seed; returns the markdown."""
    summary = doc["summary"]
    (out / "qvs.json").write_text(json.dumps(doc, indent=2) + "\n")
    plot_qvs(summary, out / "qvs.png")
    lines = [
        "# npo-lab qvs",
        "",
        f"Seeds {doc['seeds']}; medians over seeds [95% bootstrap CI].",
        "",
        f"V and S under the selected estimator ({doc.get('estimator', 'selected')}), then S under each estimator that "
        "needs no backward pass (kl_exp is the paper's V-hat = exp(beta KL)); x+D is the extrapolated future D steps "
        "ahead.",
        "",
        "| step | source | Q | V | S | " + " | ".join(f"S {e}" for e in CHEAP_V_ESTIMATORS) + " |",
        "|---|---|---|---|---|" + "---|" * len(CHEAP_V_ESTIMATORS),
    ]
    cols = ("q", "v", "s", *(f"s_{e}" for e in CHEAP_V_ESTIMATORS))
    for step, sources in summary.items():
        for src, e in sources.items():
            cells = [f"{e[m]['median']:.3f} [{e[m]['ci95'][0]:.3f}, {e[m]['ci95'][1]:.3f}]" for m in cols if m in e]
            lines.append(f"| {step} | {src} | " + " | ".join(cells) + " |")
    lines += ["", "![qvs](qvs.png)", "", "Reproduce:", "", "```bash", doc["command"], "```", ""]
    text = "\n".join(lines)
    (out / "qvs.md").write_text(text)
    return text
