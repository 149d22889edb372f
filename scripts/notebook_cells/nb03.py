"""Cells of notebooks/03_npo_interventions.ipynb (written by scripts/make_notebooks.py)."""

# ruff: noqa: E501 (the cell sources are indented by 8; the notebooks themselves are linted at 119)

FILENAME = "03_npo_interventions.ipynb"

CELLS = [
    (
        "md",
        r"""
        # 3. NPO's two interventions: early bootstrap and plateau breakthrough

        **CPU recipe.** On the arithmetic task of notebook 1: one intervention taken apart by hand (look ahead Δ = 20
        steps, cache one verified answer of π_{t+Δ} per prompt of the segment, roll back exactly, replay the segment
        with the cached answers in the failing groups), then GRPO and NPO trained side by side for 400 steps from the
        same warm-started checkpoint, NPO intervening at step 0 (early bootstrap) and step 100 (plateau breakthrough).
        Expected runtime on 2 CPU cores: about **110 s** (measured with other work loading the machine, about 70 s of
        CPU time; notebooks/README.md). Expected result for seed 3, one of the two seeds of ten on which GRPO stalls
        (docs/benchmarks.md §2), final accuracy as the mean of the last 3 evaluations: GRPO 0.165, NPO 0.424, NPO
        paying 40 look-ahead steps (2 × Δ) and 2 × 320 × 8 = 5120 guide samples for its two caches. In section 3.1,
        π_{t+20} of the step-0 intervention solves 59 of the segment's 320 prompts in 8 tries, and π_t itself 68.

        **NPO as the paper describes it** (two close readings of the paper; docs/algorithm.md §2, the `npo.*` fields
        and their defaults). At an intervention step t:

        1. **snapshot** the training state (weights + sampling RNG, optimizer, global RNGs, data cursor);
        2. **look ahead**: Δ = `npo.delta` plain GRPO steps; keep π_{t+Δ};
        3. **cache** (`npo.guide_source = "cache"`): π_{t+Δ} samples `npo.guide_samples` = 8 answers for every
           prompt the segment [t, t+Δ) draws, and the verifier keeps **one** correct answer per prompt (a prompt
           π_{t+Δ} cannot solve gets none);
        4. **roll back** to the snapshot, bit-exactly: the replay of [t, t+Δ) draws the same prompts;
        5. **guide the replayed segment** (`npo.window = "segment"`): in each of its steps, every group whose
           on-policy accuracy is p̂ ≤ 0.6 (`npo.gate`, `npo.gate_op = "le"`) gets its last slot replaced by its
           prompt's cached answer, if it has one. The loss of that row uses the clipped ratio
           π_θ / π_{t+Δ}, to the policy that sampled it (`npo.guide_loss = "behavior_clipped"`); every other row
           keeps GRPO's ratio to the policy before the update.

        At t = 0 this is the paper's *early bootstrap* (a scout run from the start weights, then a restart from
        them); later, its *plateau breakthrough* (train on through the plateau, go back to its start).

        **What the paper reports** (Table 1: Qwen3-VL-8B-Instruct trained on MMFineReason-123K, average over 8
        benchmarks, as the close readings give it):

        | Base model (no RL) | GRPO | NPO, early only | NPO, early + late | AutoNPO |
        |---|---|---|---|---|
        | 57.88 | 60.25 | 62.12 | 62.84 | 63.15 |

        So NPO gains +2.59 over **GRPO** (57.88 is the base model before any RL). This notebook is a CPU simulation
        of the mechanism, not of those numbers.
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
        from npo_lab.core.losses import policy_loss
        from npo_lab.methods.base import verified_rows
        from npo_lab.methods.npo import GuideCache
        from npo_lab.tasks.arithmetic import ArithmeticConfig
        from npo_lab.train import grpo_step, lookahead, make_state
        from npo_lab.utils import seed_everything

        torch.set_num_threads(1)  # these models are tiny: one thread is fastest (and CI has 2 cores)
        SEED = 3  # section 3.1 takes one intervention of seed 3 apart; section 3.2 trains seed 3
        seed_everything(SEED)
        backend = ArithmeticBackend(ArithmeticConfig(digits=3), TinyLMConfig(), seed=SEED)  # warm start included
        grpo = GRPOConfig()
        npo = NPOConfig(delta=20, interventions=(0, 100))  # every other field: the paper's defaults above
        print(f"warm-started eval accuracy: {backend.evaluate()['eval/accuracy']:.3f}")
        print(f"gate p-hat {'<=' if npo.gate_op == 'le' else '<'} {npo.gate}, guides: {npo.guide_source}, "
              f"window: {npo.window}, guide loss: {npo.guide_loss}")  # fmt: skip


        def record_prompts(backend):
            "Instrumentation: the prompt ids of every on-policy rollout of `backend` from now on, one list per call."
            calls, rollout = [], backend.rollout

            def recording(prompt_ids, n, policy=None):
                if policy is None:
                    calls.append(list(prompt_ids))
                return rollout(prompt_ids, n, policy)

            backend.rollout = recording
            return calls
        """,
    ),
    (
        "md",
        r"""
        ## 3.1 One intervention, by hand

        `npo_lab.train.lookahead(state, delta, plain_step)` does steps 1, 2 and 4: it runs `plain_step` Δ times,
        keeps the checkpoint, and restores the snapshot. A recorder around `backend.rollout` notes the prompts each
        look-ahead step draws. The rollback is exact: the weights, the optimizer, the RNGs and the data cursor are what
        they were, so the prompts the replay will draw (`state.sampler.peek`, which NPO reads to fill its cache) are
        the ones the look-ahead drew.
        """,
    ),
    (
        "code",
        r"""
        state = make_state(backend, grpo, seed=SEED)
        weights_before = {k: v.clone() for k, v in backend.model.state_dict().items()}
        cursor_before = state.sampler.state_dict()
        drawn = record_prompts(backend)
        res = lookahead(state, npo.delta, lambda: grpo_step(state, grpo))
        print(f"looked ahead {res.steps} steps in {res.seconds:.1f} s; on-policy reward over them:")
        print([round(m["reward/on_policy_mean"], 3) for m in res.metrics])
        assert res.steps == npo.delta and state.step == 0 and state.sampler.state_dict() == cursor_before
        assert all(torch.equal(weights_before[k], v) for k, v in backend.model.state_dict().items())
        segment = state.sampler.peek(npo.delta, grpo.prompts_per_step)  # what the replay of [0, Δ) will draw
        assert segment == drawn, "the replay draws exactly the prompts the look-ahead drew"
        """,
    ),
    (
        "md",
        r"""
        Step 3, the cache: π_{t+Δ} (`backend.rollout(..., policy=res.checkpoint)`) answers every prompt of the
        segment 8 times, and `verified_rows` keeps the first verified-correct answer of each prompt, with its
        behaviour log-probs (`npo_lab.methods.npo.GuideCache.fill` does this in chunks of 64 prompts). The present
        policy π_t asked the same (best-of-8) is the honest control: how much does the near future know that the
        present does not?
        """,
    ),
    (
        "code",
        r"""
        prompts = sorted({p for step in segment for p in step})
        answers = backend.rollout(prompts, npo.guide_samples, policy=res.checkpoint)  # π_{t+Δ}: 8 answers per prompt
        cache = GuideCache()
        cache.rows = verified_rows(answers, grpo.correct_threshold)
        solvable = set(answers.group_ids[answers.rewards > grpo.correct_threshold].tolist())
        own = backend.rollout(prompts, npo.guide_samples)  # the control: π_t itself, best of 8
        own_solvable = set(own.group_ids[own.rewards > grpo.correct_threshold].tolist())
        print(f"segment: {npo.delta} steps x {grpo.prompts_per_step} prompts = {len(prompts)} distinct prompts")
        print(f"solved in 8 tries by π_t+{npo.delta}: {len(solvable)}, by π_t: {len(own_solvable)}")
        print(f"cache: {len(cache)} rows, {len(cache) / len(prompts):.0%} of the segment's prompts")

        # what the cache guarantees: one verified-correct row per prompt π_{t+Δ} solved, none for the others
        assert set(cache.rows) == solvable
        assert all(r.size == 1 and r.group_ids.item() == p and r.rewards.item() == 1.0 for p, r in cache.rows.items())
        """,
    ),
    (
        "md",
        r"""
        Step 5, the first replayed step with the pure functions of `npo_lab.core.guidance`: sample the step-0 batch,
        compute each group's accuracy p̂, gate the groups with p̂ ≤ 0.6 (`guide_gate`), take the cached rows of the
        gated prompts (`GuideCache.plan_rows`), and let `merge_guides` replace the last slot of each gated group
        that has one (a wrong guide row is never inserted). The group size stays G, and the advantage is computed
        over the mixed group: the guide row gets a large positive advantage.

        With G = 8, p̂ is a multiple of 1/8 and never exactly 0.6, so the paper's gate (≤) and the strict gate of the
        authors' public code (<, `npo.gate_op = "lt"`) guide the same groups here; they differ with G = 5 (3/5).
        """,
    ),
    (
        "code",
        r"""
        batch = backend.rollout(state.sampler.next(grpo.prompts_per_step), grpo.group_size)  # B = 16 prompts x G = 8
        assert batch.group_ids.unique_consecutive().tolist() == segment[0]  # the segment's first step
        acc = group_accuracy(batch.rewards, batch.group_ids)
        gate_on = guide_gate(torch.tensor(list(acc.values())), npo.gate, npo.gate_op)
        gated = [p for p, on in zip(acc, gate_on.tolist()) if on]
        rows, hits = cache.plan_rows(gated, batch)
        merged, gm = merge_guides(batch, rows, gated, k=npo.guide_slots)

        silent_before = group_advantages(batch.rewards, batch.group_ids)[1]["reward/frac_zero_std"]
        adv_after, m_after = group_advantages(merged.rewards, merged.group_ids)
        print(f"groups with p-hat <= {npo.gate}: {len(gated)} of {len(acc)}; with a cached answer: {len(hits)}")
        silent_after = m_after["reward/frac_zero_std"]
        print(f"silent groups (identical rewards): {silent_before:.2f} before the merge, {silent_after:.2f} after")
        g = hits[0]
        rows_g = (merged.group_ids == g).nonzero().flatten()
        print(f"group {g}: rewards {merged.rewards[rows_g].tolist()}, is_guide {merged.is_guide[rows_g].int().tolist()}")
        print(f"          advantages {[round(a, 2) for a in adv_after[rows_g].tolist()]}")

        # what the merge guarantees: same batch size and groups, one guide row per gated group with a cached answer
        assert merged.size == batch.size and torch.equal(merged.group_ids, batch.group_ids)
        assert hits and int(merged.is_guide.sum()) == gm["guide/rows"] == len(hits)
        assert (merged.rewards[merged.is_guide] == 1).all()
        assert sorted(merged.group_ids[merged.is_guide].tolist()) == sorted(hits) and set(hits) <= set(gated)
        # the gate: <= and < agree on multiples of 1/8, and differ exactly at p-hat = 0.6
        eighths = torch.arange(9) / 8
        assert torch.equal(guide_gate(eighths, 0.6, "le"), guide_gate(eighths, 0.6, "lt"))
        assert guide_gate(torch.tensor([3 / 5]), 0.6, "le").item() and not guide_gate(torch.tensor([3 / 5]), 0.6, "lt").item()
        """,
    ),
    (
        "md",
        r"""
        The guide row in the loss. The update's forward gives π_θ's log-probs; for an on-policy row the ratio anchor is
        that forward itself (one epoch, one minibatch: ρ = 1 before the step). A guide row was sampled by π_{t+Δ}, and
        its behaviour log-probs are in the cache, so `behavior_clipped` takes ρ = π_θ / π_{t+Δ} per token and clips it
        to [0.8, 1.2] like any other ratio: tokens π_θ already finds likelier than π_{t+Δ} did (ρ > 1.2) stop pushing,
        tokens it finds much less likely (ρ < 1) push with weight ρ. The paper's ablation (Fig. 4c) finds that
        treating the guide as on-policy (`on_policy`, ρ against the update's own forward, what the authors' code
        does) changes almost nothing for NPO.
        """,
    ),
    (
        "code",
        r"""
        logp, _ = backend.logprobs(merged)  # (B, T) under π_t, differentiable
        adv, _ = group_advantages(merged.rewards, merged.group_ids)
        guide, mask = merged.is_guide, merged.mask
        tok = mask[guide] > 0
        rho_b = (logp.detach() - merged.behavior_logprobs)[guide][tok].exp()  # π_t / π_{t+Δ} on the guide tokens
        print(f"guide tokens: {tok.sum().item()}; ratio π_t / π_t+Δ: median {rho_b.median():.2f}, "
              f"outside [0.8, 1.2]: {((rho_b < 0.8) | (rho_b > 1.2)).float().mean():.0%}")  # fmt: skip
        losses = {}
        for treatment in ("behavior_clipped", "on_policy"):
            losses[treatment], _ = policy_loss(logp, logp.detach(), adv, mask, is_guide=guide,
                                               behavior_logprobs=merged.behavior_logprobs, guide_loss=treatment)  # fmt: skip
        print({k: round(v.item(), 4) for k, v in losses.items()})
        assert not torch.allclose(rho_b, torch.ones_like(rho_b))  # π_{t+Δ} is not π_t: the guide rows are off-policy
        assert losses["behavior_clipped"].item() != losses["on_policy"].item()
        no_guides = merged.replace(is_guide=torch.zeros_like(guide))  # the same rows, none of them marked a guide
        same = [policy_loss(logp, logp.detach(), adv, mask, is_guide=no_guides.is_guide,
                            behavior_logprobs=merged.behavior_logprobs, guide_loss=t)[0] for t in losses]  # fmt: skip
        assert same[0].item() == same[1].item()  # the treatments differ only on the guide rows
        """,
    ),
    (
        "md",
        r"""
        ## 3.2 GRPO vs NPO, paired

        `npo_lab.methods.make_method("npo", ...)` builds the `NPO` method; `npo_lab.train.train` runs the loop with
        it: before each step the loop asks the method whether to look ahead (at the scheduled steps), hands it the
        look-ahead's checkpoint (NPO fills its cache from it), and the method guides the replayed steps. Both runs
        start from the same checkpoint with the same seed. A small in-memory logger keeps every metric (`Logger`
        protocol of `npo_lab.metrics`), and the recorder keeps the prompts of every on-policy rollout.
        """,
    ),
    (
        "code",
        r"""
        from npo_lab.experiments.report import lookahead_before
        from npo_lab.methods import make_method
        from npo_lab.metrics import MemoryLogger
        from npo_lab.train import train

        STEPS, SEEDS = 400, (3,)  # SEEDS = (0, 3) adds a typical seed (about 40 s more)
        run = RunConfig(steps=STEPS, eval_every=20)
        results, logs, drawn = {}, {}, {}
        for seed in SEEDS:
            seed_everything(seed)
            backend = ArithmeticBackend(ArithmeticConfig(digits=3), TinyLMConfig(), seed=seed)
            start = backend.save()  # both methods start from this warm-started checkpoint: the comparison is paired
            calls = record_prompts(backend)
            for method in ("grpo", "npo"):
                backend.load(start)
                seed_everything(seed)
                calls.clear()
                state = make_state(backend, grpo, seed=seed)
                algo = make_method(method, MethodConfigs(npo=npo), STEPS, grpo=grpo)
                logs[seed, method] = MemoryLogger()
                r = results[seed, method] = train(state, algo, run, grpo, seed=seed, logger=logs[seed, method])
                drawn[seed, method] = list(calls)
                print(f"seed {seed} {method}: final accuracy {r.final_accuracy:.3f}, look-ahead steps {r.lookahead_steps}")
        """,
    ),
    (
        "md",
        r"""
        What the mechanics guarantee, checked: NPO intervened exactly at the scheduled steps and paid Δ look-ahead
        steps at each; each look-ahead drew the prompts of the segment it then replayed, and, because the rollback is
        exact, NPO trained on GRPO's prompts step for step; the cache of each intervention answered every prompt of
        its segment; and guidance was on exactly in the two replayed segments [0, 20) and [100, 120).
        """,
    ),
    (
        "code",
        r"""
        d = npo.delta
        for seed in SEEDS:
            rn, rg = results[seed, "npo"], results[seed, "grpo"]
            assert rn.interventions == [0, 100]
            assert rn.intervention_costs == [d] * 2 and rn.lookahead_steps == 2 * d
            assert rg.lookahead_steps == 0
            g, n = drawn[seed, "grpo"], drawn[seed, "npo"]  # on-policy rollouts: GRPO 400; NPO 400 + 2 look-aheads of 20
            assert len(g) == STEPS and len(n) == STEPS + 2 * d
            look_0, look_100 = n[:d], n[d + 100 : 2 * d + 100]
            trained = n[d : d + 100] + n[2 * d + 100 :]  # the steps NPO kept, in order
            assert look_0 == trained[:d] and look_100 == trained[100 : 100 + d]  # the replay meets the look-ahead's prompts
            assert trained == g  # and NPO trains on GRPO's prompts, step for step
            for e, seg in zip([e for e in rn.events if e["kind"] == "intervention"], (look_0, look_100)):
                assert e["window"] == [e["step"], e["step"] + d]
                assert e["cache_prompts"] == len({p for step in seg for p in step})
                assert 0 < e["cache_size"] <= e["cache_prompts"]
            guided = logs[seed, "npo"].series("npo/guided")[1]
            assert [i for i, v in enumerate(guided) if v] == list(range(0, d)) + list(range(100, 100 + d))
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
            row[2].plot(s, v, ".", ms=3, color="C3", label="npo: groups given a cached guide row")
            for t in results[seed, "npo"].interventions:
                for ax in (row[0], row[2]):
                    ax.axvspan(t, t + npo.delta, color="C1", alpha=0.12)
            row[0].set_title(f"seed {seed}: eval accuracy vs training steps (shaded: NPO's guided segments)", fontsize=10)
            row[1].set_title(f"seed {seed}: eval accuracy vs training + look-ahead steps", fontsize=10)
            row[2].set_title(f"seed {seed}: silent groups ({k}-step average) and guided groups", fontsize=10)
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
        **Reading the figure.** Left: accuracy per training step, NPO's guided segments shaded; middle: the same
        curves against training plus look-ahead steps, the fair axis for compute (NPO's curve shifts right by Δ
        after each intervention). Right: the fraction of silent groups (identical rewards, no gradient), and the
        fraction of groups that received a cached guide row: each such row turns an all-wrong group into a group
        with signal, which is the whole mechanism, and it acts only inside the two segments. On seed 3 GRPO's
        groups stay mostly silent and its accuracy stays below 0.2; NPO's curve separates from GRPO's only after
        step 200, long after its second guided segment. The two runs differ from the first guided step on (the
        same prompts, other weights, other samples), so one seed cannot say how much of the gap the 40 guided steps
        caused and how much is a lucky escape: that takes many seeds, paired. In section 3.1 compare the printed
        counts of π_{t+20} and π_t: on a stalled seed 20 steps of GRPO barely move the policy, and the near future
        knows little the present does not. docs/benchmarks.md §2, measured before NPO followed the paper's cache
        and segment window, found over 10 seeds that a Δ = 1 guide gains as much as Δ = 20: in this simulation much
        of NPO's effect is *verified best-of-k injection*.

        **Scale up / try.** More seeds (`SEEDS = range(10)`, about 40 s per seed); the earlier reading of this
        toolkit, for comparison: `NPOConfig(window="until_next", guide_source="online")` (guide rows sampled from
        π_{t+Δ} every step until the next intervention); `guide_loss="on_policy"` (the paper's ablation);
        `gate_op="lt"`; `NPOConfig(delta=1)` (the control: almost no look-ahead); over 10 seeds:
        `npo-lab compare --methods grpo,npo,npo:delta=1 --seeds 10` (docs/benchmarks.md).
        """,
    ),
]
