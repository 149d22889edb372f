"""Cells of notebooks/04_autonpo.ipynb (written by scripts/make_notebooks.py)."""

# ruff: noqa: E501 (the cell sources are indented by 8; the notebooks themselves are linted at 119)

FILENAME = "04_autonpo.ipynb"

CELLS = [
    (
        "md",
        r"""
        # 4. AutoNPO: watching its triggers and its choice of Δ

        **CPU recipe.** First the controller alone (`npo_lab.methods.autonpo.AutoNPOController`) on a synthetic reward and
        entropy curve (milliseconds), then AutoNPO training the arithmetic task for 300 steps (seed 0), with its
        signals, triggers and the Q̂, V̂, Ŝ of every candidate Δ read from its events. Expected runtime on 2 CPU cores:
        about **25 s** (measured: 23 s for the whole notebook, up to twice that on a busy machine). Expected result: on
        the synthetic curve the controller fires *bootstrap* at step 1, *entropy collapse* at step 225 and *stagnation*
        at step 350; in the real run (seed 0) it intervenes 3 times (bootstrap at step 1, entropy collapse at steps 226
        and 286), picks Δ* = 40, 10, 10, spends 120 look-ahead steps, and ends at 0.815 eval accuracy.

        AutoNPO (docs/algorithm.md §4, `autonpo.*` fields; the paper names the signals, every threshold is an
        assumption) decides online *when* to look ahead and *how far*:

        - **signals** after each step: the on-policy batch accuracy r_t, smoothed by an EMA
          r̄_t = r̄_{t−1} + α (r_t − r̄_{t−1}), α = `autonpo.smoothing` (0.1), and the mean token entropy H_t;
        - **triggers** before each step, in this order: *bootstrap* (t < `bootstrap_until` = 50 and
          r̄ < `bootstrap_floor` = 0.2); *stagnation* (the least-squares slope of r̄ over the last W =
          `window` = 40 steps is below `stagnation_slope` = 5e-4 per step); *entropy collapse* (the EMA of H is below
          `entropy_fraction` = 0.5 times its mean over the first W steps); none within `cooldown` = 60 steps of the
          last intervention, at most `max_interventions` = 4;
        - **Δ choice**: one look-ahead of max(`candidates`) = 40 steps keeps π_{t+Δ} for Δ ∈ (5, 10, 20, 40); each is
          scored on the most recent prompts of the *mistake pool* (recently failed prompts), and
          Δ* = argmax Q̂(Δ) / V̂(Δ) guides the next `cooldown` steps with NPO's gate and slot merge.
        """,
    ),
    (
        "code",
        r"""
        import matplotlib.pyplot as plt
        import torch

        from npo_lab.config import AutoNPOConfig
        from npo_lab.core.signal import choose_delta
        from npo_lab.methods.autonpo import AutoNPOController
        from npo_lab.utils import seed_everything

        torch.set_num_threads(1)  # these models are tiny: one thread is fastest (and CI has 2 cores)
        seed_everything(0)
        """,
    ),
    (
        "md",
        r"""
        ## 4.1 The controller on a synthetic curve

        A made-up run of 400 steps, designed to show each trigger once: a sparse start (reward 0.05), a steady rise
        to 0.65 at step 300, then a plateau; the entropy collapses from 1.0 to 0.3 between steps 150 and 240 and
        recovers afterwards. Noise of ±0.03 on the reward, as a batch of 128 rows gives. The loop is what
        the `AutoNPO` method does with the controller: `trigger(t)` before a step, `record(t)` when it
        intervenes, `observe(t, reward, entropy)` after the step.
        """,
    ),
    (
        "code",
        r"""
        N = 400
        g = torch.Generator().manual_seed(0)
        noise = 0.03 * torch.randn(N, generator=g)


        def true_reward(t):
            return 0.05 if t < 30 else 0.05 + 0.6 * min(t - 30, 270) / 270


        def true_entropy(t):
            if t < 150:
                return 1.0
            if t < 240:
                return 1.0 - 0.7 * (t - 150) / 90
            return min(0.9, 0.3 + 0.02 * (t - 240))


        rewards = [min(1.0, max(0.0, true_reward(t) + noise[t].item())) for t in range(N)]
        entropies = [true_entropy(t) for t in range(N)]

        cfg = AutoNPOConfig()  # the defaults of docs/algorithm.md §4
        ctrl = AutoNPOController(cfg)
        fired, trace = [], []
        for t in range(N):
            reason = ctrl.trigger(t)
            if reason is not None:
                fired.append((t, reason))
                ctrl.record(t)
            ctrl.observe(t, rewards[t], entropies[t])
            early = sum(ctrl.early_entropy) / len(ctrl.early_entropy)
            trace.append((ctrl.last["smoothed"], ctrl.last["slope"], ctrl.entropy_ema, cfg.entropy_fraction * early))
        print("triggers (step, reason):", fired)
        assert [r for _, r in fired] == ["bootstrap", "entropy_collapse", "stagnation"]
        assert fired[0][0] == 1  # one observation of a sparse start is enough
        assert all(b - a >= cfg.cooldown for (a, _), (b, _) in zip(fired, fired[1:]))
        """,
    ),
    (
        "code",
        r"""
        smoothed, slopes, ent_ema, ent_limit = (list(x) for x in zip(*trace))
        fig, axes = plt.subplots(1, 3, figsize=(15, 3.8))
        axes[0].plot(rewards, color="C0", alpha=0.35, label="on-policy reward r_t")
        axes[0].plot(smoothed, color="C0", label="EMA r̄_t")
        axes[0].axhline(cfg.bootstrap_floor, color="gray", ls="--", lw=0.8, label="bootstrap_floor")
        axes[0].set_ylabel("reward")
        axes[1].plot(slopes, color="C1", label=f"slope of r̄ over the last {cfg.window} steps")
        axes[1].axhline(cfg.stagnation_slope, color="gray", ls="--", lw=0.8, label="stagnation_slope")
        axes[1].set_ylabel("reward per step")
        axes[2].plot(entropies, color="C2", alpha=0.35, label="entropy H_t")
        axes[2].plot(ent_ema, color="C2", label="EMA of H")
        axes[2].plot(ent_limit, color="gray", ls="--", lw=0.8, label="entropy_fraction x early mean")
        axes[2].set_ylabel("entropy (nats)")
        for ax in axes:
            for t, reason in fired:
                ax.axvline(t, color="C3", ls=":", lw=1)
                ax.annotate(reason, (t, ax.get_ylim()[1]), fontsize=7, rotation=90, va="top", ha="right", color="C3")
            ax.set_xlabel("training step")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7, loc="center right")
        axes[0].set_title("smoothed reward (bootstrap trigger)")
        axes[1].set_title("reward slope (stagnation trigger)")
        axes[2].set_title("entropy (collapse trigger)")
        fig.suptitle("AutoNPOController on a synthetic curve; red: triggers")
        fig.tight_layout()
        plt.show()
        """,
    ),
    (
        "md",
        r"""
        The Δ choice is one pure function: `choose_delta(deltas, q, v)` returns Δ* = argmax Q̂/V̂ (ties: the smaller
        Δ, the cheaper look-ahead) and every candidate's Ŝ. A far candidate that solves more failed prompts can still
        lose to a nearer one whose rows are less off-policy:
        """,
    ),
    (
        "code",
        r"""
        best, s = choose_delta([5, 10, 20, 40], q=[0.30, 0.36, 0.40, 0.52], v=[1.02, 1.05, 1.30, 2.10])
        print("S-hat:", [round(x, 3) for x in s], " Delta* =", best)
        assert best == 10
        """,
    ),
    (
        "md",
        r"""
        ## 4.2 AutoNPO on the arithmetic task

        `make_method("autonpo", ...)` builds `npo_lab.methods.AutoNPO`: the controller, the mistake pool, the
        look-ahead over the candidates and the scoring (`npo_lab.train.probe.measure_sources`). To fit the time budget the
        candidates are scored on the 64 most recent pool prompts (`autonpo.q_prompts`, default 128); everything
        else is the default. The logger keeps every metric; the method's events hold every decision.
        """,
    ),
    (
        "code",
        r"""
        from npo_lab.envs.arithmetic_backend import ArithmeticBackend
        from npo_lab.envs.config import TinyLMConfig

        from npo_lab.config import GRPOConfig, MethodConfigs, NPOConfig, RunConfig
        from npo_lab.methods import make_method
        from npo_lab.metrics import MemoryLogger
        from npo_lab.tasks.arithmetic import ArithmeticConfig
        from npo_lab.train import make_state, train

        SEED, STEPS = 0, 300
        seed_everything(SEED)
        backend = ArithmeticBackend(ArithmeticConfig(digits=3), TinyLMConfig(), seed=SEED)
        grpo = GRPOConfig()
        auto = AutoNPOConfig(q_prompts=64)
        state = make_state(backend, grpo, seed=SEED)
        autonpo = make_method("autonpo", MethodConfigs(npo=NPOConfig(), autonpo=auto), STEPS, grpo=grpo)
        log = MemoryLogger()
        result = train(state, autonpo, RunConfig(steps=STEPS, eval_every=20), grpo, seed=SEED, logger=log)
        print(
            f"final accuracy {result.final_accuracy:.3f}; interventions at {result.interventions}; "
            f"look-ahead steps {result.lookahead_steps}; {result.wall_s:.1f} s"
        )
        for e in result.events:
            print({k: v for k, v in e.items() if k != "candidates"})
        """,
    ),
    (
        "md",
        r"""
        What the events must satisfy, checked: every intervention paid max(candidates) look-ahead steps; Δ* is the
        argmax of the candidates' Ŝ as recorded; interventions are at least a cooldown apart and at most
        `max_interventions`.
        """,
    ),
    (
        "code",
        r"""
        interventions = [e for e in result.events if e["kind"] == "intervention"]
        assert result.intervention_costs == [max(auto.candidates)] * len(interventions)
        assert result.lookahead_steps == max(auto.candidates) * len(interventions)
        assert len(interventions) <= auto.max_interventions
        assert all(b - a >= auto.cooldown for a, b in zip(result.interventions, result.interventions[1:]))
        for e in interventions:
            ds = sorted(e["candidates"])
            best, s = choose_delta(ds, [e["candidates"][d]["q"] for d in ds], [e["candidates"][d]["v"] for d in ds])
            assert best == e["delta"]
            print(
                f"step {e['step']:3d} ({e['reason']}, pool {e['pool']}): "
                + ", ".join(
                    f"Δ={d}: Q̂ {e['candidates'][d]['q']:.2f} V̂ {e['candidates'][d]['v']:.2f} Ŝ {x:.3f}" for d, x in zip(ds, s)
                )
                + f"  ->  Δ* = {best}"
            )
        """,
    ),
    (
        "code",
        r"""
        fig, axes = plt.subplots(2, 2, figsize=(13, 7.5))
        s, r = log.series("reward/on_policy_mean")
        s_ema, ema = log.series("autonpo/smoothed_reward")  # the controller's EMA, as it stood before each step
        assert abs(ema[-1] - (ema[-2] + auto.smoothing * (r[-2] - ema[-2]))) < 1e-9  # r̄_t = r̄_{t-1} + α (r_t - r̄_{t-1})
        ax = axes[0, 0]
        ax.plot(s, r, color="C0", alpha=0.3, label="on-policy reward")
        ax.plot(s_ema, ema, color="C0", label="autonpo/smoothed_reward (what the controller reads)")
        ax.plot(*zip(*result.evals), "o-", ms=3, color="k", label="eval accuracy")
        ax.set_ylabel("accuracy")
        ax.set_title("reward and eval accuracy")
        ax = axes[0, 1]
        ax.plot(*log.series("autonpo/reward_slope"), color="C1", label="autonpo/reward_slope")
        ax.axhline(auto.stagnation_slope, color="gray", ls="--", lw=0.8, label="stagnation_slope")
        ax.set_ylabel("reward per step")
        ax.set_title("slope of the smoothed reward")
        ax = axes[1, 0]
        s_ent, h = log.series("policy/entropy")
        early = sum(h[: auto.window]) / auto.window
        ax.plot(s_ent, h, color="C2", alpha=0.3, label="policy/entropy (all rows, guide rows included)")
        ax.plot(*log.series("autonpo/entropy_ema"), color="C2", label="autonpo/entropy_ema (on-policy rows, EMA)")
        ax.axhline(auto.entropy_fraction * early, color="gray", ls="--", lw=0.8, label="≈ entropy_fraction x early mean")
        ax.set_ylabel("nats")
        ax.set_title("entropy")
        for ax in (axes[0, 0], axes[0, 1], axes[1, 0]):
            for e in interventions:
                ax.axvline(e["step"], color="C3", ls=":", lw=1)
                ax.annotate(
                    f"{e['reason']}, Δ*={e['delta']}",
                    (e["step"], ax.get_ylim()[1]),
                    fontsize=7,
                    rotation=90,
                    va="top",
                    ha="right",
                    color="C3",
                )
            ax.set_xlabel("training step")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7, loc="lower right")
        ax = axes[1, 1]
        width = 0.8 / max(len(interventions), 1)
        for i, e in enumerate(interventions):
            ds = sorted(e["candidates"])
            xs = [j + i * width for j in range(len(ds))]
            ax.bar(
                xs,
                [e["candidates"][d]["s"] for d in ds],
                width,
                color=f"C{i}",
                label=f"step {e['step']} ({e['reason']}): Δ* = {e['delta']}",
            )
        ax.set_xticks([j + 0.4 - width / 2 for j in range(len(auto.candidates))], [f"Δ = {d}" for d in auto.candidates])
        ax.set_ylabel("Ŝ = Q̂ / V̂")
        ax.set_ylim(0, 1.3 * max(e["candidates"][d]["s"] for e in interventions for d in e["candidates"]))
        ax.set_title("candidate scores at each intervention")
        ax.grid(alpha=0.3, axis="y")
        ax.legend(fontsize=7, loc="upper left")
        fig.suptitle(f"AutoNPO on the arithmetic task (seed {SEED}); red: interventions")
        fig.tight_layout()
        plt.show()
        """,
    ),
    (
        "md",
        r"""
        **Reading the figure.** The triggers fire where the signals cross their thresholds (red lines). The signals are
        logged as the controller reads them: `autonpo/smoothed_reward` and `autonpo/entropy_ema`, the latter over
        on-policy rows only (`policy/entropy` includes guide rows). The
        bars show why the Δ choice carries little information in this simulation (docs/benchmarks.md §3): late in
        training the pool prompts are ones π_t solves sometimes, so every candidate solves most of them (Q̂ saturates) and
        V̂ stays near 1; the Ŝ of the candidates differ by about their sampling noise (±0.03 on Q̂ with 128 prompts,
        more with 64), and Δ* follows the noise. Each intervention costs 40 look-ahead steps plus the scoring rollouts
        (`autonpo/scoring_rows`): over 10 seeds AutoNPO beats GRPO but not NPO.

        **Try.** `AutoNPOConfig(candidates=(2, 5, 10))` (the cheapest AutoNPO of docs/benchmarks.md §5),
        `q_samples=2` (Q̂ saturates less), `v_estimator="log_ratio"`, `max_interventions=2`; on the synthetic curve,
        change `cooldown`, `window` or `stagnation_slope` and watch the triggers move.
        """,
    ),
]
