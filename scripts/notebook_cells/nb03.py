"""Cells of notebooks/03_npo_interventions.ipynb (written by scripts/make_notebooks.py)."""

# ruff: noqa: E501 (the cell sources are indented by 8; the notebooks themselves are linted at 119)

FILENAME = "03_npo_interventions.ipynb"

CELLS = [
    (
        "md",
        r"""
        # 3. NPO's two interventions: early bootstrap and plateau breakthrough

        **CPU recipe.** On the arithmetic task of notebook 1: one intervention taken apart by hand (look ahead Δ = 20
        steps, roll back exactly, put verified-correct rows of π_{t+Δ} into the failing groups), then GRPO and NPO
        trained side by side for 400 steps from the same warm-started checkpoint, NPO intervening at step 0 (early
        bootstrap) and step 100 (plateau breakthrough). Expected runtime on 2 CPU cores: about **45 s** (measured: 44 s
        for the whole notebook, up to twice that on a busy machine). Expected result (final accuracy, mean of the last
        3 evaluations) for seed 3, one of the two seeds of ten on which GRPO stalls (docs/benchmarks.md §2): GRPO
        0.165, NPO 0.616, NPO paying 40 look-ahead steps (2 × Δ). With `SEEDS = (0, 3)` a typical seed joins it: seed 0
        ends at GRPO 0.857, NPO 0.879. One or two seeds are anecdotes: over 10 seeds NPO's paired median gain is
        +0.038, most of it on the stalled seeds.

        NPO (docs/algorithm.md §2, `npo.*` fields) at an intervention step t:

        1. **snapshot** the training state (weights + sampling RNG, optimizer, global RNGs, data cursor);
        2. **look ahead**: Δ = `npo.delta` plain GRPO steps; keep π_{t+Δ};
        3. **roll back** to the snapshot, bit-exactly;
        4. **guide**: on each following step, every group whose on-policy accuracy is below the gate
           g = `npo.gate` (0.6) gets k = `npo.guide_slots` (1) of its G slots replaced by verified-correct rows
           sampled from π_{t+Δ} (`npo.guide_samples` = 8 tries per gated prompt).
        """,
    ),
    (
        "code",
        r"""
        import matplotlib.pyplot as plt
        import torch
        from npo_lab.envs.arithmetic_backend import ArithmeticBackend
        from npo_lab.envs.config import TinyLMConfig

        from npo_lab.config import GRPOConfig, MethodConfigs, NPOConfig, RunConfig
        from npo_lab.core.advantages import group_advantages
        from npo_lab.core.guidance import group_accuracy, guide_gate, merge_guides
        from npo_lab.tasks.arithmetic import ArithmeticConfig
        from npo_lab.train import grpo_step, lookahead, make_state
        from npo_lab.utils import seed_everything

        torch.set_num_threads(1)  # these models are tiny: one thread is fastest (and CI has 2 cores)
        SEED = 3  # section 3.1 takes one intervention of seed 3 apart; section 3.2 trains seeds 0 and 3
        seed_everything(SEED)
        backend = ArithmeticBackend(ArithmeticConfig(digits=3), TinyLMConfig(), seed=SEED)  # warm start included
        grpo = GRPOConfig()
        npo = NPOConfig(delta=20, interventions=(0, 100))
        print(f"warm-started eval accuracy: {backend.evaluate()['eval/accuracy']:.3f}")
        """,
    ),
    (
        "md",
        r"""
        ## 3.1 One intervention, by hand

        `npo_lab.train.lookahead(state, delta, plain_step)` does steps 1-3: it runs `plain_step` Δ times, keeps the
        checkpoint, and restores the snapshot. The rollback is exact: the weights, the optimizer, the RNGs and the
        data cursor are what they were, so the run continues as if the look-ahead never happened.
        """,
    ),
    (
        "code",
        r"""
        state = make_state(backend, grpo, seed=SEED)
        weights_before = {k: v.clone() for k, v in backend.model.state_dict().items()}
        cursor_before = state.sampler.state_dict()
        res = lookahead(state, npo.delta, lambda: grpo_step(state, grpo))
        print(f"looked ahead {res.steps} steps in {res.seconds:.1f} s; on-policy reward over them:")
        print([round(m["reward/on_policy_mean"], 3) for m in res.metrics])
        assert res.steps == npo.delta and state.step == 0 and state.sampler.state_dict() == cursor_before
        assert all(torch.equal(weights_before[k], v) for k, v in backend.model.state_dict().items())
        """,
    ),
    (
        "md",
        r"""
        Step 4 with the pure functions of `npo_lab.core.guidance`: sample the step-0 batch, compute each group's
        accuracy, gate the groups below 0.6 (`guide_gate`), sample 8 rows per gated prompt from π_{t+Δ}
        (`backend.rollout(..., policy=checkpoint)`), and let `merge_guides` replace one slot of each gated group
        that has a verified-correct guide row (a wrong guide row is never inserted). The group size stays G, and
        the advantage is computed over the mixed group: the guide row gets a large positive advantage.
        """,
    ),
    (
        "code",
        r"""
        prompts = state.sampler.next(grpo.prompts_per_step)
        batch = backend.rollout(prompts, grpo.group_size)  # B = 16 prompts x G = 8
        acc = group_accuracy(batch.rewards, batch.group_ids)
        gated = [p for p, on in zip(acc, guide_gate(torch.tensor(list(acc.values())), npo.gate).tolist()) if on]
        guides = backend.rollout(gated, npo.guide_samples, policy=res.checkpoint)
        merged, gm = merge_guides(batch, guides, gated, k=npo.guide_slots)

        silent_before = group_advantages(batch.rewards, batch.group_ids)[1]["reward/frac_zero_std"]
        adv_after, m_after = group_advantages(merged.rewards, merged.group_ids)
        print(f"groups below the gate: {len(gated)} of {len(acc)}; got a verified guide row: {int(gm['guide/rows'])}")
        silent_after = m_after["reward/frac_zero_std"]
        print(f"silent groups (identical rewards): {silent_before:.2f} before the merge, {silent_after:.2f} after")
        g = int(merged.group_ids[merged.is_guide][0]) if merged.is_guide.any() else None
        if g is not None:
            rows = (merged.group_ids == g).nonzero().flatten()
            print(f"group {g}: rewards {merged.rewards[rows].tolist()}, is_guide {merged.is_guide[rows].int().tolist()}")
            print(f"          advantages {[round(a, 2) for a in adv_after[rows].tolist()]}")

        # what the merge guarantees: same batch size and groups, one guide row at most per gated group, all correct
        assert merged.size == batch.size and torch.equal(merged.group_ids, batch.group_ids)
        assert int(merged.is_guide.sum()) == gm["guide/rows"] <= len(gated)
        assert (merged.rewards[merged.is_guide] == 1).all()
        assert set(merged.group_ids[merged.is_guide].tolist()) <= set(gated)

        # a control: the present policy itself, asked for 8 more samples per gated prompt (best-of-k)
        own = backend.rollout(gated, npo.guide_samples)


        def found(rows):
            "Fraction of the gated prompts with at least one correct row."
            return len(set(rows.group_ids[rows.rewards > 0.5].tolist())) / max(len(gated), 1)


        print(f"gated prompts with a correct row in 8 samples: pi_t+{npo.delta} {found(guides):.2f}, pi_t {found(own):.2f}")
        """,
    ),
    (
        "md",
        r"""
        The last line is the honest control of docs/benchmarks.md §2. One batch of 16 prompts is a small sample:
        over the first 100 steps of 10 seeds, the Δ = 20 guide and a Δ = 1 guide (almost the present policy) both
        found a correct row for 27% of the gated groups, because early in training 20 steps of GRPO barely move the
        policy. In this simulation much of NPO's gain is verified best-of-k injection (`npo:delta=1` gains as much).

        ## 3.2 GRPO vs NPO, paired

        `npo_lab.methods.make_method("npo", ...)` builds the `NPO` method; `npo_lab.train.train` runs
        the loop with it (it asks the method before each step: look-ahead at the scheduled steps, guide rows while
        the guidance window is open). Both runs start from the same checkpoint with the same seed. A small in-memory
        logger keeps every metric (`Logger` protocol of `npo_lab.metrics`).
        """,
    ),
    (
        "code",
        r"""
        from npo_lab.experiments.report import lookahead_before
        from npo_lab.methods import make_method
        from npo_lab.metrics import MemoryLogger
        from npo_lab.train import train

        STEPS, SEEDS = 400, (3,)  # SEEDS = (0, 3) adds a typical seed (about 35 s more)
        run = RunConfig(steps=STEPS, eval_every=20)
        results, logs = {}, {}
        for seed in SEEDS:
            seed_everything(seed)
            backend = ArithmeticBackend(ArithmeticConfig(digits=3), TinyLMConfig(), seed=seed)
            start = backend.save()  # both methods start from this warm-started checkpoint: the comparison is paired
            for method in ("grpo", "npo"):
                backend.load(start)
                seed_everything(seed)
                state = make_state(backend, grpo, seed=seed)
                algo = make_method(method, MethodConfigs(npo=npo), STEPS, grpo=grpo)
                logs[seed, method] = MemoryLogger()
                r = results[seed, method] = train(state, algo, run, grpo, seed=seed, logger=logs[seed, method])
                print(f"seed {seed} {method}: final accuracy {r.final_accuracy:.3f}, look-ahead steps {r.lookahead_steps}")
        """,
    ),
    (
        "md",
        r"""
        What the mechanics guarantee, checked: NPO intervened exactly at the scheduled steps and paid Δ look-ahead
        steps at each; and because the rollback is exact, NPO's first training step drew the very batch GRPO drew
        at its first step (same on-policy reward), although NPO had trained 20 steps ahead in between.
        """,
    ),
    (
        "code",
        r"""
        for seed in SEEDS:
            rn, rg = results[seed, "npo"], results[seed, "grpo"]
            assert rn.interventions == [0, 100]
            assert rn.intervention_costs == [npo.delta] * 2 and rn.lookahead_steps == 2 * npo.delta
            assert rg.lookahead_steps == 0
            first = [logs[seed, m].series("reward/on_policy_mean")[1][0] for m in ("grpo", "npo")]
            assert first[0] == first[1], first
        for e in rn.events:
            print(e)
        """,
    ),
    (
        "code",
        r"""
        fig, axes = plt.subplots(len(SEEDS), 3, figsize=(16, 4 * len(SEEDS)), squeeze=False)
        colors = {"grpo": "C0", "npo": "C1"}
        k = 10  # moving average over 10 steps


        def smooth(v):
            return [sum(v[i - k + 1 : i + 1]) / k for i in range(k - 1, len(v))]


        for row, seed in zip(axes, SEEDS):
            for method in ("grpo", "npo"):
                r = results[seed, method]
                steps, accs = [s for s, _ in r.evals], [a for _, a in r.evals]
                costs = {"interventions": r.interventions, "intervention_costs": r.intervention_costs}
                c = colors[method]
                row[0].plot(steps, accs, "o-", ms=3, color=c, label=method)
                row[1].plot([s + lookahead_before(costs, s) for s in steps], accs, "o-", ms=3, color=c, label=method)
                s, v = logs[seed, method].series("reward/frac_zero_std")
                row[2].plot(s[k - 1 :], smooth(v), color=c, label=f"{method}: silent groups")
            s, v = logs[seed, "npo"].series("guide/injected_frac")
            row[2].plot(s[k - 1 :], smooth(v), color="C3", ls="--", label="npo: groups given a guide row")
            for t in results[seed, "npo"].interventions:
                for ax in (row[0], row[2]):
                    ax.axvline(t, color="C1", ls=":")
            row[0].set_title(f"seed {seed}: eval accuracy vs training steps (dotted: NPO interventions)", fontsize=10)
            row[1].set_title(f"seed {seed}: eval accuracy vs training + look-ahead steps", fontsize=10)
            row[2].set_title(f"seed {seed}: silent groups and guided groups, {k}-step average", fontsize=10)
            row[0].set_xlabel("training step")
            row[1].set_xlabel("training steps + look-ahead steps (compute)")
            row[2].set_xlabel("training step")
            row[0].set_ylabel("greedy accuracy, held-out")
            row[1].set_ylabel("greedy accuracy, held-out")
            row[2].set_ylabel("fraction of the 16 groups")
            row[2].set_ylim(0, 1)
            for ax in row:
                ax.grid(alpha=0.3)
                ax.legend(fontsize=8)
        fig.suptitle(f"GRPO vs NPO (Δ = {npo.delta}, interventions at steps 0 and 100) on the arithmetic task")
        fig.tight_layout()
        plt.show()
        """,
    ),
    (
        "md",
        r"""
        **Reading the figure.** Left: accuracy per training step; middle: the same curves against training plus
        look-ahead steps, the fair axis for compute (NPO's curve shifts right by Δ after each intervention). Right:
        the fraction of silent groups (identical rewards, no gradient), and the fraction of groups NPO gave a
        verified guide row: each such row turns an all-wrong group into a group with signal, which is the whole
        mechanism. On the stalled seed GRPO's groups stay silent and the guide rows are what moves the policy; on a
        typical seed (add 0 to `SEEDS`) GRPO finds its way out of the sparse start by itself and NPO's edge is
        small. The guide checkpoint of an intervention is used until the next one (`npo.guidance_window = 0`).

        **Scale up / try.** More seeds (`SEEDS = range(10)`, about 35 s per seed), `NPOConfig(delta=1)` (the
        control: almost no look-ahead cost), `guide_samples=16`, `interventions=(0,), every=50`; over 10 seeds:
        `npo-lab compare --methods grpo,npo,npo:delta=1 --seeds 10` (docs/benchmarks.md §2).
        """,
    ),
]
