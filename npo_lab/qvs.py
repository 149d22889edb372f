"""Measuring Q, V and S of guide sources through the backend protocol (AutoNPO's scoring and ``npo-lab qvs``).

:func:`measure_sources` takes the current policy (the backend's current weights, pi_t), a set of prompts
pi_t fails on, and any number of source checkpoints (near-future, past, an external teacher), and returns
Q-hat, V-hat and S-hat of each with the estimators of :mod:`npo_lab.core.qvs`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from npo_lab.backend import Backend, Checkpoint
from npo_lab.batch import RolloutBatch
from npo_lab.core.guidance import group_accuracy
from npo_lab.core.qvs import CHEAP_V_ESTIMATORS, q_hat, s_hat, v_hat


def failed_prompts(
    backend: Backend, prompts: Sequence[int], k: int, gate: float, correct_threshold: float = 0.5
) -> tuple[list[int], float]:
    """Prompts whose k-sample group under the current weights has accuracy below ``gate``, and the mean
    accuracy over all ``prompts``."""
    b = backend.rollout(list(prompts), k)
    acc = group_accuracy(b.rewards, b.group_ids, correct_threshold)
    return [p for p in prompts if acc[int(p)] < gate], sum(acc.values()) / max(len(acc), 1)


def _grad_norms(backend: Backend, rows: RolloutBatch, max_rows: int) -> torch.Tensor:
    """Per-row norm of grad log pi_t(y) under the current weights (one backward pass per row)."""
    params = [p for p in backend.parameters() if p.requires_grad]
    norms = []
    for i in range(min(rows.size, max_rows)):
        row = rows.select([i])
        logp, _ = backend.logprobs(row)
        grads = torch.autograd.grad((logp * row.mask).sum(), params, allow_unused=True)
        norms.append(torch.sqrt(sum((g.double() ** 2).sum() for g in grads if g is not None)))
    return torch.stack(norms) if norms else torch.zeros(0)


def measure_sources(
    backend: Backend,
    prompts: Sequence[int],
    sources: dict[Any, Checkpoint],
    *,
    k: int = 8,
    correct_threshold: float = 0.5,
    estimator: str = "is_variance",
    floor: float = 1.0,
    max_grad_rows: int = 32,
) -> dict[Any, dict[str, float]]:
    """Q-hat, V-hat and S-hat of every source on ``prompts`` (prompts the current policy fails on).

    For each source: k samples per prompt; Q-hat = fraction of prompts with a verified-correct sample;
    V-hat from the verified-correct samples' per-token weights pi_t / pi_src, with pi_t the backend's current
    weights and pi_src the sampling log-probs the backend recorded (``behavior_logprobs``).

    Returns ``{source key: {"q", "v", "s", "correct_rows", "v_<name>", "s_<name>"}}``: ``v``/``s`` use
    ``estimator``; ``v_<name>``/``s_<name>`` every estimator that needs no backward pass, for comparison.
    """
    out: dict[Any, dict[str, float]] = {}
    nan = float("nan")
    for key, ckpt in sources.items():
        if not prompts:
            out[key] = {"q": nan, "v": nan, "s": nan, "correct_rows": 0.0}
            out[key].update({f"{p}_{e}": nan for e in CHEAP_V_ESTIMATORS for p in "vs"})
            continue
        rows = backend.rollout(list(prompts), k, policy=ckpt)
        q = q_hat(rows.rewards, rows.group_ids, prompts, correct_threshold)
        correct = rows.select(torch.nonzero(rows.rewards > correct_threshold).squeeze(-1)).trim()
        vs = dict.fromkeys(CHEAP_V_ESTIMATORS, nan)
        if correct.size:
            with torch.no_grad():
                logp_t, _ = backend.logprobs(correct)  # (B, T) under pi_t
            for e in CHEAP_V_ESTIMATORS:
                vs[e] = v_hat(logp_t, correct.behavior_logprobs, correct.mask, estimator=e, floor=floor)
            if estimator == "grad_norm":
                norms = _grad_norms(backend, correct, max_grad_rows)
                vs["grad_norm"] = v_hat(estimator="grad_norm", floor=floor, grad_norms=norms)
        v = vs.get(estimator, nan)

        out[key] = {"q": q, "v": v, "s": s_hat(q, v), "correct_rows": float(correct.size)}
        out[key].update({f"v_{e}": vs[e] for e in CHEAP_V_ESTIMATORS})
        out[key].update({f"s_{e}": s_hat(q, vs[e]) for e in CHEAP_V_ESTIMATORS})
    return out


# ---- npo-lab qvs: Q(Delta), V(Delta), S(Delta) along a GRPO run ------------------------------------------
def source_label(key: Any) -> str:
    """``+10`` (near future), ``-10`` (past checkpoint: replay), ``teacher``."""
    return key if isinstance(key, str) else f"{key:+d}"


def qvs_along_run(
    make_backend: Any,
    seed: int,
    grpo: Any,
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
    threads: int = 1,
) -> list[dict[str, Any]]:
    """Build the backend of ``seed`` and run :func:`measure_along_run` on a plain GRPO run (``npo-lab qvs``).

    The probe set is ``probe`` prompt ids drawn with the seed; the teacher is the backend's ``teacher()``."""
    import random

    import torch

    from npo_lab.trainer import make_state
    from npo_lab.utils import seed_everything

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
    )
    return [{"seed": seed, **r} for r in records]


def measure_along_run(
    state: Any,
    grpo: Any,
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
) -> list[dict[str, Any]]:
    """Train plain GRPO on ``state`` to ``steps``; at each step in ``at`` measure Q, V, S of every source.

    Sources at step t: pi_{t+Delta} for Delta > 0 (one look-ahead run), pi_{t+Delta} for Delta < 0 (a past
    checkpoint of the same run: what replay methods draw from), and ``teacher``. Failed prompts: those of
    ``probe_ids`` whose k-sample group under pi_t is below ``gate``. The whole measurement (look-ahead and
    every sample it draws) is rolled back exactly, so the GRPO run is the same whatever is measured.

    Returns one record per (step, source): ``{"step", "source", "delta", "q", "v", "s", "failed", ...}``.
    """
    from npo_lab.npo import lookahead, restore, snapshot
    from npo_lab.trainer import grpo_step

    future = sorted(d for d in deltas if d > 0)
    past = sorted(-d for d in deltas if d < 0)
    saved: dict[int, Checkpoint] = {}
    records: list[dict[str, Any]] = []
    at_set = set(at)
    while True:
        t = state.step
        if t in at_set:
            snap = snapshot(state)
            sources: dict[Any, Checkpoint] = {}
            if future:
                sources.update(lookahead(state, future, lambda: grpo_step(state, grpo)).checkpoints)
            sources.update({-d: saved[t - d] for d in past if t - d in saved})
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
            )
            restore(state, snap)  # the samples drawn above must not change the run
            for key, sc in scores.items():
                delta = key if isinstance(key, int) else None
                records.append(
                    {
                        "step": t,
                        "source": source_label(key),
                        "delta": delta,
                        "failed": len(failed),
                        "probe_accuracy": acc,
                        **sc,
                    }
                )
        if t >= steps:
            return records
        if past:
            saved[t] = state.backend.save()
            for s in [s for s in saved if s < t - past[-1]]:
                del saved[s]
        grpo_step(state, grpo)


def summarize_qvs(records: list[dict[str, Any]], n_boot: int = 2000) -> dict[str, Any]:
    """Median and bootstrap 95% CI over seeds of Q, V and S for every (step, source)."""
    from npo_lab.stats import bootstrap_ci

    out: dict[str, Any] = {}
    keys = sorted({(r["step"], r["source"]) for r in records}, key=lambda x: (x[0], _order(x[1])))
    for step, src in keys:
        rows = [r for r in records if r["step"] == step and r["source"] == src]
        entry: dict[str, Any] = {"n_seeds": len(rows), "delta": rows[0]["delta"]}
        for m in ("q", "v", "s", "v_log_ratio", "s_log_ratio"):
            vals = [r[m] for r in rows if r[m] == r[m]]
            med, lo, hi = bootstrap_ci(vals, "median", n_boot) if vals else (float("nan"),) * 3
            entry[m] = {"median": med, "ci95": [lo, hi], "n": len(vals)}
        out.setdefault(str(step), {})[src] = entry
    return out


def _order(src: str) -> float:
    return float("inf") if src == "teacher" else float(src)


def plot_qvs(summary: dict[str, Any], path: Any) -> None:
    """qvs.png: Q, V and S against Delta (negative: past checkpoints, positive: near future; the teacher as a
    dashed line) for each measured step, V and S under the selected estimator (solid) and log_ratio (dotted),
    and every source on one Q-V plane (V by log_ratio, log scale) with lines of equal S."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, axes = plt.subplots(1, 4, figsize=(20, 4.6))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    panels = [
        ("q", "Q: failed prompts the source solves", None),
        ("v", "V (solid: selected; dotted: log_ratio)", "v_log_ratio"),
        ("s", "S = Q / V (solid: selected; dotted: log_ratio)", "s_log_ratio"),
    ]
    for i, (step, sources) in enumerate(summary.items()):
        c = colors[i % len(colors)]
        ds = [e for e in sources.values() if e["delta"] is not None]
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
                if "teacher" in sources and key in sources["teacher"]:
                    ax.axhline(sources["teacher"][key]["median"], color=c, ls="--" if key == m else ":", lw=1)
            if j == 0:
                ax.plot([], [], "o-", color=c, label=f"step {step}")
            ax.set_title(title, fontsize=10)
            ax.set_xlabel("Delta (<0: past / replay, >0: near future); dashed: teacher")
            ax.grid(alpha=0.3)
            ax.axvline(0, color="gray", lw=0.8)
        ax = axes[3]
        for key, e in sources.items():
            q = e["q"]["median"]
            v = e.get("v_log_ratio", e["v"])["median"]
            if q != q or v != v:
                continue
            kind = "teacher" if key == "teacher" else ("past" if e["delta"] < 0 else "future")
            marker = {"teacher": "*", "past": "s", "future": "o"}[kind]
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
    ax.set_xlabel("V, log_ratio (log); o future, s past, * teacher; dotted: equal S")
    ax.set_ylabel("Q")
    ax.set_title("all sources on one Q-V plane", fontsize=10)
    ax.grid(alpha=0.3)
    axes[0].legend(loc="best", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
