"""Cells of notebooks/07_benefit_map.ipynb (written by scripts/make_notebooks.py)."""

# ruff: noqa: E501 (the cell sources are indented by 8; the notebooks themselves are linted at 119)

FILENAME = "07_benefit_map.ipynb"

CELLS = [
    (
        "md",
        r"""
        # 7. When does the near future help?

        **CPU recipe.** A 2 × 2 benefit map (`npo-lab benefit-map --preset quick`): two regimes of *transfer between
        prompts* (`task.min_digits` 0: every problem has 3-digit operands; 1: lengths 1, 2 and 3 mixed, sharing the
        carry) × two of *learning per step* (`grpo.lr` 3e-4, 1e-3); GRPO, NPO with Δ = 20 and the Δ = 1 control;
        2 seeds of 40 steps; Q, V and S measured along each GRPO run. Expected runtime on 2 CPU cores: about
        **100 s** (measured: 99.5 s for the whole notebook on an idle machine, up to twice that on a busy one). Then the full map of docs/benefit_map.md (3 × 3 regimes, 5 methods, 5 seeds), read from the
        docs, with what it says.

        The question is the paper's central one (its Fig. 2 and §3): a guide from π_{t+Δ} is worth its cost when it
        solves prompts π_t fails (**Q**, rising with Δ) without being too far from π_t to learn from (**V**, growing
        with Δ), so the effective signal **S = Q / V** peaks at an interior Δ*. The **Δ = 1 control** separates the
        future's contribution from the mere extra samples: π_{t+1} is π_t plus one step, so whatever NPO(Δ = 1)
        gains comes from injecting π_t's own verified best-of-8, not from the future.
        """,
    ),
    (
        "code",
        r"""
        import json
        import os
        from pathlib import Path

        import matplotlib.pyplot as plt
        import npo_lab
        import torch
        from IPython.display import Image, Markdown, display

        from npo_lab.cli import PRESETS, main

        torch.set_num_threads(1)  # these models are tiny: one thread per process is fastest (and CI has 2 cores)
        DOCS = Path(npo_lab.__file__).resolve().parents[1] / "docs"
        OUT = Path(os.environ.get("TMPDIR", "/tmp")) / "npo_lab_nb07_map"
        print(json.dumps(PRESETS["quick"], indent=1))
        """,
    ),
    (
        "md",
        r"""
        ## 7.1 A regime is two config fields

        Every knob of the map is an ordinary config field, and each stands for a property of an LLM RLVR run
        (docs/benefit_map.md has the table): `task.min_digits` is how much what the policy learns on the prompts it
        solves *transfers* to those it fails (short and long additions share the carry); `grpo.lr` is how far the
        policy moves per step, so how far Δ steps reach. The command below is the one a terminal would run; each
        finished (regime, seed, method) is written to `cells/` at once, so running it again continues where it
        stopped.
        """,
    ),
    (
        "code",
        r"""
        code = main(["benefit-map", "--preset", "quick", "--out", str(OUT)])
        assert code == 0
        doc = json.loads((OUT / "map.json").read_text())
        assert len(doc["regimes"]) == 4 and len(list((OUT / "cells").glob("*/*.json"))) == 4 * 2 * 3
        # every paired difference is a median with its bootstrap interval around it
        for e in doc["regimes"].values():
            for m, r in e["methods"].items():
                for key in ("minus_grpo", "minus_control"):
                    if key in r:
                        lo, hi = r[key]["ci95"]
                        assert lo <= r[key]["median"] <= hi, (m, key)
        display(Image(filename=str(OUT / "map.png"), width=900))
        """,
    ),
    (
        "md",
        r"""
        **Reading the heatmaps.** Each cell is one regime; the number is the median over seeds of a *paired*
        difference of final accuracy (every method of a seed starts from the same warm-started checkpoint), with its
        95% bootstrap interval and a `*` where that interval excludes 0. Blue: the method is better. The first row is
        NPO(Δ = 20) − control: **the future's own contribution**. With 2 seeds and 40 steps these are noisy; the
        point here is the mechanics. The speed-up panel counts NPO's 20 look-ahead steps per intervention.

        ## 7.2 Q, V and S along the GRPO runs

        At steps 0 and 20 of every GRPO run, π_{t+Δ} (one look-ahead, rolled back exactly: the GRPO run is unchanged)
        and the *extrapolated* future θ_t + (Δ / k)(θ_t − θ_{t−k}) (no steps at all, beyond the paper) are probed on
        the prompts π_t fails. S under the paper's V̂ = exp(β · KL):
        """,
    ),
    (
        "code",
        r"""
        display(Image(filename=str(OUT / "qvs_map.png"), width=700))
        for name, e in doc["regimes"].items():
            ds = e["qvs"]["delta_star"].get("kl_exp", {})
            print(f"{name:24s}", {step: (v["delta_star"], "interior" if v["interior"] else "edge") for step, v in ds.items()})
        """,
    ),
    (
        "md",
        r"""
        ## 7.3 The full map

        `npo-lab benefit-map --preset full` (3 × 3 regimes, 5 methods, 5 seeds, 100 steps; docs/benefit_map.md has
        the command and its runtime) gave the map below.
        """,
    ),
    (
        "code",
        r"""
        display(Image(filename=str(DOCS / "img" / "benefit_map.png"), width=1000))
        display(Image(filename=str(DOCS / "img" / "benefit_map_qvs.png"), width=800))
        """,
    ),
    (
        "md",
        r"""
        **What the full map says** (docs/benefit_map.md has every number and the runs that checked them on more
        seeds):

        - Most of what NPO gains over GRPO, the **Δ = 1 control gains too**: verified best-of-8 of the present,
          injected into the groups that fail. NPO(Δ = 20) − control has a CI containing 0 in 7 of 9 regimes on 5
          seeds; of the two cells that excluded 0, one did not replicate on fresh seeds.
        - **Q barely rises with Δ** (π_{t+20} solves at most 8 points more of the failed prompts than π_{t+1}), because
          the prompts the present fails are mostly prompts it solves sometimes; **V̂ stays near 1** where learning is
          stable; so **S(Δ) is flat**, and where its maximum falls is noise. No estimator's S ranks the regimes by
          the future's benefit.
        - The one benefit of the future that replicated on 10 unseen seeds (`--preset high_lr`: NPO(Δ = 40) − control
          +0.074 [+0.036, +0.161]) is at a learning rate so high that RL *lowers* held-out accuracy from the warm
          start; there NPO damages the policy least, and S (falling with Δ) points the other way.
        - The **extrapolated future** costs no step; it measures nearly as good as π_{t+Δ} up to Δ ≈ 5 at moderate
          learning rates and overshoots beyond, and as NPO's guide it learned as well as the control, no better.

        So the paper's regime, where prompts at zero pass rate become solvable within Δ steps, is not one this task
        family reached on this grid. **Try it yourself:** `--row-knob model.warm_steps --row-values 100 300` (the start accuracy),
        `--col-knob model.warm_styles --col-values bare bare,padded,scratch` (how many valid styles, which drives V),
        or a task of your own where transfer is stronger.
        """,
    ),
]
