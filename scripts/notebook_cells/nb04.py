"""Cells of notebooks/04_autonpo.ipynb (written by scripts/make_notebooks.py)."""

# ruff: noqa: E501 (the cell sources are indented by 8; the notebooks themselves are linted at 119)

FILENAME = "04_autonpo.ipynb"

CELLS = [
    (
        "md",
        r"""
        # 4. AutoNPO: the present teaches its past

        **CPU recipe.** First the controller alone (`npo_lab.methods.controller.AutoNPOController`) on synthetic
        reward and entropy curves (milliseconds), then AutoNPO training the arithmetic task for 200 steps (seed 0):
        its warning, the probe of the mistake pool, the pool slices, the choice of Δ* by Q̂/V̂, the rollback and the
        replay, all read from its events and metrics; last, the earlier look-ahead reading of AutoNPO on the same
        start for comparison. Expected runtime on 2 CPU cores: about **55 s** (measured with other work loading the
        machine, about 40 s of CPU time; notebooks/README.md). Expected result (seed 0): on the synthetic curves the
        warning fires at steps 194 and 254 of the run whose reward plateaus while its entropy falls, and never in the
        two others; on the task it fires at steps 25 and 90, chooses Δ* = 5 and then Δ* = 20, rolls back to steps 20
        and 70 (25 discarded steps), and ends at 0.667 final accuracy (mean of the last 3 evaluations); the look-ahead
        reading intervenes at steps 21 and 94, pays 40 look-ahead steps, and ends at 0.667 too.

        **AutoNPO as the paper describes it** (two close readings; docs/algorithm.md §4, `autonpo.*` fields,
        `autonpo.mode = "retrospective"`, the default). No look-ahead: *when the current model can already solve
        problems it failed earlier, let it go back and teach its past self.*

        - **Mistake pool**: after every step, each prompt whose on-policy group has p̂ ≤ 0.6 enters the pool with the
          step it failed at (`autonpo.pool_size`; a prompt leaves when a later group of it passes the gate).
        - **Warning** (`AutoNPOController.warning`): the smoothed reward r̄ (EMA, `autonpo.smoothing`) stagnates, its
          least-squares slope over the last `autonpo.window` steps below `autonpo.stagnation_slope`, **and** the
          entropy keeps falling, the slope of its EMA below `autonpo.entropy_slope`; tested every
          `autonpo.snapshot_every` steps, at most `max_interventions` times, `cooldown` steps apart.
        - **Confirmation probe**: the current policy π_t answers the pool prompts (`autonpo.q_samples` answers each).
        - **Slices**: for each candidate distance Δ ∈ `autonpo.candidates`, B_Δ = the pool prompts that failed in
          [t − Δ, t − Δ_prev) (Δ_prev the next shorter candidate).
        - **Score**: Q̂(Δ) = π_t's pass rate on B_Δ; V̂(Δ) = exp(β · KL), the mean per-token KL between π_t and the
          snapshot π_{t−Δ} on π_t's verified answers (`autonpo.kl_beta` = β); Δ* = argmax Q̂/V̂.
        - **Rollback and replay**: π_t's verified answers to B_Δ* are cached; the loop restores the snapshot of step
          t − Δ* exactly (a ring of snapshots every `snapshot_every` steps: weights, optimizer, RNGs, data cursor),
          rewinds the logs, and replays [t − Δ*, t), replacing the last slot of a gated group with π_t's answer
          *only* for the cached mistake-pool prompts. The Δ* discarded steps are the price, counted as extra steps.

        The paper (Table 1, Qwen3-VL-8B, average over 8 benchmarks): base model 57.88, GRPO 60.25, NPO 62.84,
        AutoNPO 63.15 (+2.90 over GRPO). The paper gives none of the thresholds; every value here is an assumption.
        """,
    ),
    (
        "code",
        r"""
        import matplotlib.pyplot as plt
        import torch

        from npo_lab.config import AutoNPOConfig
        from npo_lab.core.signal import choose_delta
        from npo_lab.methods.controller import AutoNPOController
        from npo_lab.utils import seed_everything

        torch.set_num_threads(1)  # these models are tiny: one thread is fastest (and CI has 2 cores)
        seed_everything(0)
        """,
    ),
    (
        "md",
        r"""
        ## 4.1 The warning needs both signals

        Three made-up runs of 300 steps with the default thresholds (`AutoNPOConfig()`: window 40, stagnation slope
        5e-4 per step, entropy slope 0, cooldown 60, at most 4 interventions). The reward rises from 0.05 to 0.6 by
        step 150 and then stays flat (noise ±0.03, as a batch of 128 rows gives), or keeps rising. The entropy either
        keeps falling all along or stops falling when the reward stops rising. The loop is what retrospective AutoNPO
        does with the controller: `warning(t)` before a step, `record(t)` when it intervenes, `observe(t, reward,
        entropy)` after the step.
        """,
    ),
    (
        "code",
        r"""
        N = 300
        g = torch.Generator().manual_seed(0)
        noise = (0.03 * torch.randn(N, generator=g)).tolist()


        def plateau(t):
            return 0.05 + 0.55 * min(t, 150) / 150


        def rising(t):
            return 0.05 + 0.55 * t / 300


        def falling(t):
            return 1.0 - 0.6 * t / 300


        def falls_then_recovers(t):
            return falling(t) if t < 150 else falling(150) + 0.002 * (t - 150)


        cases = {  # name: (reward curve, entropy curve)
            "plateau, entropy falling": (plateau, falling),
            "plateau, entropy recovering": (plateau, falls_then_recovers),
            "reward rising, entropy falling": (rising, falling),
        }
        cfg = AutoNPOConfig()
        fired, traces = {}, {}
        for name, (reward, entropy) in cases.items():
            ctrl, fired[name], traces[name] = AutoNPOController(cfg), [], []
            for t in range(N):
                if ctrl.warning(t) is not None:
                    fired[name].append(t)
                    ctrl.record(t)
                r_t = reward(t) + noise[t]
                ctrl.observe(t, r_t, entropy(t))
                traces[name].append((r_t, ctrl.smoothed[-1], ctrl.reward_slope(), entropy(t), ctrl.entropy_slope()))
            print(f"{name}: warnings at {fired[name]}")
        assert fired["plateau, entropy falling"] and min(fired["plateau, entropy falling"]) > 150  # only on the plateau
        assert fired["plateau, entropy recovering"] == []  # stagnation alone is not enough
        assert fired["reward rising, entropy falling"] == []  # nor is a falling entropy alone
        """,
    ),
    (
        "code",
        r"""
        fig, axes = plt.subplots(2, 3, figsize=(15, 6.5), sharex=True)
        for col, name in zip(axes.T, cases):
            r, ema, r_slope, h, h_slope = (list(x) for x in zip(*traces[name]))
            col[0].plot(r, color="C0", alpha=0.35, label="reward r_t")
            col[0].plot(ema, color="C0", label="EMA r̄_t")
            col[0].plot(h, color="C2", label="entropy H_t")
            col[0].set_title(name, fontsize=10)
            col[1].plot(r_slope, color="C0", label=f"slope of r̄ over {cfg.window} steps")
            col[1].plot(h_slope, color="C2", label="slope of the entropy EMA")
            col[1].axhline(cfg.stagnation_slope, color="C0", ls="--", lw=0.8, label="stagnation_slope")
            col[1].axhline(cfg.entropy_slope, color="C2", ls=":", lw=0.8, label="entropy_slope")
            col[1].set_ylim(-0.006, 0.006)
            col[1].set_xlabel("training step")
            for ax in col:
                for t in fired[name]:
                    ax.axvline(t, color="C3", lw=1)
                ax.grid(alpha=0.3)
                ax.legend(fontsize=7)
        fig.suptitle("AutoNPO's warning: reward stagnating AND entropy falling (red: warnings)")
        fig.tight_layout()
        plt.show()
        """,
    ),
    (
        "md",
        r"""
        The Δ choice is one pure function: `choose_delta(deltas, q, v)` returns Δ* = argmax Q̂/V̂ (ties: the smaller
        Δ, the cheaper rollback) and every candidate's Ŝ. Going further back reaches more of the prompts π_t has
        learned to solve since (Q̂ grows), but the past policy is further from π_t (V̂ = exp(β · KL) grows too):
        """,
    ),
    (
        "code",
        r"""
        best, s = choose_delta([5, 10, 20], q=[0.30, 0.42, 0.45], v=[1.02, 1.06, 1.30])
        print("S-hat:", [round(x, 3) for x in s], " Delta* =", best)
        assert best == 10
        """,
    ),
    (
        "md",
        r"""
        ## 4.2 Retrospective AutoNPO on the arithmetic task

        `make_method("autonpo", ...)` builds `npo_lab.methods.AutoNPO`. **The thresholds are lenient on purpose, so
        that interventions happen within this notebook's 200 steps**: a window of 20 steps, a stagnation slope of
        2e-3 per step (the default 5e-4 waits for a truly flat reward), snapshots every 5 steps and candidates
        Δ ∈ (5, 10, 20), at most 2 interventions 60 steps apart. The probe reads up to 256 pool prompts with 4 answers
        each (`q_prompts`, `q_samples`), enough to reach every slice. A recorder around `backend.rollout` keeps the
        prompts of every training rollout, and an evaluation hook keeps every evaluation, those of the steps a
        rollback discards included; the `MemoryLogger` keeps the trajectory the run keeps.
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

        SEED, STEPS = 0, 200
        seed_everything(SEED)
        backend = ArithmeticBackend(ArithmeticConfig(digits=3), TinyLMConfig(), seed=SEED)
        start = backend.save()  # section 4.3 starts the look-ahead reading from here
        grpo = GRPOConfig()
        lenient = dict(window=20, stagnation_slope=2e-3, entropy_slope=0.0, cooldown=60, max_interventions=2)
        auto = AutoNPOConfig(snapshot_every=5, candidates=(5, 10, 20), q_prompts=256, q_samples=4, **lenient)

        rollout, drawn = backend.rollout, []  # the prompts of every training rollout (G answers each)


        def recording(prompt_ids, n, policy=None):
            if policy is None and n == grpo.group_size:
                drawn.append(list(prompt_ids))
            return rollout(prompt_ids, n, policy)


        backend.rollout = recording
        state = make_state(backend, grpo, seed=SEED)
        every_eval = []  # (step, accuracy) of every evaluation, discarded ones included


        def evaluate():
            m = backend.evaluate()
            every_eval.append((state.step, m["eval/accuracy"]))
            return m


        autonpo = make_method("autonpo", MethodConfigs(npo=NPOConfig(), autonpo=auto), STEPS, grpo=grpo)
        log = MemoryLogger()
        result = train(state, autonpo, RunConfig(steps=STEPS, eval_every=20), grpo, evaluate, seed=SEED, logger=log)
        backend.rollout = rollout
        events = [e for e in result.events if e["kind"] == "intervention"]
        print(f"final accuracy {result.final_accuracy:.3f}; rolled back to {result.interventions}, discarding "
              f"{result.intervention_costs} steps; {result.wall_s:.1f} s")  # fmt: skip
        for e in events:
            print(f"step {e['step']}: warning (reward slope {e['reward_slope']:.4f}, entropy slope "
                  f"{e['entropy_slope']:.4f}); pool {e['pool']}, probed {e['probe_prompts']} prompts x "
                  f"{auto.q_samples} = {e['probe_rows']} rows")  # fmt: skip
            for d, c in sorted(e["candidates"].items()):
                print(f"    Δ = {d:2d}: slice B_Δ {int(c['slice']):3d} prompts, {int(c['correct_rows']):3d} verified answers, "
                      f"Q̂ {c['q']:.3f}  V̂ {c['v']:.3f}  Ŝ {c['s']:.3f}")  # fmt: skip
            print(f"    -> Δ* = {e['delta']}: roll back to step {e['step'] - e['delta']} and replay it")
        """,
    ),
    (
        "md",
        r"""
        What the mechanics guarantee, checked on this run: each intervention's Δ* is the argmax of the recorded Ŝ; the
        run rolled back to t − Δ* and counted exactly the Δ* discarded steps (`intervention_costs`, and one
        `lookahead/reward/on_policy_mean` entry each); the replay drew the prompts of the first pass, step for step;
        guidance was on exactly in the replayed segments; π_t's cache holds one verified answer for each prompt of the
        chosen slice π_t solved (Q̂ · |B_Δ*| of them); and the kept log, which the loop rewinds through the logger's
        `mark` / `rewind` (a `CSVLogger` writing metrics.csv has them too), has every training step once.
        """,
    ),
    (
        "code",
        r"""
        assert 1 <= len(events) <= auto.max_interventions
        kept, first_pass, used = [], [], 0  # the prompts of the kept steps and of each discarded segment
        for e in events:
            t, d = e["step"], e["delta"]
            ds = sorted(e["candidates"])
            best, _ = choose_delta(ds, [e["candidates"][x]["q"] for x in ds], [e["candidates"][x]["v"] for x in ds])
            assert best == d and d in auto.candidates and (t - d) % auto.snapshot_every == 0
            n = t - len(kept)  # steps trained since the start or the last rollback
            kept, used = kept + drawn[used : used + n], used + n
            first_pass.append(kept[t - d :])
            kept = kept[: t - d]  # the rollback
        kept += drawn[used:]
        assert len(kept) == STEPS and len(drawn) == STEPS + sum(result.intervention_costs)
        for e, discarded in zip(events, first_pass):
            t, d = e["step"], e["delta"]
            assert kept[t - d : t] == discarded  # the replay met the first pass's prompts, step for step
        assert result.interventions == [e["step"] - e["delta"] for e in events]
        assert result.intervention_costs == [e["delta"] for e in events] == [len(f) for f in first_pass]
        assert len(log.series("lookahead/reward/on_policy_mean")[1]) == sum(result.intervention_costs)
        steps, _ = log.series("reward/on_policy_mean")
        assert steps == list(range(1, STEPS + 1))  # every training step once, in order: the kept trajectory
        guided = log.series("npo/guided")[1]
        replayed = sorted(s for e in events for s in range(e["step"] - e["delta"], e["step"]))
        assert [s for s, v in enumerate(guided) if v] == replayed
        cache_size = log.series("autonpo/cache_size")[1]  # logged with the first replayed step
        for e, n in zip(events, cache_size):  # one verified answer of π_t per prompt of B_Δ* it solved: Q̂ x |B_Δ*|
            chosen = e["candidates"][e["delta"]]
            assert n == round(chosen["q"] * chosen["slice"]) and n <= chosen["correct_rows"]
        print("replayed steps:", [(e["step"] - e["delta"], e["step"]) for e in events], "cache sizes:", cache_size)
        """,
    ),
    (
        "code",
        r"""
        fig, axes = plt.subplots(1, 3, figsize=(16, 4.5))
        k = 5  # moving average over 5 steps


        def smooth(v):
            return [sum(v[max(0, j - k + 1) : j + 1]) / len(v[max(0, j - k + 1) : j + 1]) for j in range(len(v))]


        ax = axes[0]
        s, r = log.series("reward/on_policy_mean")
        ax.plot([x - 1 for x in s], smooth(r), color="C0", label="on-policy reward, kept trajectory (5-step avg)")
        la = log.series("lookahead/reward/on_policy_mean")[1]
        j = 0
        for n_e, e in enumerate(events):
            t, d = e["step"], e["delta"]
            first = "discarded first pass" if n_e == 0 else None
            ax.plot(range(t - d, t), smooth(la[j : j + d]), color="C7", ls="--", label=first)
            j += d
            ax.axvspan(t - d, t, color="C1", alpha=0.15, label="replayed segment (guided)" if n_e == 0 else None)
            ax.annotate("", xy=(t - d, 0.9 * max(r)), xytext=(t, 0.9 * max(r)), arrowprops=dict(arrowstyle="->", color="C3"))
            ax.text(t, 0.92 * max(r), f"t={t}: Δ*={d}", color="C3", fontsize=8)
        ax.plot(*zip(*result.evals), "o-", ms=3, color="k", label="eval accuracy (kept)")
        gone = [(x, a) for x, a in every_eval if (x, a) not in result.evals]
        if gone:
            ax.plot(*zip(*gone), "o", ms=5, mfc="none", color="C7", label="eval accuracy (discarded)")
        ax.set_xlabel("training step")
        ax.set_ylabel("accuracy")
        ax.set_title("reward and eval accuracy; red arrows: rollbacks", fontsize=10)
        ax.legend(fontsize=7)
        ax = axes[1]
        ax.plot(*log.series("autonpo/reward_slope"), color="C0", label="reward slope (of r̄)")
        ax.plot(*log.series("autonpo/entropy_slope"), color="C2", label="entropy slope (of its EMA)")
        ax.axhline(auto.stagnation_slope, color="C0", ls="--", lw=0.8, label="stagnation_slope")
        ax.axhline(auto.entropy_slope, color="C2", ls=":", lw=0.8, label="entropy_slope")
        for e in events:
            ax.axvline(e["step"], color="C3", lw=1)
        ax.set_xlabel("training step (kept trajectory)")
        ax.set_title("the warning's two signals, as the controller read them", fontsize=10)
        ax.legend(fontsize=7)
        ax = axes[2]
        width = 0.8 / len(events)
        for n_e, e in enumerate(events):
            ds = sorted(e["candidates"])
            xs = [x + n_e * width for x in range(len(ds))]
            ax.bar(xs, [e["candidates"][d]["s"] for d in ds], width, color=f"C{n_e}",
                   label=f"t = {e['step']}: Δ* = {e['delta']}")  # fmt: skip
            for x, d in zip(xs, ds):
                c = e["candidates"][d]
                ax.text(x, c["s"], f"Q̂ {c['q']:.2f}\nV̂ {c['v']:.2f}", ha="center", va="bottom", fontsize=6)
        ax.set_xticks([x + 0.4 - width / 2 for x in range(len(auto.candidates))], [f"Δ = {d}" for d in auto.candidates])
        ax.set_ylabel("Ŝ = Q̂ / V̂")
        ax.set_ylim(0, 1.4 * max(c["s"] for e in events for c in e["candidates"].values()))
        ax.set_title("the candidates at each warning", fontsize=10)
        ax.legend(fontsize=7, loc="upper left")
        for a in axes:
            a.grid(alpha=0.3)
        fig.suptitle(f"Retrospective AutoNPO on the arithmetic task (seed {SEED})")
        fig.tight_layout()
        plt.show()
        """,
    ),
    (
        "md",
        r"""
        **Reading the figure.** Left: the kept trajectory (solid), the first pass each rollback discarded (dashed
        grey, its evaluations as hollow circles), and the replayed segments (shaded), in which failing groups of
        mistake-pool prompts get π_t's verified answer: the run goes back in time, meets the same prompts again, and
        this time hears the answers its future found. Middle: at each warning both signals are below their
        thresholds (checked in the next cell). Right: Ŝ of each candidate with its Q̂ and V̂. In this simulation V̂
        stays close to 1 (5 to 20 steps of GRPO move this small policy little), so Δ* is decided by Q̂, whose
        sampling noise (4 answers for each of 70 to 110 slice prompts) is about the size of the differences between
        candidates: compare the printed Ŝ values.

        ## 4.3 For comparison: the look-ahead reading

        `AutoNPOConfig(mode="lookahead")` keeps this toolkit's earlier reading: at a trigger (reward stagnation *or*
        entropy collapse; the early-bootstrap trigger is switched off here to match the warning above), look ahead
        max(candidates) = 20 steps, score each candidate checkpoint π_{t+Δ} on the pool, and guide the next
        `cooldown` steps from π_{t+Δ*} with rows sampled online. Same start, same lenient thresholds.
        """,
    ),
    (
        "code",
        r"""
        backend.load(start)
        seed_everything(SEED)
        state = make_state(backend, grpo, seed=SEED)
        ahead = AutoNPOConfig(mode="lookahead", candidates=(5, 10, 20), q_prompts=64, q_samples=4, bootstrap_until=0,
                              **lenient)  # fmt: skip
        la_method = make_method("autonpo", MethodConfigs(npo=NPOConfig(), autonpo=ahead), STEPS, grpo=grpo)
        la_result = train(state, la_method, RunConfig(steps=STEPS, eval_every=20), grpo, seed=SEED, logger=MemoryLogger())
        for name, r in (("retrospective", result), ("lookahead", la_result)):
            print(f"{name:>13}: final accuracy {r.final_accuracy:.3f}, interventions at {r.interventions}, "
                  f"extra steps {r.lookahead_steps}, {r.lookahead_s:.1f} s of them")  # fmt: skip
        la_events = [e for e in la_result.events if e["kind"] == "intervention"]
        for e in events:  # the figure above: both signals below their thresholds at each warning
            assert e["reward_slope"] < auto.stagnation_slope and e["entropy_slope"] < auto.entropy_slope
        assert la_result.intervention_costs == [max(ahead.candidates)] * len(la_events)  # a look-ahead pays max(candidates)
        assert result.lookahead_steps == sum(e["delta"] for e in events)  # a rollback pays Δ*
        """,
    ),
    (
        "code",
        r"""
        from npo_lab.experiments.report import lookahead_before

        fig, axes = plt.subplots(1, 2, figsize=(12, 4))
        for name, r, c in (("retrospective", result, "C1"), ("lookahead", la_result, "C2")):
            steps, accs = zip(*r.evals)
            costs = {"interventions": r.interventions, "intervention_costs": r.intervention_costs}
            axes[0].plot(steps, accs, "o-", ms=3, color=c, label=name)
            axes[1].plot([s + lookahead_before(costs, s) for s in steps], accs, "o-", ms=3, color=c, label=name)
        axes[0].set_xlabel("training step")
        axes[1].set_xlabel("training steps + extra steps (look-ahead or discarded)")
        for ax in axes:
            ax.set_ylabel("greedy accuracy, held-out")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
        fig.suptitle(f"AutoNPO, two readings, one seed ({SEED}): mechanics, not a benchmark")
        fig.tight_layout()
        plt.show()
        """,
    ),
    (
        "md",
        r"""
        One seed compares nothing: over seeds, `npo-lab compare --methods grpo,npo,autonpo,autonpo:mode=lookahead`
        (docs/benchmarks.md). What the two readings cost is structural, and checked above: the look-ahead reading
        pays max(candidates) training steps per intervention whatever it chooses, plus scoring every candidate
        checkpoint; the retrospective reading pays the Δ* steps it throws away, plus one probe of π_t.

        **Try.** The default thresholds (`AutoNPOConfig()`), which wait for a truly flat reward: on 200 steps of this
        task they rarely fire; `slice="since"` (B_Δ = everything that failed since t − Δ); `kl_beta=5.0` (V̂ punishes
        distance harder: smaller Δ*); `q_prompts=64` (the probe reaches only the newest slices); on the synthetic
        curves, change `window`, `stagnation_slope` or `entropy_slope` and watch the warnings move.
        """,
    ),
]
