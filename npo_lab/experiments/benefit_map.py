"""``npo-lab benefit-map``: when does a future checkpoint beat the present, and why.

A grid of regimes (two config knobs, e.g. transfer between prompts x learning per step) x methods (grpo, npo at several
Delta including the Delta = 1 control, npo with an extrapolated future, autonpo) x seeds. In every regime and seed:

* every method trains from the same warm-started checkpoint (paired seeds), so NPO - control and NPO - GRPO are
  per-seed differences;
* the GRPO run measures Q, V and S of the near future pi_{t+Delta} and of the extrapolated future at chosen steps
  (:func:`npo_lab.experiments.qvs.measure_step`), each measurement rolled back exactly, so the GRPO run is the run it
  would have been unmeasured (:class:`ProbedGRPO`);
* each finished (regime, seed, method) is written at once to ``cells/`` (an atomic rename), and a run started again
  with the same ``--out`` skips the cells already there: an interrupted map continues where it stopped.

:func:`summarize_map` turns the cells into map.json (paired differences with bootstrap CIs, the speed-up with the
extra steps counted, Delta* of S per estimator and whether it is interior, and how well each estimator's S predicts
the learning result across regimes); :func:`write_map_report` writes map.md, map.png and qvs_map.png.
"""

from __future__ import annotations

import json
import math
import os
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from npo_lab.config import GRPOConfig, MethodConfigs, RunConfig, method_grpo, parse_method
from npo_lab.core.signal import CHEAP_V_ESTIMATORS
from npo_lab.experiments.compare import run_jobs
from npo_lab.experiments.qvs import measure_step
from npo_lab.experiments.report import lookahead_before, paired_final_differences
from npo_lab.experiments.stats import bootstrap_ci, steps_to_target
from npo_lab.methods import GRPO, make_method
from npo_lab.metrics import MemoryLogger
from npo_lab.train import TrainState, make_state, train
from npo_lab.train.extrapolate import parameter_copy
from npo_lab.utils import seed_everything

CELLS = "cells"
"""Subfolder of the map's output holding one JSON file per finished (regime, seed, method)."""


@dataclass(frozen=True)
class Regime:
    """One cell of the regime grid: a name and the config values it sets (dotted names, e.g. ``task.min_digits``)."""

    name: str
    overrides: dict[str, Any]
    row: int = 0
    col: int = 0


@dataclass
class ProbeSpec:
    """What the GRPO run of every regime measures: Q, V and S of pi_{t+Delta} and of the extrapolated future."""

    at: tuple[int, ...] = (0, 50)
    """Steps at whose start the sources are measured (``benefit-map --qvs-at``)."""
    deltas: tuple[int, ...] = (1, 5, 10, 20, 40)
    """Near-future distances (one look-ahead of the largest, rolled back)."""
    probe: int = 128
    """Probe prompts, drawn with the seed."""
    k: int = 8
    """Samples per probe prompt, for pi_t's failed set and for every source."""
    gate: float = 0.6
    """A probe prompt counts as failed when pi_t's k-sample accuracy is below this (npo.gate)."""
    extrapolate_k: int = 10
    """The extrapolated sources use theta_t - theta_{t-k} with this k; 0 measures none."""
    estimator: str = "kl_exp"
    """The V-hat of the records' ``v`` and ``s`` (every cheap estimator is recorded as ``v_<name>`` too)."""
    floor: float = 1.0
    """The on-policy floor of the importance-weight estimators (autonpo.v_floor)."""
    kl_beta: float = 1.0
    """beta of the paper's V-hat exp(beta KL) (autonpo.kl_beta)."""


class ProbedGRPO(GRPO):
    """Plain GRPO that measures Q, V and S of its near and extrapolated futures at ``spec.at`` (at the start of those
    steps, before the update). Every measurement is rolled back exactly, so the run's trajectory is plain GRPO's."""

    name = "grpo"

    def __init__(self, spec: ProbeSpec, grpo: GRPOConfig, probe_ids: Sequence[int]) -> None:
        super().__init__()
        self.spec, self.grpo, self.probe_ids = spec, grpo, list(probe_ids)
        self.records: list[dict[str, Any]] = []
        self.before: dict[int, list[Any]] = {}

    def metrics(self, state: TrainState) -> dict[str, float]:
        t, spec = state.step, self.spec
        if t in spec.at:
            self.records += measure_step(
                state,
                self.grpo,
                sorted(spec.deltas),
                self.probe_ids,
                params_before=self.before.pop(t, None),
                extrapolate_k=spec.extrapolate_k,
                k=spec.k,
                gate=spec.gate,
                estimator=spec.estimator,
                floor=spec.floor,
                kl_beta=spec.kl_beta,
            )
        if spec.extrapolate_k and t + spec.extrapolate_k in spec.at:
            self.before[t + spec.extrapolate_k] = parameter_copy(state.backend)
        return {}


@dataclass
class MapJob:
    """One regime and seed: every missing method of it, trained in one worker from one warm-started checkpoint."""

    regime: Regime
    seed: int
    methods: list[str]
    make_backend: Callable[[int], Any]
    grpo: GRPOConfig
    cfgs: MethodConfigs
    run: RunConfig
    probe: ProbeSpec | None
    out: str
    threads: int = 1


def cell_path(out: str | Path, regime: str, spec: str, seed: int) -> Path:
    """Where the result of one (regime, method, seed) is kept."""
    label = spec.replace(":", "_").replace("=", "-")
    return Path(out) / CELLS / regime / f"{label}__seed{seed}.json"


def _write_atomic(path: Path, doc: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(doc) + "\n")
    os.replace(tmp, path)  # a killed run leaves either the whole cell or none


def run_map_job(job: MapJob, progress: Any = None) -> list[str]:
    """Train every method of ``job`` (in a worker process) and write each cell as soon as it is done."""
    torch.set_num_threads(job.threads)
    seed_everything(job.seed)
    backend = job.make_backend(job.seed)
    start = backend.save()
    done = []
    for spec in job.methods:
        name, cfgs = parse_method(spec, job.cfgs)
        grpo = method_grpo(name, cfgs, job.grpo)
        backend.load(start)
        seed_everything(job.seed)
        state = make_state(backend, grpo, job.seed)
        if name == "luffy" and not hasattr(backend, "teacher"):
            raise ValueError(f"luffy needs an external teacher, and {type(backend).__name__} has no teacher()")
        teacher = backend.teacher() if name == "luffy" else None
        method: GRPO
        if name == "grpo" and job.probe is not None:
            rng = random.Random(job.seed + 31337)
            probe_ids = sorted(rng.sample(range(backend.num_prompts), min(job.probe.probe, backend.num_prompts)))
            method = ProbedGRPO(job.probe, grpo, probe_ids)
        else:
            method = make_method(name, cfgs, job.run.steps, grpo=grpo, teacher=teacher, seed=job.seed)
        res = train(state, method, job.run, grpo, seed=job.seed, logger=MemoryLogger())
        doc = {k: v for k, v in asdict(res).items() if k not in ("zero_std_groups",)}
        doc.update(regime=job.regime.name, method=spec, seed=job.seed)
        if isinstance(method, ProbedGRPO):
            doc["qvs"] = method.records
        _write_atomic(cell_path(job.out, job.regime.name, spec, job.seed), doc)
        done.append(spec)
        if progress is not None:
            progress.put(1)
    return done


def run_map(
    prepare: Callable[[Regime], tuple[Callable[[int], Any], GRPOConfig, MethodConfigs]],
    regimes: list[Regime],
    methods: list[str],
    seeds: list[int],
    run: RunConfig,
    out: str | Path,
    *,
    probe: ProbeSpec | None,
    workers: int = 0,
    show_progress: bool = True,
) -> float:
    """Train every missing cell of regimes x seeds x methods (``workers`` processes, one (regime, seed) job each).

    ``prepare(regime)`` gives that regime's picklable ``make_backend(seed)`` factory, its GRPO step and its methods'
    settings. Returns the wall time of this call."""
    jobs = []
    for r in regimes:
        for s in seeds:
            missing = [m for m in methods if not cell_path(out, r.name, m, s).exists()]
            if missing:
                jobs.append((r, s, missing))
    total = len(regimes) * len(seeds) * len(methods)
    workers = workers or min(max(len(jobs), 1), os.cpu_count() or 1, 2)
    threads = max(1, (os.cpu_count() or 1) // workers)
    todo = [MapJob(r, s, ms, *prepare(r), run=run, probe=probe, out=str(out), threads=threads) for r, s, ms in jobs]
    from tqdm import tqdm

    t0 = time.perf_counter()
    bar = tqdm(total=total, initial=total - sum(len(j.methods) for j in todo), desc="benefit-map", unit="run",
               disable=not show_progress, dynamic_ncols=True)  # fmt: skip
    run_jobs(run_map_job, todo, 1 if len(todo) <= 1 else workers, bar)
    bar.close()
    return time.perf_counter() - t0


def load_cells(out: str | Path) -> list[dict[str, Any]]:
    """Every finished cell under ``out``."""
    return [json.loads(p.read_text()) for p in sorted((Path(out) / CELLS).glob("*/*.json"))]


# ---- the summary ----------------------------------------------------------------------------------------------
def _ci(values: list[float], n_boot: int) -> dict[str, Any]:
    vals = [v for v in values if v == v]
    m, lo, hi = bootstrap_ci(vals, "median", n_boot) if vals else (math.nan,) * 3
    return {
        "median": m,
        "ci95": [lo, hi],
        "n": len(vals),
        "wins": [sum(v > 0 for v in vals), sum(v == 0 for v in vals), sum(v < 0 for v in vals)],
        "excludes_zero": bool(vals) and len(vals) > 1 and (lo > 0 or hi < 0),
    }


def paired(cells: dict[int, dict[str, Any]], base: dict[int, dict[str, Any]], n_boot: int) -> dict[str, Any]:
    """Per-seed final-accuracy differences ``cells`` - ``base`` (seeds both have), median [95% CI]."""
    runs = [cells[s] for s in sorted(cells)]
    return _ci([d for _, d in paired_final_differences(list(base.values()), runs)], n_boot)


def speedup(cells: dict[int, dict[str, Any]], base: dict[int, dict[str, Any]], target: float) -> dict[str, Any]:
    """Median steps to ``target`` of the baseline over the method's, the method's counted with its extra steps
    (look-ahead steps and steps discarded by rollbacks, spent before it reached the target)."""

    def stt(c: dict[str, Any], extra: bool) -> float:
        s = steps_to_target([tuple(e) for e in c["evals"]], target)
        return s + lookahead_before(c, s) if extra and math.isfinite(s) else s

    b = float(np.median([stt(c, False) for c in base.values()]))
    m = float(np.median([stt(c, True) for c in cells.values()]))
    m0 = float(np.median([stt(c, False) for c in cells.values()]))
    ratio = b / m if math.isfinite(b) and math.isfinite(m) and m > 0 else math.nan
    return {"baseline_steps": b, "steps_with_extra": m, "steps": m0, "speedup_with_extra": ratio}


def qvs_summary(records: list[dict[str, Any]], n_boot: int) -> dict[str, Any]:
    """Median over seeds of Q, V and S (every estimator) per (step, source), and Delta* = argmax of the median S over
    the near-future Deltas for each step and estimator, with whether it is interior (neither the smallest nor the
    largest Delta measured)."""
    out: dict[str, Any] = {"by_step": {}, "delta_star": {}}
    ests = ("q", *(f"{p}_{e}" for e in CHEAP_V_ESTIMATORS for p in "vs"))
    for step in sorted({r["step"] for r in records}):
        rows = [r for r in records if r["step"] == step]
        table: dict[str, Any] = {}
        for src in sorted({r["source"] for r in rows}):
            sel = [r for r in rows if r["source"] == src]
            table[src] = {"kind": sel[0].get("kind"), "delta": sel[0]["delta"]}
            for m in ests:
                vals = [r[m] for r in sel if m in r and r[m] == r[m]]
                table[src][m] = float(np.median(vals)) if vals else math.nan
        out["by_step"][str(step)] = table
        fut = sorted((e["delta"], e) for e in table.values() if e["kind"] == "future")
        if len(fut) < 2:
            continue
        ds = [d for d, _ in fut]
        for est in CHEAP_V_ESTIMATORS:
            s = [e[f"s_{est}"] for _, e in fut]
            if all(x != x for x in s):
                continue
            best = ds[int(np.nanargmax(s))]
            out["delta_star"].setdefault(est, {})[str(step)] = {
                "delta_star": best,
                "interior": ds[0] < best < ds[-1],
                "s": s,
                "deltas": ds,
            }
    return out


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman rank correlation of the finite pairs (NaN with fewer than 3); ties get their mean rank.

    >>> spearman([1, 2, 3, 4], [10, 20, 30, 25])
    0.8
    """
    pairs = [(a, b) for a, b in zip(x, y) if math.isfinite(a) and math.isfinite(b)]
    if len(pairs) < 3:
        return math.nan

    def ranks(v: Sequence[float]) -> np.ndarray:
        arr = np.asarray(v, dtype=float)
        order = arr.argsort()
        r = np.empty(len(arr))
        r[order] = np.arange(len(arr), dtype=float)
        for val in set(arr.tolist()):  # mean rank of ties
            r[arr == val] = r[arr == val].mean()
        return r

    rx, ry = ranks([a for a, _ in pairs]), ranks([b for _, b in pairs])
    if rx.std() == 0 or ry.std() == 0:
        return math.nan
    return float(np.corrcoef(rx, ry)[0, 1])


def npo_delta(spec: str, cfgs: MethodConfigs) -> int | None:
    """The look-ahead Delta of an ``npo`` spec with a looked-ahead future (None for other methods)."""
    name, c = parse_method(spec, cfgs)
    return c.npo.delta if name == "npo" and c.npo.future == "lookahead" else None


def summarize_map(
    cells: list[dict[str, Any]],
    regimes: list[Regime],
    methods: list[str],
    cfgs: MethodConfigs,
    *,
    control: str,
    target_fraction: float = 0.9,
    n_boot: int = 2000,
) -> dict[str, Any]:
    """The map.json document from the finished cells (a partial map summarises what is there)."""
    by: dict[tuple[str, str], dict[int, dict[str, Any]]] = {}
    for c in cells:
        by.setdefault((c["regime"], c["method"]), {})[int(c["seed"])] = c
    out: dict[str, Any] = {"methods": methods, "control": control, "regimes": {}, "predictors": {}}
    for r in regimes:
        grpo = by.get((r.name, "grpo"), {})
        entry: dict[str, Any] = {"overrides": r.overrides, "row": r.row, "col": r.col, "methods": {}}
        target = target_fraction * float(np.median([c["final_accuracy"] for c in grpo.values()])) if grpo else math.nan
        entry["target_accuracy"] = target
        for m in methods:
            mine = by.get((r.name, m), {})
            if not mine:
                continue
            finals = [c["final_accuracy"] for c in mine.values()]
            e: dict[str, Any] = {
                "n_seeds": len(mine),
                "final_accuracy": _ci(finals, n_boot),
                "extra_steps": float(np.median([c["lookahead_steps"] for c in mine.values()])),
            }
            if m != "grpo" and grpo:
                e["minus_grpo"] = paired(mine, grpo, n_boot)
                e["speedup"] = speedup(mine, grpo, target)
            ctrl = by.get((r.name, control), {})
            if m not in ("grpo", control) and ctrl:
                e["minus_control"] = paired(mine, ctrl, n_boot)
            entry["methods"][m] = e
        records = [rec for c in grpo.values() for rec in c.get("qvs", [])]
        if records:
            entry["qvs"] = qvs_summary(records, n_boot)
        out["regimes"][r.name] = entry
    out["predictors"] = predictors(out, methods, cfgs, control)
    return out


def predictors(doc: dict[str, Any], methods: list[str], cfgs: MethodConfigs, control: str) -> dict[str, Any]:
    """Which estimator's S predicts the learning result across regimes: for each npo Delta of the map and each
    estimator, the Spearman correlation over regimes between log(S(Delta) / S(1)) at the first measured step (what
    the estimator says the near future adds over the present's next step) and the measured paired final-accuracy
    difference npo(Delta) - control."""
    out: dict[str, Any] = {}
    c_delta = npo_delta(control, cfgs) or 1
    for m in methods:
        d = npo_delta(m, cfgs)
        if d is None or m == control:
            continue
        for est in CHEAP_V_ESTIMATORS:
            xs, ys = [], []
            for entry in doc["regimes"].values():
                q = entry.get("qvs", {}).get("by_step", {})
                res = entry["methods"].get(m, {}).get("minus_control")
                if not q or res is None:
                    continue
                first = q[min(q, key=int)]
                a, b = first.get(f"{d:+d}", {}), first.get(f"{c_delta:+d}", {})
                sa, sb = a.get(f"s_{est}", math.nan), b.get(f"s_{est}", math.nan)
                xs.append(math.log(sa / sb) if sa > 0 and sb > 0 else math.nan)
                ys.append(res["median"])
            out.setdefault(m, {})[est] = {"spearman": spearman(xs, ys), "n_regimes": len(xs), "x": xs, "y": ys}
    return out


def _fmt(x: float, digits: int = 3) -> str:
    return "n/a" if x is None or x != x else f"{x:+.{digits}f}"


def write_map_report(doc: dict[str, Any], out: Path, grid: dict[str, Any]) -> str:
    """map.json, map.md, map.png (and qvs_map.png when Q, V, S were measured) in ``out``; returns the markdown."""
    (out / "map.json").write_text(json.dumps(doc, indent=2, default=float) + "\n")
    plot_map(doc, grid, out / "map.png")
    has_qvs = any("qvs" in e for e in doc["regimes"].values())
    if has_qvs:
        plot_qvs_map(doc, grid, out / "qvs_map.png")
    ctrl = doc["control"]
    lines = [
        "# npo-lab benefit-map",
        "",
        f"Regimes: {grid['row_knob']} (rows) x {grid['col_knob']} (columns); methods {', '.join(doc['methods'])}; "
        f"control {ctrl}. Paired by seed: median [95% bootstrap CI] of the final-accuracy difference, seeds better / "
        "equal / worse. Speed-up: GRPO's median steps to 0.9 x its final accuracy over the method's, the method's "
        "extra steps (look-ahead, rollbacks) counted.",
        "",
        "| regime | method | final acc | - grpo | - control | speed-up (extra counted) |",
        "|---|---|---|---|---|---|",
    ]
    for name, e in doc["regimes"].items():
        for m, r in e["methods"].items():

            def cell(key: str, r: dict[str, Any] = r) -> str:
                if key not in r:
                    return ""
                c = r[key]
                star = " *" if c["excludes_zero"] else ""
                w = "/".join(map(str, c["wins"]))
                return f"{_fmt(c['median'])} [{_fmt(c['ci95'][0])}, {_fmt(c['ci95'][1])}]{star} ({w})"

            fa = r["final_accuracy"]
            sp = r.get("speedup", {}).get("speedup_with_extra", math.nan)
            sp_txt = "" if "speedup" not in r else ("n/a" if sp != sp else f"{sp:.2f}x")
            lines.append(
                f"| {name} | {m} | {fa['median']:.3f} (n={r['n_seeds']}) | {cell('minus_grpo')} | "
                f"{cell('minus_control')} | {sp_txt} |"
            )
    lines += ["", "`*`: the 95% CI excludes 0.", "", "![map](map.png)", ""]
    if has_qvs:
        lines += [
            "## Delta* of S = Q / V along the GRPO runs",
            "",
            "Delta* maximises the median over seeds of S over the measured near-future Deltas; interior: neither the "
            "smallest nor the largest Delta. kl_exp is the paper's V-hat.",
            "",
            "| regime | step | " + " | ".join(CHEAP_V_ESTIMATORS) + " |",
            "|---|---|" + "---|" * len(CHEAP_V_ESTIMATORS),
        ]
        for name, e in doc["regimes"].items():
            ds = e.get("qvs", {}).get("delta_star", {})
            steps = sorted({s for est in ds.values() for s in est}, key=int)
            for s in steps:
                cells = []
                for est in CHEAP_V_ESTIMATORS:
                    v = ds.get(est, {}).get(s)
                    cells.append("" if v is None else f"{v['delta_star']}{' (interior)' if v['interior'] else ''}")
                lines.append(f"| {name} | {s} | " + " | ".join(cells) + " |")
        lines += ["", "![qvs map](qvs_map.png)", ""]
        lines += [
            "## Which estimator predicts the learning result?",
            "",
            "Spearman correlation over regimes between log(S(Delta) / S(1)) at the first measured step and the paired "
            "final-accuracy difference npo(Delta) - control (NaN: fewer than 3 regimes with both).",
            "",
            "| method | " + " | ".join(CHEAP_V_ESTIMATORS) + " |",
            "|---|" + "---|" * len(CHEAP_V_ESTIMATORS),
        ]
        for m, ests in doc["predictors"].items():
            lines.append(
                f"| {m} | "
                + " | ".join(f"{ests[e]['spearman']:.2f} (n={ests[e]['n_regimes']})" for e in CHEAP_V_ESTIMATORS)
                + " |"
            )
        lines.append("")
    lines += ["Reproduce:", "", "```bash", grid.get("command", ""), "```", ""]
    text = "\n".join(lines)
    (out / "map.md").write_text(text)
    return text


def _grid_axes(doc: dict[str, Any], grid: dict[str, Any]) -> tuple[list[str], list[str], dict[tuple[int, int], str]]:
    rows, cols = grid["row_values"], grid["col_values"]
    where = {(e["row"], e["col"]): name for name, e in doc["regimes"].items()}
    return rows, cols, where


def _heatmap(ax: Any, values: np.ndarray, text: list[list[str]], grid: dict[str, Any], title: str, vmin: float,
             vmax: float, cmap: str, dark: Callable[[float], bool]) -> Any:  # fmt: skip
    """One regime-grid heatmap: ``values`` coloured on [vmin, vmax], ``text`` in each cell (white where ``dark``)."""
    im = ax.imshow(values, cmap=cmap, vmin=vmin, vmax=vmax, aspect="auto")
    for i in range(values.shape[0]):
        for j in range(values.shape[1]):
            ink = "white" if np.isfinite(values[i, j]) and dark(values[i, j]) else "black"
            ax.text(j, i, text[i][j], ha="center", va="center", fontsize=7.5, color=ink)
    ax.set_xticks(range(len(grid["col_values"])), grid["col_values"], fontsize=8)
    ax.set_yticks(range(len(grid["row_values"])), grid["row_values"], fontsize=8)
    ax.set_xlabel(grid["col_knob"], fontsize=8)
    ax.set_ylabel(grid["row_knob"], fontsize=8)
    ax.set_title(title, fontsize=9)
    return im


def plot_map(doc: dict[str, Any], grid: dict[str, Any], path: Path) -> None:
    """map.png: one heatmap per (comparison, method): NPO - control, method - GRPO (paired medians, CI in the
    cell, * where it excludes 0; one colour scale for all), the speed-up with the extra steps counted (log2 colour
    scale), and Delta* of S (kl_exp) at each measured step (interior or at an edge of the measured Deltas)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows, cols, where = _grid_axes(doc, grid)
    ctrl = doc["control"]
    others = [m for m in doc["methods"] if m != "grpo"]
    panels = [(m, "minus_control") for m in others if m != ctrl] + [(m, "minus_grpo") for m in others]
    panels += [(m, "speedup") for m in others]
    measured = [e.get("qvs", {}).get("delta_star", {}).get("kl_exp", {}) for e in doc["regimes"].values()]
    steps = sorted({s for d in measured for s in d}, key=int)
    deltas = sorted({d for by_step in measured for v in by_step.values() for d in v["deltas"]})
    panels += [(s, "delta_star") for s in steps]
    ncol = max(len(others), 1)
    nrow = (len(panels) + ncol - 1) // ncol
    fig, axes = plt.subplots(nrow, ncol, figsize=(3.6 * ncol, 3.0 * nrow + 0.8), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    # one colour scale for every difference panel, so equal colours mean equal differences
    diffs = [
        abs(r[key]["median"])
        for e in doc["regimes"].values()
        for r in e["methods"].values()
        for key in ("minus_control", "minus_grpo")
        if key in r and r[key]["median"] == r[key]["median"]
    ]
    span = max([0.02, *diffs])
    for idx, (m, key) in enumerate(panels):
        ax = axes.flat[idx]
        ax.axis("on")
        vals = np.full((len(rows), len(cols)), np.nan)
        text = [["" for _ in cols] for _ in rows]
        for (i, j), name in where.items():
            r = doc["regimes"][name]["methods"].get(m, {})
            if key == "delta_star":  # Delta* of S (kl_exp) at step m: where the near future is best
                v = doc["regimes"][name].get("qvs", {}).get("delta_star", {}).get("kl_exp", {}).get(m)
                if v is not None:
                    vals[i, j] = deltas.index(v["delta_star"])
                    text[i][j] = f"{v['delta_star']}" + ("\ninterior" if v["interior"] else "\nedge")
            elif key == "speedup":
                sp = r.get("speedup", {}).get("speedup_with_extra", math.nan)
                vals[i, j] = math.log2(sp) if sp == sp and sp > 0 else math.nan
                text[i][j] = "n/a" if sp != sp else f"{sp:.2f}x"
            elif key in r:
                c = r[key]
                vals[i, j] = c["median"]
                star = "*" if c["excludes_zero"] else ""
                text[i][j] = f"{c['median']:+.3f}{star}\n[{c['ci95'][0]:+.3f},\n{c['ci95'][1]:+.3f}]"
        if key == "delta_star":
            top = max(len(deltas) - 1, 1)  # viridis: dark at the bottom, yellow at the top
            title = f"Delta* of S (kl_exp) at step {m}\n(of {', '.join(map(str, deltas))})"
            _heatmap(ax, vals, text, grid, title, 0, top, "viridis", lambda x, top=top: x <= 0.6 * top)
            continue
        title = {"minus_control": f"{m}\n- {ctrl}", "minus_grpo": f"{m}\n- grpo", "speedup": f"{m}\nspeed-up vs grpo"}
        lim = 1.0 if key == "speedup" else span  # speed-up: log2, so 0.5x .. 2x
        im = _heatmap(ax, vals, text, grid, title[key], -lim, lim, "PuOr" if key == "speedup" else "RdBu",
                      lambda x, lim=lim: abs(x) > 0.6 * lim)  # fmt: skip
        bar = fig.colorbar(im, ax=ax, shrink=0.7)
        bar.ax.tick_params(labelsize=7)
        if key == "speedup":
            bar.set_ticks([-1, 0, 1], labels=["0.5x", "1x", "2x"])
    fig.suptitle("Paired final-accuracy differences, median [95% CI] over seeds (* CI excludes 0);\nspeed-up vs grpo "
                 "with the extra steps counted", fontsize=10)  # fmt: skip
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_qvs_map(doc: dict[str, Any], grid: dict[str, Any], path: Path) -> None:
    """qvs_map.png: per regime (grid layout), S(Delta) of the near future (solid) and of the extrapolated future
    (dashed) at each measured step, under the paper's V-hat (kl_exp)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows, cols, where = _grid_axes(doc, grid)
    fig, axes = plt.subplots(len(rows), len(cols), figsize=(3.4 * len(cols), 2.6 * len(rows) + 0.6), squeeze=False,
                             sharex=True)  # fmt: skip
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for (i, j), name in where.items():
        ax = axes[i][j]
        q = doc["regimes"][name].get("qvs", {}).get("by_step", {})
        for n, (step, table) in enumerate(sorted(q.items(), key=lambda kv: int(kv[0]))):
            for kind, style in (("future", "o-"), ("extrapolated", "x--")):
                pts = sorted((e["delta"], e["s_kl_exp"]) for e in table.values() if e["kind"] == kind)
                if not pts:
                    continue
                x, y = zip(*pts)
                ax.plot(x, y, style, color=colors[n % len(colors)], ms=4, lw=1.2,
                        label=f"step {step}" if kind == "future" else None)  # fmt: skip
        ax.set_xscale("log")
        ticks = sorted({e["delta"] for t in q.values() for e in t.values() if e["kind"] == "future"})
        ax.set_xticks(ticks, [str(d) for d in ticks], fontsize=7)
        ax.minorticks_off()
        ax.set_title(", ".join(f"{k}={v}" for k, v in zip((grid["row_knob"], grid["col_knob"]), (rows[i], cols[j]))
                               if k != "-"), fontsize=8)  # fmt: skip
        ax.grid(alpha=0.3)
        if i == len(rows) - 1:
            ax.set_xlabel("Delta (o near future, x extrapolated)", fontsize=8)
        if j == 0:
            ax.set_ylabel("S = Q / V (kl_exp)", fontsize=8)
        if (i, j) == (0, 0):
            ax.legend(fontsize=7)
    fig.suptitle("S(Delta), kl_exp: medians over seeds\nalong the GRPO runs", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


__all__ = [
    "CELLS",
    "MapJob",
    "ProbeSpec",
    "ProbedGRPO",
    "Regime",
    "cell_path",
    "load_cells",
    "paired",
    "predictors",
    "qvs_summary",
    "run_map",
    "run_map_job",
    "spearman",
    "speedup",
    "summarize_map",
    "write_map_report",
]
