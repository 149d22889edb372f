"""Tables and figures of a comparison: per-method medians and interquartile means with bootstrap CIs, speed-ups,
paired per-seed differences (results.json), report.md and curves.png."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from npo_lab.experiments.stats import (
    auc,
    bootstrap_ci,
    iqm,
    median_band,
    probability_of_improvement_ci,
    steps_to_target,
    stratified_bootstrap_ci,
)


def _finite_or_none(x: float) -> float | None:
    return x if math.isfinite(x) else None


def _summary(values: list[float], n_boot: int) -> dict[str, Any]:
    """Median and interquartile mean over seeds, each with a 95% (stratified) bootstrap CI; inf -> None."""
    m, lo, hi = bootstrap_ci(values, "median", n_boot)
    q, qlo, qhi = stratified_bootstrap_ci({"arith": values}, iqm, n_boot)
    return {
        "median": _finite_or_none(m),
        "ci95": [_finite_or_none(lo), _finite_or_none(hi)],
        "iqm": _finite_or_none(q),
        "iqm_ci95": [_finite_or_none(qlo), _finite_or_none(qhi)],
    }


def lookahead_before(res: dict[str, Any], step: float) -> int:
    """Look-ahead steps spent at interventions before ``step`` (counted in the compute-adjusted speed)."""
    return sum(c for s, c in zip(res["interventions"], res["intervention_costs"]) if s < step)


def regime_summary(res: dict[str, Any]) -> dict[str, float]:
    """Numbers that show the two regimes NPO targets, for one run.

    early_*: the first 10% of training steps (sparse success: low reward, many groups with no signal);
    gain_first_quarter / gain_last_quarter: eval-accuracy gain over the first and the last quarter of
    training (a plateau shows as a last-quarter gain much smaller than the first-quarter one)."""
    n = len(res["train_reward"])
    k = max(1, n // 10)
    evals = res["evals"]
    total = evals[-1][0] if evals else 0

    def acc_at(step: float) -> float:  # last evaluation at or before `step`
        return [a for s, a in evals if s <= step][-1]

    return {
        "early_train_reward": float(np.mean(res["train_reward"][:k])) if n else float("nan"),
        "early_zero_std_groups": float(np.mean(res["zero_std_groups"][:k])) if n else float("nan"),
        "gain_first_quarter": acc_at(total / 4) - acc_at(0),
        "gain_last_quarter": acc_at(total) - acc_at(3 * total / 4),
    }


def aggregate(
    results: list[dict[str, Any]], methods: list[str], target: float | None, target_fraction: float, n_boot: int
) -> dict[str, Any]:
    """The results.json document: per-method medians and CIs over seeds, and speed-ups vs the first method."""
    by_method = {m: sorted((r for r in results if r["method"] == m), key=lambda r: r["seed"]) for m in methods}
    baseline = methods[0]
    rule = "given with --target" if target is not None else f"{target_fraction} x median final accuracy of {baseline}"
    if target is None:
        base_final = float(np.median([r["final_accuracy"] for r in by_method[baseline]]))
        target = target_fraction * base_final
    out: dict[str, Any] = {
        "target_accuracy": target,
        "target_rule": rule,
        "baseline": baseline,
        "methods": {},
    }
    for m, runs in by_method.items():
        per_seed = []
        for r in runs:
            s = steps_to_target(r["evals"], target)
            per_seed.append(
                {
                    "seed": r["seed"],
                    "final_accuracy": r["final_accuracy"],
                    "steps_to_target": _finite_or_none(s),
                    "steps_to_target_with_lookahead": (
                        _finite_or_none(s + lookahead_before(r, s)) if math.isfinite(s) else None
                    ),
                    "lookahead_steps": r["lookahead_steps"],
                    "lookahead_s": r["lookahead_s"],
                    "wall_s": r["wall_s"],
                    "interventions": r["interventions"],
                    "intervention_costs": r["intervention_costs"],
                    "prior_steps": r.get("prior_steps", 0),
                    "auc": auc(r["evals"]),
                    **regime_summary(r),
                    "evals": r["evals"],
                }
            )
        inf = float("inf")
        stt = [p["steps_to_target"] if p["steps_to_target"] is not None else inf for p in per_seed]
        stt_la = [
            p["steps_to_target_with_lookahead"] if p["steps_to_target_with_lookahead"] is not None else inf
            for p in per_seed
        ]
        out["methods"][m] = {
            "final_accuracy": _summary([p["final_accuracy"] for p in per_seed], n_boot),
            "auc": _summary([p["auc"] for p in per_seed], n_boot),
            "steps_to_target": _summary(stt, n_boot),
            "steps_to_target_with_lookahead": _summary(stt_la, n_boot),
            "reached_target": sum(math.isfinite(s) for s in stt),
            "lookahead_steps": int(np.median([p["lookahead_steps"] for p in per_seed])),
            "lookahead_s": float(np.median([p["lookahead_s"] for p in per_seed])),
            "wall_s": float(np.median([p["wall_s"] for p in per_seed])),
            "regimes": {k: float(np.median([p[k] for p in per_seed])) for k in regime_summary(runs[0])},
            "per_seed": per_seed,
        }
    base = out["methods"][baseline]["steps_to_target"]["median"]
    for m in methods:
        mm = out["methods"][m]
        for key, src in (("speedup", "steps_to_target"), ("speedup_with_lookahead", "steps_to_target_with_lookahead")):
            v = mm[src]["median"]
            mm[key] = base / v if (base is not None and v) else None
        # seeds are paired (every method starts from the same warm-started checkpoint of a seed), so the
        # per-seed difference to the baseline is the sharper comparison
        mm.update(paired_vs_baseline(by_method[baseline], by_method[m], n_boot))
        # rliable's probability of improvement: P(X > Y) + P(X = Y) / 2 over all pairs of runs
        base_seeds, seeds_m = out["methods"][baseline]["per_seed"], mm["per_seed"]
        for key, sign in (("final_accuracy", 1.0), ("auc", 1.0), ("steps_to_target", -1.0)):
            xs = [sign * (p[key] if p[key] is not None else math.inf) for p in seeds_m]
            ys = [sign * (p[key] if p[key] is not None else math.inf) for p in base_seeds]
            pt, lo, hi = probability_of_improvement_ci(xs, ys, n_boot)
            mm.setdefault("prob_improvement", {})[key] = {"point": pt, "ci95": [lo, hi]}
    return out


def paired_vs_baseline(base_runs: list[dict[str, Any]], runs: list[dict[str, Any]], n_boot: int) -> dict[str, Any]:
    """Per-seed final-accuracy differences to the baseline: median [CI] and seeds better / equal / worse."""
    base_final = {r["seed"]: r["final_accuracy"] for r in base_runs}
    diffs = [r["final_accuracy"] - base_final[r["seed"]] for r in runs if r["seed"] in base_final]
    return {
        "paired_final_delta": _summary(diffs, n_boot),
        "wins": [sum(d > 0 for d in diffs), sum(d == 0 for d in diffs), sum(d < 0 for d in diffs)],
    }


def fmt_ci(s: dict[str, Any], digits: int = 3) -> str:
    def f(x: float | None) -> str:
        return "not reached" if x is None else (f"{x:.{digits}f}" if digits else f"{x:.0f}")

    return f"{f(s['median'])} [{f(s['ci95'][0])}, {f(s['ci95'][1])}]"


def write_report(doc: dict[str, Any], path: Path, command: str, seeds: list[int], wall_s: float) -> None:
    """report.md: one row per method, the target rule, and the command that reproduces the run."""
    lines = [
        "# npo-lab compare",
        "",
        f"Seeds: {seeds}. Target accuracy: **{doc['target_accuracy']:.3f}** ({doc['target_rule']}).",
        "Medians over seeds with 95% percentile-bootstrap confidence intervals in brackets. Steps count training",
        "steps; '+ look-ahead' adds the extra steps NPO trained ahead (and rolled back) before reaching the target.",
        "",
        "| method | final accuracy | steps to target | steps to target + look-ahead | reached | speed-up vs "
        f"{doc['baseline']} (with look-ahead) | look-ahead cost | wall time / run |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for m, r in doc["methods"].items():
        sp = "-" if r["speedup"] is None else f"{r['speedup']:.2f}x"
        spl = "-" if r["speedup_with_lookahead"] is None else f"{r['speedup_with_lookahead']:.2f}x"
        lines.append(
            f"| {m} | {fmt_ci(r['final_accuracy'])} | {fmt_ci(r['steps_to_target'], 0)} | "
            f"{fmt_ci(r['steps_to_target_with_lookahead'], 0)} | {r['reached_target']}/{len(r['per_seed'])} | "
            f"{sp} ({spl}) | {r['lookahead_steps']} steps, {r['lookahead_s']:.1f} s | {r['wall_s']:.1f} s |"
        )
    lines += [
        "",
        "Interquartile means (IQM: the mean of the middle 50% of seeds) with 95% stratified-bootstrap CIs, area under "
        "the eval curve (AUC, normalised by the step span: the mean accuracy over training), and the probability "
        f"that a run of the method beats a run of {doc['baseline']} (P(X > Y) + P(X = Y) / 2 over all pairs; 0.5 = "
        "no difference).",
        "",
        "| method | IQM final accuracy | IQM steps to target | median AUC | P(improve) final | P(improve) AUC | "
        "P(improve) steps to target |",
        "|---|---|---|---|---|---|---|",
    ]
    for m, r in doc["methods"].items():
        fa, st, au = r["final_accuracy"], r["steps_to_target"], r["auc"]
        pi = r.get("prob_improvement", {})

        def poi(key: str, pi: dict[str, Any] = pi) -> str:
            if key not in pi:
                return "-"
            e = pi[key]
            return f"{e['point']:.2f} [{e['ci95'][0]:.2f}, {e['ci95'][1]:.2f}]"

        def iq(s: dict[str, Any], digits: int) -> str:
            return fmt_ci({"median": s["iqm"], "ci95": s["iqm_ci95"]}, digits)

        lines.append(
            f"| {m} | {iq(fa, 3)} | {iq(st, 0)} | {fmt_ci(au)} | {poi('final_accuracy')} | {poi('auc')} | "
            f"{poi('steps_to_target')} |"
        )
    priors = {m: r["per_seed"][0].get("prior_steps", 0) for m, r in doc["methods"].items()}
    if any(priors.values()):
        lines += [
            "",
            "Not counted above: "
            + "; ".join(
                f"{m} first needs a previous GRPO run of {n} steps (its replay pool)" for m, n in priors.items() if n
            )
            + ".",
        ]
    others = [m for m in doc["methods"] if m != doc["baseline"]]
    if others:
        lines += [
            "",
            f"Paired by seed (each seed's methods start from the same checkpoint): final accuracy minus "
            f"{doc['baseline']}'s, median [95% CI], and seeds better / equal / worse.",
            "",
            "| method | final accuracy − baseline | better / equal / worse |",
            "|---|---|---|",
        ]
        for m in others:
            r = doc["methods"][m]
            w = r["wins"]
            lines.append(f"| {m} | {fmt_ci(r['paired_final_delta'])} | {w[0]} / {w[1]} / {w[2]} |")
    base = doc["methods"][doc["baseline"]]
    rg = base["regimes"]
    finals = sorted(p["final_accuracy"] for p in base["per_seed"])
    lines += [
        "",
        f"## The two regimes, as {doc['baseline']} shows them (medians over seeds)",
        "",
        f"- **Sparse early success**: over the first 10% of steps the on-policy success rate is "
        f"{rg['early_train_reward']:.3f} and {100 * rg['early_zero_std_groups']:.0f}% of groups have "
        "identical rewards (almost always all wrong), so their advantages are zero and they teach nothing.",
        f"- **Late plateau**: eval accuracy gains {rg['gain_first_quarter']:+.3f} over the first quarter of "
        f"training and {rg['gain_last_quarter']:+.3f} over the last. Final accuracies per seed: "
        f"{', '.join(f'{a:.2f}' for a in finals)} (thin lines in the figure).",
    ]
    lines += [
        "",
        "![curves](curves.png)",
        "",
        f"Total wall time: {wall_s:.0f} s. Per-run metrics: `runs/<method>__seed<k>/metrics.csv`; "
        "machine-readable results: `results.json`; the full configuration: `config.json`.",
        "",
        "Reproduce:",
        "",
        "```bash",
        command,
        "```",
        "",
    ]
    path.write_text("\n".join(lines))


def plot_curves(doc: dict[str, Any], path: Path, n_boot: int = 1000) -> None:
    """curves.png: eval accuracy vs training step (left) and vs steps including look-ahead (right)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2), sharey=True)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (m, r) in enumerate(doc["methods"].items()):
        c = colors[i % len(colors)]
        steps = np.array([s for s, _ in r["per_seed"][0]["evals"]], dtype=float)
        curves = np.array([[a for _, a in p["evals"]] for p in r["per_seed"]])  # (n_seeds, n_evals)
        med, lo, hi = median_band(curves, n_boot)
        label = f"{m} (n={curves.shape[0]})"
        for row in curves:  # every seed, faintly: plateaus of single seeds stay visible
            axes[0].plot(steps, row, color=c, alpha=0.25, lw=0.8)
        axes[0].plot(steps, med, color=c, label=label, lw=2)
        axes[0].fill_between(steps, lo, hi, color=c, alpha=0.2)
        p0 = r["per_seed"][0]
        # compute axis of the first seed (AutoNPO's interventions differ between seeds)
        compute = steps + np.array([lookahead_before(p0, x) for x in steps])
        axes[1].plot(compute, med, color=c, label=label)
        axes[1].fill_between(compute, lo, hi, color=c, alpha=0.2)
        for s in p0["interventions"]:
            axes[0].axvline(s, color=c, ls=":", lw=1)
            axes[0].plot([s], [0], marker="^", color=c, ms=8, clip_on=False)
    for ax in axes:
        ax.axhline(doc["target_accuracy"], color="gray", ls="--", lw=1)
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
    axes[0].set_xlabel("training step (▲ and dotted lines: NPO interventions)")
    axes[1].set_xlabel("training steps + look-ahead steps (compute)")
    axes[0].set_ylabel("eval accuracy (median, 95% CI band)")
    axes[0].legend(loc="lower right")
    axes[0].set_title("accuracy vs step; dashed: target")
    axes[1].set_title("accuracy vs compute")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
