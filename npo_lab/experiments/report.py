"""Tables and figures of a comparison: per-method medians and interquartile means with bootstrap CIs, speed-ups,
paired per-seed differences (results.json), report.md and curves.png."""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

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

if TYPE_CHECKING:
    from matplotlib.figure import Figure


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


def paired_final_differences(base_runs: list[dict[str, Any]], runs: list[dict[str, Any]]) -> list[tuple[int, float]]:
    """(seed, final accuracy − the baseline's final accuracy of the same seed) for every seed both ran."""
    base_final = {r["seed"]: r["final_accuracy"] for r in base_runs}
    return [(r["seed"], r["final_accuracy"] - base_final[r["seed"]]) for r in runs if r["seed"] in base_final]


def paired_vs_baseline(base_runs: list[dict[str, Any]], runs: list[dict[str, Any]], n_boot: int) -> dict[str, Any]:
    """Per-seed final-accuracy differences to the baseline: median [CI] and seeds better / equal / worse."""
    diffs = [d for _, d in paired_final_differences(base_runs, runs)]
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


def _wrap_name(name: str, width: int) -> str:
    """A method spec on several lines, broken after its ``:`` separators, so a long variant name fits a panel."""
    lines = [""]
    for part in re.split(r"(?<=:)", name):  # the parts keep their trailing ':'
        if lines[-1] and len(lines[-1]) + len(part) > width:
            lines.append(part)
        else:
            lines[-1] += part
    return "\n".join(lines)


def _paired_text(r: dict[str, Any], n_pairs: int) -> str:
    """``+0.023 [+0.010, +0.111]``: the median paired final-accuracy difference and its 95% CI (none for 1 seed)."""
    d = r["paired_final_delta"]
    if d["median"] is None:
        return "n/a (a NaN final accuracy)"
    if n_pairs == 1:
        return f"{d['median']:+.3f} (1 seed, no CI)"
    lo, hi = (f"{x:+.3f}" if x is not None else "?" for x in d["ci95"])
    return f"{d['median']:+.3f} [{lo}, {hi}]"


def _draw_curves(ax: Any, r: dict[str, Any], color: str, n_boot: int, *, median_only: bool = False) -> None:
    """One method on ``ax``: median eval accuracy over seeds vs training step, its 95% bootstrap band and the seeds
    (unless ``median_only``), the median again against training + extra (look-ahead) steps, dashed, if the method
    took any, and its interventions (▲; a dotted line where every seed intervened)."""
    seeds = r["per_seed"]
    steps = np.array([s for s, _ in seeds[0]["evals"]], dtype=float)
    curves = np.array([[a for _, a in p["evals"]] for p in seeds], dtype=float)  # (n_seeds, n_evals)
    med, lo, hi = median_band(curves, n_boot)
    lw = 1.6 if median_only else 2.2
    if not median_only:
        for row in curves:  # every seed, faintly: a stalled seed stays visible instead of widening the band
            ax.plot(steps, row, color=color, alpha=0.3, lw=0.7)
        if len(seeds) > 1:
            ax.fill_between(steps, lo, hi, color=color, alpha=0.18, lw=0)
    ax.plot(steps, med, color=color, lw=lw)
    # compute axis: the extra steps spent before each evaluation, median over seeds (AutoNPO's differ per seed)
    extra = np.median([[lookahead_before(p, x) for x in steps] for p in seeds], axis=0)  # (n_evals,)
    if extra.any():
        ax.plot(steps + extra, med, color=color, lw=lw * 0.7, ls="--")
    if median_only:
        return
    counts: dict[float, int] = {}
    for p in seeds:
        for s in set(p["interventions"]):
            counts[s] = counts.get(s, 0) + 1
    for s, k in counts.items():
        ax.plot([s], [0], marker="^", color=color, ms=7, alpha=0.3 + 0.7 * k / len(seeds), clip_on=False)
        if k == len(seeds):
            ax.axvline(s, color=color, ls=":", lw=1)


def curves_figure(doc: dict[str, Any], n_boot: int = 1000) -> Figure:
    """The figure of curves.png, as a :class:`matplotlib.figure.Figure` (not drawn through pyplot).

    Panels, in this order in ``fig.axes``:

    - one small multiple per method other than the baseline (the first method), three to a row: that method's
      median eval accuracy over seeds vs training step (thick, its colour) with the 95% bootstrap band of the
      median and every seed as a thin line; the baseline's median (grey) on the same axes; the method's median
      again against training steps + extra (look-ahead) steps (dashed; the median over seeds of the extra steps
      spent before each evaluation), so its compute cost shows as a shift to the right; ▲ at the interventions
      of any seed (darker where more seeds intervened; a dotted line where all did); the target accuracy
      (dash-dot). The title gives the method and its median paired final-accuracy difference to the baseline
      (same seed) with its 95% CI, and how many seeds it beat. Shared axes, accuracy in [0, 1]. A previous
      run a method needs (RLEP's replay pool) is not on the step axis; the panel says so.
    - the paired-difference panel: for each method, its final accuracy minus the baseline's on the same seed,
      one dot per seed, the median (■) with its 95% CI, and a zero line.

    With only the baseline there is a single panel: its curve, band and seeds. With one seed there is no band
    and no CI. A NaN final accuracy gives no dot (and n/a for the median, as in results.json).

    Args:
        doc: The results.json document made by :func:`aggregate`.
        n_boot: Bootstrap resamples for the bands (and for paired CIs missing from an older ``doc``).

    Returns:
        The figure: ``1`` axes with one method, ``n_methods`` axes otherwise (``n_methods - 1`` small multiples
        and the paired-difference panel).
    """
    import matplotlib
    from matplotlib.colors import to_rgb
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    # the baseline is grey in every panel, so no method gets a grey of the colour cycle
    colors = [c for c in matplotlib.rcParams["axes.prop_cycle"].by_key()["color"] if np.ptp(to_rgb(c)) > 0.1]
    methods = list(doc["methods"])
    base_name = doc.get("baseline", methods[0])
    base = doc["methods"][base_name]
    others = [m for m in methods if m != base_name]
    color = {m: colors[i % len(colors)] for i, m in enumerate(methods)}
    target = doc["target_accuracy"]

    if not others:
        fig = Figure(figsize=(6.5, 4.2), layout="constrained")
        ax = fig.add_subplot()
        _draw_curves(ax, base, color[base_name], n_boot)
        ax.axhline(target, color="0.5", ls="-.", lw=1)
        ax.set(ylim=(0, 1), xlabel="training step (▲: interventions)", ylabel="eval accuracy")
        ax.set_title(f"{base_name} (n={len(base['per_seed'])}): median, 95% band, seeds; dash-dot: target")
        ax.grid(alpha=0.3)
        return fig

    ncols = min(3, len(others))
    nrows = math.ceil(len(others) / ncols)
    fig = Figure(figsize=(max(7.0, 4.6 * ncols), 3.5 * nrows + 3.6), layout="constrained")
    grid = fig.add_gridspec(nrows + 1, ncols)  # the last row: the paired differences, all columns wide
    panels: list[Any] = []
    res: dict[str, dict[str, Any]] = {}  # each method's entry of doc, with its paired statistics
    paired: dict[str, list[tuple[int, float]]] = {}  # (seed, final − baseline's final) per method
    for i, m in enumerate(others):
        r = res[m] = doc["methods"][m]
        if "paired_final_delta" not in r:  # a results.json from before the paired statistics
            r = res[m] = {**r, **paired_vs_baseline(base["per_seed"], r["per_seed"], n_boot)}
        paired[m] = paired_final_differences(base["per_seed"], r["per_seed"])
        share = panels[0] if panels else None
        ax = fig.add_subplot(grid[i // ncols, i % ncols], sharex=share, sharey=share)
        panels.append(ax)
        _draw_curves(ax, base, "0.45", n_boot, median_only=True)
        _draw_curves(ax, r, color[m], n_boot)
        ax.axhline(target, color="0.5", ls="-.", lw=1)
        n = len(paired[m])
        ax.set_title(
            f"{_wrap_name(m, 44)} (n={len(r['per_seed'])})\n"
            f"final − {base_name}: {_paired_text(r, n)}, {r['wins'][0]} of {n} better",
            fontsize=10,
        )
        prior = r["per_seed"][0].get("prior_steps", 0)
        if prior:
            ax.text(
                0.98,
                0.03,
                f"not drawn: a previous {prior}-step run",
                transform=ax.transAxes,
                ha="right",
                fontsize=8,
                color="0.3",
            )
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
        if i % ncols == 0:
            ax.set_ylabel("eval accuracy")
        if i + ncols >= len(others):  # nothing below it
            ax.set_xlabel("training step")

    # paired differences, one column of dots per method
    ax = fig.add_subplot(grid[nrows, :])
    ax.axhline(0, color="black", lw=1)
    labels = []
    for j, m in enumerate(others):
        d = np.array([v for _, v in paired[m]], dtype=float)  # (n_pairs,) in seed order
        x = j - 0.08 + (np.linspace(-0.2, 0.2, d.size) if d.size > 1 else np.zeros(d.size))
        ax.plot(x, d, ls="none", marker="o", ms=6, color=color[m], alpha=0.75, gid=f"paired:{m}")
        s = res[m]["paired_final_delta"]
        if s["median"] is not None:
            lo, hi = (s["median"] if b is None else b for b in s["ci95"])
            ax.errorbar(
                [j + 0.25],
                [s["median"]],
                yerr=[[s["median"] - lo], [hi - s["median"]]],
                fmt="s",
                color="black",
                ms=6,
                capsize=4,
                lw=1.5,
            )
        wins = res[m]["wins"]
        labels.append(f"{_wrap_name(m, max(16, 60 // len(others)))}\n{wins[0]}/{wins[1]}/{wins[2]} better/equal/worse")
    ax.set_xticks(range(len(others)), labels, fontsize=9)
    ax.set_xlim(-0.6, len(others) - 0.4)
    ax.set_ylabel(f"final accuracy − {base_name}\n(same seed)")
    ax.set_title(
        f"Paired by seed: each method's final accuracy minus {base_name}'s"
        + ("\n" if ncols == 1 else " ")
        + "(dots: seeds; ■: median, 95% CI)",
        fontsize=10,
    )
    ax.grid(alpha=0.3, axis="y")

    handles = [
        Line2D([], [], color="black", lw=2.2, label="method: median over seeds, 95% band, thin: seeds"),
        Line2D([], [], color="0.45", lw=1.6, label=f"{base_name} (baseline): median"),
        Line2D([], [], color="black", lw=1.5, ls="--", label="median vs training + extra (look-ahead) steps"),
        Line2D([], [], color="0.5", lw=1, ls="-.", label=f"target accuracy {target:.3f}"),
        Line2D([], [], color="black", ls="none", marker="^", label="interventions (dotted: every seed)"),
    ]
    fig.legend(handles=handles, loc="outside upper center", ncols=3 if ncols > 1 else 2, fontsize=9, frameon=False)
    return fig


def plot_curves(doc: dict[str, Any], path: Path, n_boot: int = 1000) -> Figure:
    """Write :func:`curves_figure` (small multiples vs the baseline and the paired differences) to ``path``; returns
    the figure."""
    fig = curves_figure(doc, n_boot)
    fig.savefig(path, dpi=110)
    return fig
