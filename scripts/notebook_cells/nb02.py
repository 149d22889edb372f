"""Cells of notebooks/02_quality_vs_variance.ipynb (written by scripts/make_notebooks.py)."""

# ruff: noqa: E501 (the cell sources are indented by 8; the notebooks themselves are linted at 119)

FILENAME = "02_quality_vs_variance.ipynb"

CELLS = [
    (
        "md",
        r"""
        # 2. Quality vs variance: Q, V and S of a teacher, of replay, and of the near future

        **CPU recipe.** Part A computes Q, V and S *exactly* on the analytic toy (`npo_lab.experiments.toy`: a tabular softmax
        policy, milliseconds). Part B *measures* them with the estimators AutoNPO uses (`npo_lab.train.probe`, `npo_lab.experiments.qvs`) along a short
        GRPO run of the arithmetic simulation (warm start, an external teacher trained for 600 supervised steps, 100
        GRPO steps, two measurements). Expected runtime on 2 CPU cores: about **25 s** (measured: 22 s for the whole
        notebook, up to twice that on a busy machine). Expected result: on the toy, S(Δ) has an interior maximum whose
        place depends on how V is measured (χ²: Δ* = 22; `is_variance`: a flat top with Δ* = 102; `log_ratio`: Δ* = 2),
        the past always scores below the present and the future; in the simulation (seed 0) the teacher solves every
        failed prompt (Q̂ = 1) while the near future solves 0.50-0.58 (Δ = 1 to 40) at step 100, and the teacher's V̂
        is 13-15 by `log_ratio` against at most 1.64 for every other source.

        The definitions (docs/algorithm.md §3, the paper's, with our estimators since its Appendix B is not public):

        - **Q** of a source: among the prompts the current policy π_t *fails* (group accuracy below the gate
          `npo.gate` = 0.6), the fraction for which k samples of the source contain a verified-correct one;
        - **V**: the variance cost of learning from the source's correct rows under π_t, from the per-token weight
          w = π_t(y) / π_src(y); `autonpo.v_estimator` picks the formula: `is_variance` 1 + Var(w),
          `chi2` 1 + E[w²] − 1, `log_ratio` 1 + E[(log w)²];
        - **S = Q / V**, the effective learning signal.

        The paper's picture: an external teacher has high Q but high V; replaying the run's past has low V but low
        Q; the near future π_{t+Δ} balances both, and S(Δ) peaks at an interior Δ.
        """,
    ),
    (
        "code",
        r"""
        import matplotlib.pyplot as plt
        import torch

        from npo_lab.experiments import toy
        from npo_lab.utils import seed_everything

        torch.set_num_threads(1)  # these models are tiny: one thread is fastest (and CI has 2 cores)
        seed_everything(0)
        """,
    ),
    (
        "md",
        r"""
        ## Part A: exact values on the analytic toy

        `toy.make_toy()`: 16 prompts, 8 answers, 2 of them correct per prompt, a weak initial policy (every prompt
        fails the gate). `toy.exact_gradient_path` runs noise-free gradient ascent on the expected reward: step t of
        the path is the run's present, t + Δ its near future (NPO's guide), t − Δ a past checkpoint (what replay
        draws from). `toy.qvs_curve` returns exact Q, V, S for a grid of Δ (k = 8 samples per failed prompt).
        """,
    ),
    (
        "code",
        r"""
        theta0, correct = toy.make_toy()
        path = toy.exact_gradient_path(theta0, correct, steps=200, lr=16.0)
        T, K = 20, 8  # the present is step 20 of the path
        deltas = list(range(-T, 181))  # -20 .. -1: the past (replay), 0: the present itself, 1 .. 180: the future
        estimators = ("chi2", "is_variance", "log_ratio")
        curves = {e: toy.qvs_curve(path, T, deltas, correct, k=K, estimator=e) for e in estimators}
        print(
            f"expected reward J at step 0 / {T} / 200:", [round(toy.expected_reward(path[s], correct), 3) for s in (0, T, 200)]
        )
        print(f"failed prompts at step {T}: {len(toy.failed_prompts(path[T], correct))} of {correct.shape[0]}")

        future = [d for d in deltas if d >= 1]
        best = {e: toy.qvs_curve(path, T, future, correct, k=K, estimator=e).best_delta for e in estimators}
        print("Delta* = argmax S over the future, per V estimator:", best)
        """,
    ),
    (
        "md",
        r"""
        The claims the figure below makes, checked exactly:

        - Q grows with Δ: the past solves fewer of today's failures than the present, the future more.
        - For every V estimator, the best future Δ* is interior: S rises from Δ = 1 and falls again before Δ = 180.
        - Every past checkpoint has a lower S than the present (Δ = 0) and than the best future.
        """,
    ),
    (
        "code",
        r"""
        q = curves["chi2"].q  # Q does not depend on the V estimator
        assert all(b >= a for a, b in zip(q, q[1:])), "Q must grow with Delta along this path"
        for e in estimators:
            c = curves[e]
            s = dict(zip(c.deltas, c.s))
            assert 1 < best[e] < 180, (e, best[e])
            assert s[best[e]] > s[1] and s[best[e]] > s[180]
            assert max(s[d] for d in range(-T, 0)) < min(s[0], s[best[e]])
        assert 15 <= best["chi2"] <= 30  # chi2: a clear peak near Delta = 20
        for e in estimators:
            i = curves[e].deltas.index(best[e])
            print(
                f"{e:12s} Delta* = {best[e]:3d}  Q = {curves[e].q[i]:.3f}  V = {curves[e].v[i]:.3f}  S = {curves[e].s[i]:.3f}"
            )
        """,
    ),
    (
        "md",
        r"""
        **Why an interior maximum?** Each prompt has two correct answers. Along the gradient path the one that is
        already ahead grows fastest, so the far future concentrates on it and gives the *other* correct answer less
        probability than π_t does. On rows where the far future writes the answer π_t prefers less, w = π_t / π_src
        is large: V keeps growing with Δ while Q saturates near 1. (With one correct answer per prompt, w ≤ 1 on
        every correct row and S only rises with Δ.) Below: one failed prompt's two correct answers along the path.
        """,
    ),
    (
        "code",
        r"""
        x = toy.failed_prompts(path[T], correct)[0]
        a1, a2 = torch.nonzero(correct[x]).flatten().tolist()
        probs = torch.stack([toy.policy_probs(th)[x] for th in path])  # (steps + 1, A)
        fig, ax = plt.subplots(figsize=(6, 3.2))
        ax.plot(probs[:, a1], label=f"correct answer {a1}")
        ax.plot(probs[:, a2], label=f"correct answer {a2}")
        ax.axvline(T, color="gray", ls="--", label=f"present t = {T}")
        ax.set_xlabel("step of the gradient path (t + Δ)")
        ax.set_ylabel("π(answer | prompt)")
        ax.set_title(f"toy prompt {x}: the future concentrates on one correct answer")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
        plt.show()
        """,
    ),
    (
        "md",
        r"""
        **An external teacher.** A strong teacher that writes a style the student does not favour: it always answers
        with the correct answer that π_t finds *least* likely (a deterministic policy). It solves every failed
        prompt (Q = 1). Is it a good source? That depends entirely on how V is measured: its w = π_t / π_src
        lies in [0, 1], so Var(w) ≤ 1/4 however far it is (`is_variance` calls it cheap), while
        E[(log w)²] grows with the distance (`log_ratio` calls it expensive). The same split shows in the
        simulation below and in docs/benchmarks.md §4. (Try a teacher that keeps a little probability on the other
        correct answer, logit 10 against 0: its rare rows there have huge w, and every V explodes.)
        """,
    ),
    (
        "code",
        r"""
        p_t = toy.policy_probs(path[T])
        theta_teacher = torch.full_like(theta0, float("-inf"))  # a deterministic teacher: one answer per prompt
        for xx in range(correct.shape[0]):
            ok = torch.nonzero(correct[xx]).flatten()
            theta_teacher[xx, ok[p_t[xx, ok].argmin()]] = 0.0  # the correct answer pi_t likes least
        teacher = {
            e: (toy.exact_q(path[T], theta_teacher, correct, K), toy.exact_v(path[T], theta_teacher, correct, K, estimator=e))
            for e in estimators
        }
        for e, (tq, tv) in teacher.items():
            print(f"teacher, {e:12s} Q = {tq:.3f}  V = {tv:.3f}  S = {tq / tv:.3f}   (best future S = {max(curves[e].s):.3f})")
        assert teacher["log_ratio"][0] > 0.999
        assert teacher["log_ratio"][0] / teacher["log_ratio"][1] < max(curves["log_ratio"].s)  # far: low S
        assert teacher["is_variance"][0] / teacher["is_variance"][1] > max(curves["is_variance"].s)  # Var(w) <= 1/4
        """,
    ),
    (
        "code",
        r"""
        fig, axes = plt.subplots(1, 3, figsize=(15, 4))
        axes[0].plot(deltas, q, color="k")
        axes[0].axhline(teacher["chi2"][0], color="k", ls=":", label="teacher")
        axes[0].set_title("Q: failed prompts the source solves (k = 8)")
        axes[0].set_ylabel("Q")
        for i, e in enumerate(estimators):
            c = curves[e]
            axes[1].plot(deltas, c.v, color=f"C{i}", label=e)
            axes[1].axhline(teacher[e][1], color=f"C{i}", ls=":")
            s_max = max(c.s)
            s_teacher = teacher[e][0] / teacher[e][1] / s_max
            label = f"{e}: Δ* = {best[e]}; teacher {s_teacher:.2g} x max"
            axes[2].plot(deltas, [s / s_max for s in c.s], color=f"C{i}", label=label)
            axes[2].axvline(best[e], color=f"C{i}", ls="--", lw=0.8)
        axes[1].set_yscale("log")
        axes[1].set_title("V (dotted: the teacher)")
        axes[1].set_ylabel("V (log scale)")
        axes[2].set_title("S = Q / V, divided by its maximum (dashed: Δ*)")
        axes[2].set_ylabel("S / max S")
        axes[2].set_ylim(0, 1.05)
        for ax in axes:
            ax.axvline(0, color="gray", lw=0.8)
            ax.set_xlabel("Δ  (< 0: past checkpoint = replay, > 0: near future)")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
        fig.suptitle(f"Exact Q, V, S on the analytic toy (present t = {T})")
        fig.tight_layout()
        plt.show()
        """,
    ),
    (
        "md",
        r"""
        ## Part B: measured on the arithmetic simulation

        The same quantities, now *estimated* from samples through the backend protocol (`npo_lab.experiments.qvs`), on the
        arithmetic task of notebook 1. `measure_along_run` trains plain GRPO and, at each step in `at`:

        1. finds the failed set F_t: the probe prompts that π_t solves in fewer than 60% of k = 8 tries;
        2. builds the sources: π_{t+Δ} for Δ > 0 (one look-ahead run, then an exact rollback), past checkpoints of
           the same run for Δ < 0, and the backend's external teacher;
        3. samples k rows per failed prompt from each source: Q̂ = fraction of F_t with a correct row, V̂ from the
           correct rows' `behavior_logprobs` (π_src) and π_t's log-probs of the same tokens (`q_hat`, `v_hat` in
           `npo_lab.core.signal`, the functions AutoNPO scores its candidates with).

        The teacher (docs/algorithm.md §5) is the same architecture trained from its own seed on full-size
        problems written in a scratchpad style (`alt`, `047+385=` → `223:234$`) that the student never saw: strong
        and far, like an external model. `model.teacher_steps` is cut here from 1500 to 600 to fit
        the time budget.
        """,
    ),
    (
        "code",
        r"""
        import random

        from npo_lab.envs.arithmetic_backend import ArithmeticBackend
        from npo_lab.envs.config import TinyLMConfig

        from npo_lab.config import GRPOConfig
        from npo_lab.experiments.qvs import measure_along_run
        from npo_lab.tasks.arithmetic import ArithmeticConfig
        from npo_lab.train import make_state

        SEED, TEACHER_STEPS = 0, 600
        seed_everything(SEED)
        backend = ArithmeticBackend(ArithmeticConfig(digits=3), TinyLMConfig(teacher_steps=TEACHER_STEPS), seed=SEED)
        teacher_ckpt = backend.teacher()
        grpo = GRPOConfig()
        state = make_state(backend, grpo, seed=SEED)
        probe = sorted(random.Random(SEED).sample(range(backend.num_prompts), 128))
        AT, DELTAS = [0, 100], [-40, -10, 1, 5, 10, 20, 40]
        records = measure_along_run(state, grpo, 100, AT, DELTAS, probe, k=8, teacher=teacher_ckpt)
        print(f"{'step':>4} {'source':>8} {'|F|':>4} {'Q':>6} {'V is_var':>9} {'S is_var':>9} {'V log_r':>8} {'S log_r':>8}")
        for r in records:
            print(
                f"{r['step']:4d} {r['source']:>8} {r['failed']:4d} {r['q']:6.3f} {r['v_is_variance']:9.3f}"
                f" {r['s_is_variance']:9.3f} {r['v_log_ratio']:8.3f} {r['s_log_ratio']:8.3f}"
            )
        """,
    ),
    (
        "md",
        r"""
        Checked claims (docs/benchmarks.md §4 found the same at every measured step, over 3 seeds): the teacher
        solves (nearly) every failed prompt, and by `log_ratio` it is the most expensive source by far. The ordering
        of the near-future Δs is *not* asserted: with 128 probe prompts and 8 samples their Q̂ differ by about their
        sampling noise, and V̂ is heavy-tailed (one unlikely token can dominate an `is_variance` estimate).
        """,
    ),
    (
        "code",
        r"""
        by = {(r["step"], r["source"]): r for r in records}
        for t in AT:
            others = [r for r in records if r["step"] == t and r["source"] != "teacher"]
            assert by[(t, "teacher")]["q"] >= 0.95
            assert by[(t, "teacher")]["v_log_ratio"] > 2 * max(r["v_log_ratio"] for r in others)

        fig, axes = plt.subplots(1, 3, figsize=(15, 4))
        for i, t in enumerate(AT):
            rows = sorted((r for r in records if r["step"] == t and r["delta"] is not None), key=lambda r: r["delta"])
            d = [r["delta"] for r in rows]
            tr = by[(t, "teacher")]
            axes[0].plot(d, [r["q"] for r in rows], "o-", color=f"C{i}", label=f"step {t}")
            axes[0].axhline(tr["q"], color=f"C{i}", ls=":")
            for key, style, teacher_ls in (("is_variance", "o-", ":"), ("log_ratio", "s--", "-.")):
                axes[1].plot(d, [r[f"v_{key}"] for r in rows], style, color=f"C{i}", label=f"step {t}, {key}")
                axes[1].axhline(tr[f"v_{key}"], color=f"C{i}", ls=teacher_ls, lw=0.8)
                axes[2].plot(d, [r[f"s_{key}"] for r in rows], style, color=f"C{i}", label=f"step {t}, {key}")
                axes[2].axhline(tr[f"s_{key}"], color=f"C{i}", ls=teacher_ls, lw=0.8)
        for ax in axes[1:]:
            ax.plot([], [], "k:", lw=0.8, label="teacher, is_variance")
            ax.plot([], [], "k-.", lw=0.8, label="teacher, log_ratio")
        axes[0].set_title("Q̂ (dotted: teacher; no past at step 0)")
        axes[0].set_ylabel("Q̂")
        axes[1].set_title("V̂ (thin lines: teacher)")
        axes[1].set_ylabel("V̂ (log scale)")
        axes[1].set_yscale("log")
        axes[2].set_title("Ŝ = Q̂ / V̂ (thin lines: teacher)")
        axes[2].set_ylabel("Ŝ")
        for ax in axes:
            ax.axvline(0, color="gray", lw=0.8)
            ax.set_xlabel("Δ  (< 0: past checkpoint = replay, > 0: near future)")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
        fig.suptitle(f"Measured Q̂, V̂, Ŝ along a GRPO run of the arithmetic task (seed {SEED}, 128 probe prompts, k = 8)")
        fig.tight_layout()
        plt.show()
        """,
    ),
    (
        "md",
        r"""
        **Reading the figures.** Exact (toy): Q rises with Δ; V by `is_variance` and `log_ratio` rises with the
        distance in both directions (`chi2` can fall below the on-policy floor 1 when the source is more confident than
        π_t on the tokens it writes); S has an interior maximum, but how sharp and where depends on the V estimator
        (`is_variance` is nearly flat between Δ ≈ 20 and 100, with local maxima at 23 and 102), and the deterministic
        teacher is the best or the worst source depending on it. Measured (simulation): the teacher's Q̂ is 1 and its
        `log_ratio` V̂ is an order of magnitude above every other source's; the near future's Q̂ rises with Δ only
        slowly (at step 0, 20 steps of GRPO barely move the policy), which is why, in this simulation, NPO works mostly
        as verified best-of-k injection (docs/benchmarks.md §2).

        **Scale up.** `npo-lab qvs --seeds 3` is the full measurement (4 steps, 9 Δs, 256 probe prompts, CIs over
        seeds, about 200 s); in Part A, try `toy.make_toy(n_correct=1)` (S then only rises with Δ) or another
        present `T`.
        """,
    ),
]
